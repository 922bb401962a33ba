"""The Python client (clients/client.py) against a real server on a loopback port.

The server's own answers are the reference: what the client returns for /animate must be what
the server sends, and a stream must keep the contract (frames 0..n-1, n = ceil(samples * 30 /
rate)) and match /animate within the parity bound the server's tests use.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import socket
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr
from websockets.asyncio.client import connect

from clients.client import (
    FrameBatch,
    PMMTalkClient,
    RetryPolicy,
    ServerError,
    ServerUnavailableError,
    StreamResult,
    UserInputError,
    expected_frame_count,
)
from server.protocol import AnimateResponse, Ready, Start, parse_server_message
from tests.server.conftest import SAMPLE_WAV, RunningServer, serve

T = TypeVar("T")

TEST_TIMEOUT_S: Final = 120.0
API_KEY: Final = "client-test-key"
QUICK_RETRY: Final = RetryPolicy(retries=2, backoff_s=0.01, max_backoff_s=0.02)
HELLO_SAMPLES: Final = 95_309  # samples/hello.wav at 16 kHz
HELLO_FRAMES: Final = 179  # ceil(95309 * 30 / 16000)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a client coroutine on a fresh event loop, failing (not hanging) past the timeout."""
    return asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT_S))


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serve() as running:
        yield running


@pytest.fixture(scope="module")
def guarded() -> Iterator[RunningServer]:
    """A server that wants a key and takes one stream at a time."""
    with serve(limits={"max_sessions": 1}, security={"api_keys": (API_KEY,)}) as running:
        yield running


@pytest.fixture(scope="module")
def direct(server: RunningServer) -> dict[str, Any]:
    """/animate of the sample straight from the server, as JSON."""
    response = httpx.post(
        f"{server.http}/animate",
        files={"audio": ("hello.wav", SAMPLE_WAV.read_bytes())},
        timeout=TEST_TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's first second ("hello"), for streams whose frames matter less than timing."""
    samples, rate = sf.read(SAMPLE_WAV, dtype="int16")
    path = tmp_path_factory.mktemp("audio") / "hello-1s.wav"
    sf.write(path, samples[:rate], rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def fast_stream(server: RunningServer) -> tuple[StreamResult, list[FrameBatch]]:
    """The sample streamed once, as fast as the server allows, in JSON."""
    batches: list[FrameBatch] = []

    async def go() -> StreamResult:
        async with PMMTalkClient(server.http) as client:
            return await client.stream_file(SAMPLE_WAV, realtime=False, on_batch=batches.append)

    return run(go()), batches


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- POST /animate ----------------------------------------------------------------------------


def test_animate_returns_what_the_server_sends(
    server: RunningServer, direct: dict[str, Any]
) -> None:
    async def go() -> AnimateResponse:
        async with PMMTalkClient(server.http) as client:
            return await client.animate(SAMPLE_WAV)

    clip = run(go())
    assert clip.frame_count == len(clip.frames) == HELLO_FRAMES
    ours = clip.model_dump()
    # compute_ms is measured per request; everything else must be the server's answer.
    assert ours.pop("compute_ms") > 0
    theirs = dict(direct)
    theirs.pop("compute_ms")
    assert ours == theirs


def test_animate_csv_is_the_servers_csv(server: RunningServer) -> None:
    async def go() -> str:
        async with PMMTalkClient(server.http) as client:
            return await client.animate(SAMPLE_WAV.read_bytes(), style=2, fmt="csv")

    direct_csv = httpx.post(
        f"{server.http}/animate",
        files={"audio": ("hello.wav", SAMPLE_WAV.read_bytes())},
        data={"format": "csv", "style": "2"},
        timeout=TEST_TIMEOUT_S,
    )
    assert direct_csv.status_code == 200
    text = run(go())
    assert text == direct_csv.text
    assert text.startswith("frame,time_s,jawForward,") and text.count("\r\n") == HELLO_FRAMES + 1


def test_a_4xx_is_raised_at_once_with_the_servers_code(server: RunningServer) -> None:
    retries: list[str] = []

    async def go() -> None:
        async with PMMTalkClient(server.http, on_retry=retries.append) as client:
            await client.animate(SAMPLE_WAV, style=10_000)

    with pytest.raises(ServerError) as caught:
        run(go())
    assert caught.value.status == 400 and caught.value.code == "bad_style"
    assert "style" in caught.value.server_message
    assert caught.value.exit_code == 2
    assert retries == []


# --- WS /stream -------------------------------------------------------------------------------


def test_fast_stream_keeps_the_contract_and_matches_animate(
    fast_stream: tuple[StreamResult, list[FrameBatch]], direct: dict[str, Any]
) -> None:
    result, batches = fast_stream
    assert result.frame_count == HELLO_FRAMES == expected_frame_count(HELLO_SAMPLES, 16_000)
    # Batches arrive in order, each starting where the previous one stopped.
    assert batches[0].start_index == 0
    for before, after in itertools.pairwise(batches):
        assert after.start_index == before.stop_index
    assert batches[-1].stop_index == HELLO_FRAMES
    offline = np.asarray(direct["frames"])
    diff = np.abs(result.frames - offline)
    # The server's parity bound for this sample at the default window (tests/server).
    assert diff.mean() <= 0.01 and diff.max() <= 0.05, (diff.mean(), diff.max())


def test_lag_is_measured_for_every_frame(
    fast_stream: tuple[StreamResult, list[FrameBatch]],
) -> None:
    result, _ = fast_stream
    assert result.lag_s.shape == (HELLO_FRAMES,)
    assert np.isfinite(result.lag_s).all()
    # A frame cannot arrive before the audio it needs has been sent.
    assert (result.lag_s >= 0).all()
    assert 0 <= result.lag_percentile_ms(50) <= result.lag_percentile_ms(95) < 60_000


def test_binary_stream_carries_the_same_frames(
    server: RunningServer, fast_stream: tuple[StreamResult, list[FrameBatch]]
) -> None:
    async def go() -> StreamResult:
        async with PMMTalkClient(server.http) as client:
            return await client.stream_file(SAMPLE_WAV, realtime=False, output="binary")

    binary = run(go())
    assert binary.frame_count == HELLO_FRAMES
    # JSON carries 6 decimals, binary the float32 values.
    np.testing.assert_allclose(binary.frames, fast_stream[0].frames, rtol=0, atol=2e-6)


def test_realtime_stream_takes_about_the_clips_duration(
    server: RunningServer, short_clip: Path
) -> None:
    ready: list[Ready] = []

    async def go() -> StreamResult:
        async with PMMTalkClient(server.http) as client:
            return await client.stream_file(short_clip, chunk_ms=50, on_ready=ready.append)

    began = time.monotonic()
    result = run(go())
    took_s = time.monotonic() - began
    assert result.frame_count == 30
    # The last chunk leaves at 0.95 s; the last frames follow after end, plus compute time.
    assert 0.95 <= took_s < 1.0 + 5.0, took_s
    assert ready and ready[0].hop_s > 0


def test_stereo_441khz_is_streamed_at_its_own_rate(server: RunningServer, tmp_path: Path) -> None:
    samples, rate = sf.read(SAMPLE_WAV, dtype="float32")
    up = soxr.resample(samples[:rate], rate, 44_100)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([up, 0.5 * up], axis=1), 44_100)

    async def go() -> StreamResult:
        async with PMMTalkClient(server.http) as client:
            return await client.stream_file(path, realtime=False)

    result = run(go())
    # The client checks done against ceil(n * 30 / 44100) itself; this is the count it checked.
    assert result.frame_count == math.ceil(len(up) * 30 / 44_100)
    assert result.frames.max() > 0.05  # speech moved the face


def test_busy_server_is_retried_until_the_session_frees(
    guarded: RunningServer, short_clip: Path
) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    retries: list[str] = []

    async def go() -> StreamResult:
        async with connect(guarded.ws, additional_headers=auth) as held:
            await held.send(Start().model_dump_json())
            assert isinstance(parse_server_message(str(await held.recv())), Ready)
            first_retry = asyncio.Event()

            def on_retry(line: str) -> None:
                retries.append(line)
                first_retry.set()

            async def release() -> None:
                await first_retry.wait()
                await held.close()

            releaser = asyncio.create_task(release())
            patient = RetryPolicy(retries=20, backoff_s=0.05, max_backoff_s=0.2)
            async with PMMTalkClient(
                guarded.http, api_key=API_KEY, retry=patient, on_retry=on_retry
            ) as client:
                result = await client.stream_file(short_clip, realtime=False)
            await releaser
            return result

    result = run(go())
    assert result.frame_count == 30
    assert retries and "busy" in retries[0]


def test_busy_server_gives_a_clear_error_after_the_retries(
    guarded: RunningServer, short_clip: Path
) -> None:
    retries: list[str] = []

    async def go() -> None:
        auth = {"X-API-Key": API_KEY}
        async with connect(guarded.ws, additional_headers=auth) as held:
            await held.send(Start().model_dump_json())
            assert isinstance(parse_server_message(str(await held.recv())), Ready)
            async with PMMTalkClient(
                guarded.http, api_key=API_KEY, retry=QUICK_RETRY, on_retry=retries.append
            ) as client:
                await client.stream_file(short_clip, realtime=False)

    with pytest.raises(ServerUnavailableError, match=r"busy.*gave up after 3 attempts"):
        run(go())
    assert len(retries) == 2


def test_a_wrong_key_is_not_retried(guarded: RunningServer, short_clip: Path) -> None:
    retries: list[str] = []

    async def stream() -> None:
        async with PMMTalkClient(guarded.http, api_key="wrong", on_retry=retries.append) as client:
            await client.stream_file(short_clip, realtime=False)

    async def animate() -> None:
        async with PMMTalkClient(guarded.http, on_retry=retries.append) as client:
            await client.animate(short_clip)

    with pytest.raises(ServerError) as on_stream:
        run(stream())
    assert on_stream.value.code == "unauthorized" and on_stream.value.status is None
    with pytest.raises(ServerError) as on_rest:
        run(animate())
    assert on_rest.value.code == "unauthorized" and on_rest.value.status == 401
    assert retries == []


def test_the_key_opens_the_guarded_server(guarded: RunningServer, short_clip: Path) -> None:
    async def go() -> tuple[AnimateResponse, StreamResult]:
        async with PMMTalkClient(guarded.http, api_key=API_KEY) as client:
            clip = await client.animate(short_clip)
            return clip, await client.stream_file(short_clip, realtime=False, output="binary")

    clip, streamed = run(go())
    assert clip.frame_count == streamed.frame_count == 30


def test_a_registered_face_drives_animate_and_stream(
    server: RunningServer, short_clip: Path
) -> None:
    photo = SAMPLE_WAV.parents[1] / "pmmtalk" / "assets" / "default_face.png"

    async def go() -> tuple[str, AnimateResponse, AnimateResponse, StreamResult]:
        async with PMMTalkClient(server.http) as client:
            face_id = await client.register_face(photo)
            by_photo = await client.animate(short_clip, face=photo)
            by_id = await client.animate(short_clip, face_id=face_id)
            streamed = await client.stream_file(short_clip, realtime=False, face_id=face_id)
            return face_id, by_photo, by_id, streamed

    face_id, by_photo, by_id, streamed = run(go())
    assert len(face_id) == 16
    assert by_photo.frames == by_id.frames
    assert streamed.frame_count == 30


# --- errors without a server ------------------------------------------------------------------


def test_no_server_fails_clearly_after_the_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    retries: list[str] = []

    async def animate() -> None:
        async with PMMTalkClient(url, retry=QUICK_RETRY, on_retry=retries.append) as client:
            await client.animate(SAMPLE_WAV)

    async def stream() -> None:
        async with PMMTalkClient(url, retry=QUICK_RETRY, on_retry=retries.append) as client:
            await client.stream_file(SAMPLE_WAV)

    for attempt in (animate, stream):
        retries.clear()
        began = time.monotonic()
        with pytest.raises(ServerUnavailableError) as caught:
            run(attempt())
        assert time.monotonic() - began < 10
        assert "cannot connect" in str(caught.value) and url in str(caught.value)
        assert "gave up after 3 attempts" in str(caught.value)
        assert caught.value.exit_code == 1
        assert len(retries) == 2


def test_unreadable_audio_fails_before_connecting(tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 10)
    url = f"http://127.0.0.1:{free_port()}"  # never reached: the file fails first

    async def go(path: Path) -> None:
        async with PMMTalkClient(url, retry=QUICK_RETRY) as client:
            await client.stream_file(path)

    with pytest.raises(UserInputError, match=r"cannot read .* as audio"):
        run(go(text))
    with pytest.raises(UserInputError, match="does not exist"):
        run(go(tmp_path / "missing.wav"))


def test_start_fields_reach_the_start_message_and_are_checked(short_clip: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    async def go(fields: dict[str, Any]) -> None:
        async with PMMTalkClient(url, retry=RetryPolicy(retries=0)) as client:
            await client.stream_file(short_clip, start_fields=fields)

    with pytest.raises(UserInputError, match="no_such_field"):
        run(go({"no_such_field": 1}))
    with pytest.raises(UserInputError, match="style"):
        run(go({"style": -1}))
    # A valid field gets as far as the connection.
    with pytest.raises(ServerUnavailableError):
        run(go({"style": 1}))


def test_bad_server_urls_are_refused() -> None:
    for url in ("ftp://example.org", "127.0.0.1:8000", "http://"):
        with pytest.raises(UserInputError, match="server URL"):
            PMMTalkClient(url)
