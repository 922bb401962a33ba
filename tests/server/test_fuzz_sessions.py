"""Generated WebSocket sessions: hypothesis writes message sequences, a real server answers.

Each example is one connection: a first message (a valid start with a generated rate, channel
count, encoding and output, or something that is not a valid start), then a sequence of audio
chunks of any size (split anywhere, even inside a sample), ``end`` and ``interrupt``, and then
one way of leaving: ``end`` and close, a polite close or a dropped TCP connection mid-utterance,
or a terminal fault (garbage text, a second start, a NaN sample). A session holds at most one
``interrupt`` (see `test_two_interrupts_get_two_answers` for why).

The client sends everything at once and then reads, so the answers follow from the messages
alone, except that an ``end`` followed later by an ``interrupt`` may or may not get its ``done``
(the interrupt may land first). The model (`expected_answers`) allows exactly that. Checked for
every example:
- every message parses as a server message; frames come in order, with no gap or repeat,
  32 finite values in [0, 1] each (binary ones decode as PMF1);
- each ``done`` counts ``ceil(n * 30 / rate)`` for the utterance's ``n`` whole sample frames,
  and every frame it counts arrived; each ``interrupted`` counts what arrived and ends on the
  neutral face;
- a fault ends the session with an ``error`` of the right code, with a message, and the close
  code that goes with it; answers before it are a prefix of the expected ones;
- no ``internal`` error, no hang (every wait is bounded), and no leak: the session, its tasks
  and its queued windows are gone after each example, and the outcome counter names it.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed

from models.blendshapes import FPS, SAMPLE_RATE_HZ
from server.protocol import (
    BYTES_PER_SAMPLE,
    ERROR_CLOSE_CODES,
    NUM_BLENDSHAPES,
    Done,
    Encoding,
    End,
    Error,
    ErrorCode,
    Frames,
    Interrupt,
    Interrupted,
    Ready,
    decode_binary_frames,
    parse_server_message,
)
from tests.server.conftest import RunningServer
from tests.server.test_faults import assert_no_leak, metric, state_of, wait_until

TIMEOUT_S: Final = 60.0
CI_EXAMPLES: Final = 60
"""Sessions in the default run (about 6 s on two quiet cores)."""
LONG_EXAMPLES: Final = 500
"""Sessions in the ``fuzz_long`` run."""
MAX_OPS: Final = 8
MAX_CHUNK_S: Final = 0.35
"""One audio message holds at most this much audio; with `MAX_OPS`, a session sends under 3 s
(below the default 4 s buffer limit, so the server reads everything the client sends at once)."""
RATES: Final = (8_000, 16_000, 44_100, 48_000)
ENCODINGS: Final[tuple[Encoding, ...]] = ("pcm_s16le", "pcm_f32le")
END: Final = End().model_dump_json()
INTERRUPT: Final = Interrupt().model_dump_json()


@dataclass(frozen=True)
class Plan:
    """One generated session."""

    first: tuple[str, str | bytes]  # ("start", its JSON) or (a bad kind, the message)
    rate: int
    channels: int
    encoding: Encoding
    binary: bool
    ops: tuple[tuple[str, int], ...]  # ("audio", bytes), ("end", 0), ("interrupt", 0)
    leave: str  # "end", "close", "abort", "garbage", "second-start", "nan"

    @property
    def frame_bytes(self) -> int:
        return BYTES_PER_SAMPLE[self.encoding] * self.channels


BAD_FIRST: Final[dict[str, tuple[str | bytes, ErrorCode]]] = {
    "audio-first": (b"\x00\x00" * 160, "out_of_order"),
    "end-first": (END, "out_of_order"),
    "interrupt-first": (INTERRUPT, "out_of_order"),
    "not-json": ('{"type": "start", ', "bad_message"),
    "bad-rate": (json.dumps({"type": "start", "sample_rate": 7_999}), "bad_message"),
    "unknown-field": (json.dumps({"type": "start", "volume": 11}), "bad_message"),
}
LEAVE_ERRORS: Final[dict[str, ErrorCode]] = {
    "garbage": "bad_message",
    "second-start": "out_of_order",
    "nan": "bad_audio",
}


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    rate = draw(st.sampled_from(RATES))
    channels = draw(st.integers(1, 2))
    encoding = draw(st.sampled_from(ENCODINGS))
    binary = draw(st.booleans())
    bad = draw(st.sampled_from([None, None, None, *BAD_FIRST]))  # mostly a valid start
    if bad is not None:
        first: tuple[str, str | bytes] = (bad, BAD_FIRST[bad][0])
    else:
        start = {
            "type": "start",
            "sample_rate": rate,
            "channels": channels,
            "encoding": encoding,
            "output": "binary" if binary else "json",
        }
        first = ("start", json.dumps(start))
    frame_bytes = BYTES_PER_SAMPLE[encoding] * channels
    max_bytes = round(MAX_CHUNK_S * rate) * frame_bytes
    op = st.one_of(
        st.tuples(st.just("audio"), st.integers(0, max_bytes)),
        st.tuples(st.sampled_from(["end", "interrupt"]), st.just(0)),
    )
    ops: list[tuple[str, int]] = []
    for kind, size in draw(st.lists(op, max_size=MAX_OPS)):
        # One interrupt per session: a second one can swallow the first one's answer, a known
        # bug that test_two_interrupts_get_two_answers pins on its own.
        if kind != "interrupt" or all(k != "interrupt" for k, _ in ops):
            ops.append((kind, size))
    leaves = ["end", "end", "close", "abort", "garbage", "second-start"]
    if encoding == "pcm_f32le":
        leaves.append("nan")
    return Plan(first, rate, channels, encoding, binary, tuple(ops), draw(st.sampled_from(leaves)))


class AudioSource:
    """The sample speech in any rate, channel count and encoding, handed out in byte runs."""

    def __init__(self, speech16: np.ndarray, plan: Plan) -> None:
        mono = speech16.astype(np.float32) / 32768.0
        if plan.rate != SAMPLE_RATE_HZ:
            mono = soxr.resample(mono, SAMPLE_RATE_HZ, plan.rate).astype(np.float32)
        frames = np.repeat(mono[:, None], plan.channels, axis=1)
        if plan.encoding == "pcm_s16le":
            pcm = np.clip(np.round(frames * 32767), -32768, 32767).astype("<i2")
        else:
            pcm = frames.astype("<f4")
        self.data = pcm.tobytes()
        self.at = 0
        self.pending = 0  # bytes sent since the last end or interrupt

    def take(self, size: int) -> bytes:
        chunk = self.data[self.at : self.at + size]
        assert len(chunk) == size, "the speech sample is long enough for any plan"
        self.at += size
        self.pending += size
        return chunk

    def cut(self, frame_bytes: int) -> None:
        """End of an utterance: the server drops a split sample frame, so skip its rest too, and
        the next utterance starts on a whole sample (else its floats would be misread)."""
        self.at += -self.pending % frame_bytes
        self.pending = 0


@dataclass
class Answer:
    kind: Literal["done", "interrupted"]
    frame_count: int | None  # for done: ceil(n * 30 / rate)
    optional: bool  # a done that a later interrupt may have overtaken


def expected_answers(plan: Plan) -> list[Answer]:
    """The answers the ops call for, in order (the leave's own end included)."""
    ops = list(plan.ops) + ([("end", 0)] if plan.leave == "end" else [])
    answers: list[Answer] = []
    pending = 0  # bytes of the utterance so far
    for index, (kind, size) in enumerate(ops):
        if kind == "audio":
            pending += size
            continue
        if kind == "end":
            frames = math.ceil(pending // plan.frame_bytes * FPS / plan.rate)
            overtaken = any(k == "interrupt" for k, _ in ops[index + 1 :])
            answers.append(Answer("done", frames, overtaken))
        else:
            answers.append(Answer("interrupted", None, False))
        pending = 0
    return answers


@dataclass
class Transcript:
    """Everything the server sent on one connection, and how it closed."""

    messages: list[Any] = field(default_factory=list)
    close_code: int | None = None


async def play(url: str, plan: Plan, audio: AudioSource) -> Transcript:
    transcript = Transcript()
    async with connect_async(url, open_timeout=TIMEOUT_S, max_size=None) as ws:
        kind, first = plan.first
        await ws.send(first)
        if kind == "start":
            ready = parse_server_message(str(await asyncio.wait_for(ws.recv(), TIMEOUT_S)))
            assert isinstance(ready, Ready), ready
            transcript.messages.append(ready)
            for op, size in plan.ops:
                if op == "audio":
                    await ws.send(audio.take(size))
                else:
                    audio.cut(plan.frame_bytes)
                    await ws.send(END if op == "end" else INTERRUPT)
            if plan.leave == "end":
                await ws.send(END)
            elif plan.leave == "garbage":
                await ws.send("\x00 not a message")
            elif plan.leave == "second-start":
                await ws.send(first)
            elif plan.leave == "nan":
                # Complete any sample split by the last chunk first, so the NaNs stay aligned.
                pad = -audio.pending % plan.frame_bytes
                nan = np.full(plan.channels * 4, np.nan, dtype="<f4").tobytes()
                await ws.send(bytes(pad) + nan)
            elif plan.leave == "abort":
                ws.transport.abort()
                return transcript
            elif plan.leave == "close":
                await ws.close()
                return transcript
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), TIMEOUT_S)
            except ConnectionClosed as closed:
                transcript.close_code = closed.rcvd.code if closed.rcvd is not None else None
                return transcript
            transcript.messages.append(raw if isinstance(raw, bytes) else parse_server_message(raw))
            if plan.leave == "end" and kind == "start" and _answered_last(transcript, plan):
                return transcript


def _answered_last(transcript: Transcript, plan: Plan) -> bool:
    """The final end's done has arrived (nothing else can follow it).

    With at most one interrupt, the answers end with that interrupt's ``interrupted`` and then
    one ``done`` per later end, the final one included; ends before it may or may not get theirs.
    """
    kinds = [k for k, _ in plan.ops]
    cut = kinds.index("interrupt") + 1 if "interrupt" in kinds else 0
    dones_due = kinds[cut:].count("end") + 1
    answers = [m for m in transcript.messages if isinstance(m, Done | Interrupted)]
    if "interrupt" in kinds:
        if not any(isinstance(m, Interrupted) for m in answers):
            return False
        last = max(i for i, m in enumerate(answers) if isinstance(m, Interrupted))
        answers = answers[last + 1 :]
    return len(answers) == dones_due


def check_transcript(plan: Plan, transcript: Transcript) -> str:
    """Assert the transcript fits the plan; return the outcome the server should count."""
    kind, _ = plan.first
    messages = transcript.messages
    for message in messages:
        assert not (isinstance(message, Error) and message.code == "internal"), message
    if kind != "start":
        code = BAD_FIRST[kind][1]
        assert_error_close(messages, transcript.close_code, code)
        assert len(messages) == 1, messages  # refused before ready
        return code
    expected = expected_answers(plan)
    at = 0  # the next expected answer
    got = 0  # frames received in the current utterance
    last = np.zeros(NUM_BLENDSHAPES)
    for message in messages[1:]:
        if isinstance(message, bytes | Frames):
            start, frames = (
                decode_binary_frames(message)
                if isinstance(message, bytes)
                else (message.start_index, np.asarray(message.frames, dtype=np.float64))
            )
            assert isinstance(message, bytes) == plan.binary
            assert start == got, f"frames start at {start}, expected {got}"
            assert frames.shape[1:] == (NUM_BLENDSHAPES,) and len(frames) > 0
            assert np.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1
            got += len(frames)
            last = frames[-1]
        elif isinstance(message, Done | Interrupted):
            want = "done" if isinstance(message, Done) else "interrupted"
            while at < len(expected) and expected[at].kind != want and expected[at].optional:
                at += 1
            assert at < len(expected) and expected[at].kind == want, (message, expected[at:])
            if isinstance(message, Done):
                assert message.frame_count == expected[at].frame_count == got, (message, got)
            else:
                assert message.frame_count == got, (message, got)
                assert got == 0 or np.abs(last).max() < 1e-6, "an interrupt ends on neutral"
            at += 1
            got = 0
        else:
            assert isinstance(message, Error), message
    if plan.leave in LEAVE_ERRORS:
        code = LEAVE_ERRORS[plan.leave]
        assert_error_close(messages, transcript.close_code, code)
        return code
    if plan.leave == "end":
        assert all(a.optional for a in expected[at:]), f"unanswered: {expected[at:]}"
        return "completed"
    return "left"  # close or abort: completed or disconnected, depending on timing


def assert_error_close(messages: list[Any], close_code: int | None, code: ErrorCode) -> None:
    errors = [m for m in messages if isinstance(m, Error)]
    assert len(errors) == 1 and messages[-1] is errors[0], messages[-3:]
    assert errors[0].code == code and errors[0].message, errors[0]
    assert close_code == ERROR_CLOSE_CODES[code], (close_code, code)


def outcomes(running: RunningServer) -> dict[str, float]:
    return {
        outcome: metric(running, "pmmtalk_streams_total", outcome=outcome)
        for outcome in ("completed", "disconnected", *ERROR_CLOSE_CODES)
    }


def run_session_fuzz(running: RunningServer, speech16: np.ndarray, examples: int) -> None:
    state = state_of(running)

    @given(plan=plans())
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        # Each example is a real session: report the failing one as found, without shrinking.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    def example(plan: Plan) -> None:
        note(repr(plan))
        wait_until(lambda: not state.sessions, "the previous session to end")
        before = outcomes(running)
        transcript = asyncio.run(
            asyncio.wait_for(play(running.ws, plan, AudioSource(speech16, plan)), 3 * TIMEOUT_S)
        )
        outcome = check_transcript(plan, transcript)
        assert_no_leak(running)
        changed = {k: v - before[k] for k, v in outcomes(running).items() if v != before[k]}
        if outcome == "left":
            assert changed in ({"completed": 1}, {"disconnected": 1}), changed
        else:
            assert changed == {outcome: 1}, (outcome, changed)

    example()


@pytest.fixture(scope="module")
def speech16(speech: tuple[np.ndarray, int]) -> np.ndarray:
    samples, rate = speech
    assert rate == SAMPLE_RATE_HZ
    return samples


def test_generated_sessions_keep_the_protocol(server: RunningServer, speech16: np.ndarray) -> None:
    run_session_fuzz(server, speech16, CI_EXAMPLES)
    assert metric(server, "pmmtalk_errors_total", code="internal") == 0


@pytest.mark.fuzz_long
def test_many_generated_sessions_keep_the_protocol(
    server: RunningServer, speech16: np.ndarray
) -> None:
    run_session_fuzz(server, speech16, LONG_EXAMPLES)
    assert metric(server, "pmmtalk_errors_total", code="internal") == 0


# --- loud float samples ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", [1e20, 3e38])
def test_loud_float_samples_give_frames_in_range(server: RunningServer, level: float) -> None:
    async def stream() -> list[dict[str, Any]]:
        async with connect_async(server.ws, open_timeout=TIMEOUT_S) as ws:
            await ws.send(json.dumps({"type": "start", "encoding": "pcm_f32le"}))
            assert isinstance(parse_server_message(str(await ws.recv())), Ready)
            signs = np.sign(np.sin(np.arange(SAMPLE_RATE_HZ // 2) * 0.05))
            await ws.send((signs * level).astype("<f4").tobytes())
            await ws.send(END)
            # Raw JSON: the frames under test may not parse as `Frames` at all.
            messages: list[dict[str, Any]] = []
            while not messages or messages[-1]["type"] not in ("done", "error"):
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S)))
            return messages

    messages = asyncio.run(stream())
    if messages[-1]["type"] == "error":
        assert messages[-1]["code"] == "bad_audio"  # refusing them is a fix too
        return
    frames = [row for m in messages if m["type"] == "frames" for row in m["frames"]]
    assert frames and all(v is not None and 0 <= v <= 1 for row in frames for v in row), (
        f"frames hold {sum(v is None for row in frames for v in row)} nulls"
    )


def test_loud_float_wav_gives_frames_in_range(server: RunningServer) -> None:
    signs = np.sign(np.sin(np.arange(SAMPLE_RATE_HZ // 2) * 0.05)).astype(np.float32)
    wav = io.BytesIO()
    sf.write(wav, signs * np.float32(1e20), SAMPLE_RATE_HZ, format="WAV", subtype="FLOAT")
    response = httpx.post(
        f"{server.http}/animate", files={"audio": ("loud.wav", wav.getvalue())}, timeout=TIMEOUT_S
    )
    if response.status_code == 400:
        assert response.json()["error"]["code"] == "bad_audio"  # refusing it is a fix too
        return
    frames = response.json()["frames"]
    assert all(v is not None and 0 <= v <= 1 for row in frames for v in row), (
        f"frames hold {sum(v is None for row in frames for v in row)} nulls"
    )


def test_two_interrupts_get_two_answers(server: RunningServer, speech16: np.ndarray) -> None:
    async def session() -> list[Any]:
        async with connect_async(server.ws, open_timeout=TIMEOUT_S) as ws:
            await ws.send(json.dumps({"type": "start"}))
            assert isinstance(parse_server_message(str(await ws.recv())), Ready)
            # One burst: the worker is still computing the audio's windows when both arrive.
            await ws.send(speech16[:SAMPLE_RATE_HZ].tobytes())
            await ws.send(INTERRUPT)
            await ws.send(INTERRUPT)
            await ws.send(END)
            answers: list[Any] = []
            while not answers or not isinstance(answers[-1], Done):
                message = parse_server_message(str(await asyncio.wait_for(ws.recv(), TIMEOUT_S)))
                if isinstance(message, Done | Interrupted | Error):
                    answers.append(message)
            return answers

    answers = asyncio.run(session())
    kinds = [type(answer).__name__ for answer in answers]
    assert kinds == ["Interrupted", "Interrupted", "Done"], kinds
