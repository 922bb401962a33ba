"""Overload: clients beyond the session limit are refused before any work, and the admitted
sessions keep their latency.

A server with `ADMITTED` session slots runs `ADMITTED` real-time streams (`RealTimeProbe`, from
test_faults.py) twice: once alone, and once while knockers keep trying to open more sessions,
each with a start message that carries an inline face photo (work the server would do, and
remember in its face cache, if it admitted them). The checks:
- every knock is refused with ``busy`` and close code 1013, at once and with no ``ready``;
- the refused start messages cost nothing: the face cache stays empty;
- the admitted streams keep real time in both rounds, with every frame;
- the refusals are counted (``pmmtalk_streams_total{outcome="rejected"}``, ``errors{busy}``).
The lags of both rounds and the refusal times are printed (run with ``-s``); docs/robustness.md
has the figures of a run, and of the longer ``soak`` variant.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.resources
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pytest
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed

from server.protocol import ERROR_CLOSE_CODES, Error, Ready
from tests.server.conftest import RunningServer, serve
from tests.server.test_faults import (
    TIMEOUT_S,
    ProbeResult,
    RealTimeProbe,
    assert_no_leak,
    metric,
    read_until_closed,
    run,
    state_of,
)

ADMITTED: Final = 4
AUDIO_S: Final = 3.0
KNOCKERS: Final = 2
KNOCK_PAUSE_S: Final = 0.05
"""Each knocker waits this long between tries: a retry loop, not a flood from this process
(which shares its cores and its interpreter with the server under test)."""
MIN_KNOCKS: Final = 20
REFUSAL_BOUND_S: Final = 1.0
"""A refusal comes at once: the slowest may take this long on a busy machine."""


def face_start_message() -> str:
    """A start message with the bundled face photo inline (78 kB of PNG, base64)."""
    photo = importlib.resources.files("pmmtalk").joinpath("assets/default_face.png").read_bytes()
    return json.dumps({"type": "start", "face": base64.b64encode(photo).decode()})


@dataclass
class Knocks:
    """Every refused try: how long from connect to close, and what came back."""

    seconds: list[float] = field(default_factory=list)
    answers: list[tuple[list[Any], int | None]] = field(default_factory=list)


async def knock_until(stop: asyncio.Event, url: str, start: str, knocks: Knocks) -> None:
    while not stop.is_set():
        began = time.monotonic()
        async with connect_async(url, open_timeout=TIMEOUT_S, max_size=None) as ws:
            with contextlib.suppress(ConnectionClosed):  # refused before the start went out
                await ws.send(start)
            answer = await read_until_closed(ws)
        knocks.seconds.append(time.monotonic() - began)
        knocks.answers.append(answer)
        await asyncio.sleep(KNOCK_PAUSE_S)


async def streams_under_knocking(
    running: RunningServer, speech: np.ndarray, audio_s: float, admitted: int, knockers: int
) -> tuple[list[ProbeResult], Knocks]:
    """``admitted`` real-time streams, with ``knockers`` knocking while all of them are open.

    The knocking stops before any admitted stream sends ``end``: a stream that finished early
    would free its slot, and a knock admitted then would be right, not a failure.
    """
    release = asyncio.Event()
    probes = [RealTimeProbe(running, speech, audio_s, hold_end=release) for _ in range(admitted)]
    streaming = [asyncio.create_task(probe.run()) for probe in probes]
    await asyncio.gather(*(probe.ready.wait() for probe in probes))
    stop = asyncio.Event()
    knocks = Knocks()
    start = face_start_message()
    knocking = [
        asyncio.create_task(knock_until(stop, running.ws, start, knocks)) for _ in range(knockers)
    ]
    all_sent = asyncio.gather(*(probe.audio_sent.wait() for probe in probes))
    # A probe that fails ends its task before its audio is out; stop waiting then too.
    await asyncio.wait([all_sent, *streaming], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    await asyncio.gather(*knocking)
    release.set()
    results = await asyncio.gather(*streaming)
    all_sent.cancel()
    return results, knocks


def lag_summary(results: list[ProbeResult]) -> str:
    lags = np.concatenate([r.lags_s for r in results])
    return (
        f"p50 {np.percentile(lags, 50):.3f} s, p95 {np.percentile(lags, 95):.3f} s, "
        f"max {lags.max():.3f} s over {lags.size} frame messages"
    )


def overload_round(
    running: RunningServer, speech: np.ndarray, audio_s: float, admitted: int, knockers: int
) -> tuple[list[ProbeResult], Knocks]:
    assert_no_leak(running)
    state = state_of(running)
    faces_before = len(state.faces)
    rejected_before = metric(running, "pmmtalk_streams_total", outcome="rejected")
    busy_before = metric(running, "pmmtalk_errors_total", code="busy")
    results, knocks = run(streams_under_knocking(running, speech, audio_s, admitted, knockers))
    for i, result in enumerate(results):
        result.assert_real_time(f"admitted stream {i} ({knockers} knockers)")
    for messages, close_code in knocks.answers:
        assert not any(isinstance(m, Ready) for m in messages), "a knock was admitted"
        assert len(messages) == 1 and isinstance(messages[0], Error), messages
        assert messages[0].code == "busy" and str(admitted) in messages[0].message
        assert close_code == ERROR_CLOSE_CODES["busy"] == 1013
    assert len(state.faces) == faces_before, "a refused start's face was decoded"
    refused = len(knocks.answers)
    assert metric(running, "pmmtalk_streams_total", outcome="rejected") - rejected_before == refused
    assert metric(running, "pmmtalk_errors_total", code="busy") - busy_before == refused
    assert_no_leak(running)
    return results, knocks


@pytest.fixture(scope="module")
def limited() -> Iterator[RunningServer]:
    with serve(limits={"max_sessions": ADMITTED}) as running:
        yield running


@pytest.fixture(scope="module")
def speech16(speech: tuple[np.ndarray, int]) -> np.ndarray:
    samples, _ = speech
    return samples


def test_knocks_beyond_the_limit_are_refused_and_admitted_streams_keep_real_time(
    limited: RunningServer, speech16: np.ndarray
) -> None:
    quiet, none = overload_round(limited, speech16, AUDIO_S, ADMITTED, knockers=0)
    assert not none.answers
    knocked, knocks = overload_round(limited, speech16, AUDIO_S, ADMITTED, KNOCKERS)
    assert len(knocks.answers) >= MIN_KNOCKS, f"only {len(knocks.answers)} knocks in {AUDIO_S} s"
    slowest = max(knocks.seconds)
    assert slowest <= REFUSAL_BOUND_S, f"a refusal took {slowest:.2f} s"
    print(
        f"\n{ADMITTED} admitted streams alone: {lag_summary(quiet)}"
        f"\nwith {KNOCKERS} knockers ({len(knocks.answers)} refusals, "
        f"{len(knocks.answers) / AUDIO_S:.0f}/s): {lag_summary(knocked)}"
        f"\nrefusal time: p50 {np.percentile(knocks.seconds, 50) * 1000:.1f} ms, "
        f"p95 {np.percentile(knocks.seconds, 95) * 1000:.1f} ms, max {slowest * 1000:.1f} ms"
    )


SOAK_ADMITTED: Final = ADMITTED
"""The test servers run the torch backend, which keeps about four streams in real time on two
cores (the ONNX backend of `pmmtalk serve` keeps more; see docs/benchmarks)."""
SOAK_AUDIO_S: Final = 60.0
SOAK_KNOCKERS: Final = 4


@pytest.mark.soak
def test_soak_knocking_on_a_full_server(speech16: np.ndarray) -> None:
    """The same for longer: four admitted streams of 60 s, and twice the knockers."""
    speech = np.tile(speech16, int(np.ceil(SOAK_AUDIO_S * 16_000 / speech16.size)))
    with serve(limits={"max_sessions": SOAK_ADMITTED}) as running:
        quiet, _ = overload_round(running, speech, SOAK_AUDIO_S, SOAK_ADMITTED, knockers=0)
        knocked, knocks = overload_round(
            running, speech, SOAK_AUDIO_S, SOAK_ADMITTED, SOAK_KNOCKERS
        )
    print(
        f"\n{SOAK_ADMITTED} admitted streams of {SOAK_AUDIO_S:.0f} s alone: {lag_summary(quiet)}"
        f"\nwith {SOAK_KNOCKERS} knockers ({len(knocks.answers)} refusals): {lag_summary(knocked)}"
        f"\nrefusal time: p50 {np.percentile(knocks.seconds, 50) * 1000:.1f} ms, "
        f"p95 {np.percentile(knocks.seconds, 95) * 1000:.1f} ms, "
        f"max {max(knocks.seconds) * 1000:.1f} ms"
    )
