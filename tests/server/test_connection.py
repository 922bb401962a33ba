"""WS /stream on a real server: the streaming contract that server/connection.py keeps.

Every test talks to a real uvicorn through real WebSocket clients (`StreamClient`), which send
audio in chunks of any size, optionally paced against the wall clock, and record every message
the server answers. Most tests compare a stream's frames with another stream of the same audio:
the stream is deterministic per audio, so chunking, encoding, output format, other sessions in
the same batch or an earlier utterance on the same connection must not change a frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import re
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.protocol import (
    BYTES_PER_SAMPLE,
    NUM_BLENDSHAPES,
    Done,
    Error,
    Frames,
    Interrupted,
    Ready,
    Start,
    decode_binary_frames,
    parse_server_message,
)
from tests.server.conftest import RunningServer

T = TypeVar("T")

FPS: Final = 30
RATE_HZ: Final = 16_000
JAW_OPEN: Final = 3  # index of jawOpen in the 32 names
TEST_TIMEOUT_S: Final = 60.0  # one whole test; a hang fails instead of blocking the suite
CHUNK_100MS_BYTES: Final = RATE_HZ // 10 * 2  # 100 ms of 16 kHz mono s16
SAME_STREAM_ATOL: Final = 1e-5  # the same audio through another chunking or encoding
OTHER_SESSIONS_ATOL: Final = 1e-4  # the same audio batched with other sessions' windows


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a client coroutine on a fresh event loop, failing (not hanging) past the timeout."""
    return asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT_S))


# --- the client -------------------------------------------------------------------------------


@dataclass
class Utterance:
    """What the server sent for one utterance: frame blocks in arrival order and its answer."""

    blocks: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (start_index, (n, 32))
    answer: Done | Interrupted | None = None

    @property
    def count(self) -> int:
        return sum(len(block) for _, block in self.blocks)

    def frames(self) -> np.ndarray:
        """(n, 32): every frame in index order; fails on a gap, duplicate or reordering."""
        expected = 0
        for start, block in self.blocks:
            assert start == expected, f"frames block starts at {start}, expected {expected}"
            expected += len(block)
        if not self.blocks:
            return np.zeros((0, NUM_BLENDSHAPES), dtype=np.float64)
        return np.concatenate([block for _, block in self.blocks]).astype(np.float64)


class StreamClient:
    """One WebSocket session; a receiver task records every server message as it arrives."""

    def __init__(self, ws: ClientConnection, start: Start) -> None:
        self.ws = ws
        self.start = start
        self.ready: Ready | None = None
        self.utterances: list[Utterance] = []  # finished by done or interrupted
        self.current = Utterance()
        self.error: Error | None = None
        self.closed = False
        self._answers: asyncio.Queue[Done | Interrupted | Error | None] = asyncio.Queue()
        self._progress = asyncio.Condition()
        self._receiver: asyncio.Task[None] | None = None

    async def open(self) -> Ready:
        await self.ws.send(self.start.model_dump_json(exclude_none=True))
        message = parse_server_message(str(await self.ws.recv()))
        assert isinstance(message, Ready), f"expected ready, got {message}"
        self.ready = message
        self._receiver = asyncio.create_task(self._receive())
        return message

    async def close(self) -> None:
        await self.ws.close()
        if self._receiver is not None:
            await self._receiver

    async def _receive(self) -> None:
        try:
            async for raw in self.ws:
                await self._record(raw)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self._answers.put_nowait(None)
            async with self._progress:
                self._progress.notify_all()

    async def _record(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            start, block = decode_binary_frames(raw)
            self.current.blocks.append((start, block))
        else:
            message = parse_server_message(raw)
            if isinstance(message, Frames):
                block = np.asarray(message.frames, dtype=np.float64).reshape(-1, NUM_BLENDSHAPES)
                self.current.blocks.append((message.start_index, block))
            elif isinstance(message, Done | Interrupted):
                self.current.answer = message
                self.utterances.append(self.current)
                self.current = Utterance()
                self._answers.put_nowait(message)
            elif isinstance(message, Error):
                self.error = message
                self._answers.put_nowait(message)
            else:
                raise AssertionError(f"unexpected message mid-stream: {message}")
        async with self._progress:
            self._progress.notify_all()

    async def send_audio(self, payload: bytes, chunk_bytes: int, pace: float | None = None) -> None:
        """Send ``payload`` in ``chunk_bytes`` pieces; ``pace`` x real time if given.

        Pacing holds each chunk until its audio would have been spoken (sleeping here is the
        point: it stands in for a microphone, not for synchronisation).
        """
        bytes_per_s = (
            self.start.sample_rate * self.start.channels * BYTES_PER_SAMPLE[self.start.encoding]
        )
        began = time.monotonic()
        for offset in range(0, len(payload), chunk_bytes):
            if pace is not None:
                due = began + offset / bytes_per_s / pace
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self.ws.send(payload[offset : offset + chunk_bytes])

    async def end(self) -> Utterance:
        """Send end; the finished utterance once its done arrives."""
        await self.ws.send(json.dumps({"type": "end"}))
        answer = await self._answer()
        assert isinstance(answer, Done), f"expected done after end, got {answer}"
        return self.utterances[-1]

    async def interrupt(self) -> Utterance:
        """Send interrupt; the cut utterance (its ease to neutral included) once answered."""
        await self.ws.send(json.dumps({"type": "interrupt"}))
        answer = await self._answer()
        assert isinstance(answer, Interrupted), f"expected interrupted, got {answer}"
        return self.utterances[-1]

    async def wait_frames(self, count: int) -> None:
        """Until the current utterance holds ``count`` frames."""
        async with self._progress:
            await self._progress.wait_for(
                lambda: self.current.count >= count or self.error is not None or self.closed
            )
        assert self.error is None, f"stream failed: {self.error}"
        assert self.current.count >= count, "the server closed the stream"

    async def _answer(self) -> Done | Interrupted | Error:
        answer = await self._answers.get()
        assert answer is not None, "the server closed the stream without an answer"
        assert not isinstance(answer, Error), f"stream failed: {answer.code}: {answer.message}"
        return answer


@contextlib.asynccontextmanager
async def open_stream(url: str, **start: Any) -> AsyncIterator[StreamClient]:
    """A started session (ready received); ``start`` holds `Start` fields."""
    async with connect(url, max_size=None, proxy=None, open_timeout=30) as ws:
        client = StreamClient(ws, Start(**start))
        await client.open()
        try:
            yield client
        finally:
            await client.close()


async def stream_once(
    url: str, payload: bytes, chunk_bytes: int, pace: float | None = None, **start: Any
) -> tuple[Ready, Utterance]:
    """One session, one utterance: send all of ``payload``, end, and collect everything."""
    async with open_stream(url, **start) as client:
        await client.send_audio(payload, chunk_bytes, pace)
        utterance = await client.end()
        assert client.ready is not None
        return client.ready, utterance


def stream_frames(server: RunningServer, samples: np.ndarray, chunk_bytes: int) -> np.ndarray:
    """(n, 32): the frames a 16 kHz mono s16 stream of ``samples`` gives."""
    _, utterance = run(stream_once(server.ws, samples.tobytes(), chunk_bytes))
    return utterance.frames()


def expected_frames(samples: int, rate_hz: int = RATE_HZ) -> int:
    return math.ceil(samples * FPS / rate_hz)


def metric(server: RunningServer, name: str) -> float:
    """One unlabelled sample from GET /metrics."""
    text = httpx.get(f"{server.http}/metrics").text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found is not None, f"{name} missing from /metrics"
    return float(found.group(1))


# --- shared streams ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech16(speech: tuple[np.ndarray, int]) -> np.ndarray:
    samples, rate = speech
    assert rate == RATE_HZ and samples.ndim == 1
    return samples


@pytest.fixture(scope="module")
def reference(server: RunningServer, speech16: np.ndarray) -> tuple[Ready, Utterance]:
    """The sample streamed once as 16 kHz mono s16 in 100 ms chunks: what others compare to."""
    return run(stream_once(server.ws, speech16.tobytes(), CHUNK_100MS_BYTES))


@pytest.fixture(scope="module")
def clip(speech16: np.ndarray) -> np.ndarray:
    """The sample's first 2 s (two words and a pause): enough to compare streams, quick."""
    return speech16[: 2 * RATE_HZ]


@pytest.fixture(scope="module")
def clip_frames(server: RunningServer, clip: np.ndarray) -> np.ndarray:
    """The clip streamed alone as 16 kHz mono s16 in 100 ms chunks."""
    return stream_frames(server, clip, CHUNK_100MS_BYTES)


@pytest.fixture(scope="module")
def one_second(server: RunningServer, speech16: np.ndarray) -> np.ndarray:
    """The sample's first second, streamed alone on a fresh session."""
    return stream_frames(server, speech16[:RATE_HZ], CHUNK_100MS_BYTES)


# --- the contract -----------------------------------------------------------------------------


def test_stream_contract(reference: tuple[Ready, Utterance], speech16: np.ndarray) -> None:
    ready, utterance = reference
    assert ready.session_id
    assert ready.fps == FPS
    assert len(ready.names) == NUM_BLENDSHAPES and ready.names[JAW_OPEN] == "jawOpen"
    frames = utterance.frames()  # consecutive start indices: no gap, duplicate or reordering
    assert frames.shape == (expected_frames(speech16.size), NUM_BLENDSHAPES)
    assert isinstance(utterance.answer, Done)
    assert utterance.answer.frame_count == len(frames)
    assert np.isfinite(frames).all()
    assert frames.min() >= 0.0 and frames.max() <= 1.0


def test_stream_matches_animate_after_end(
    server: RunningServer, reference: tuple[Ready, Utterance], speech16: np.ndarray
) -> None:
    wav = io.BytesIO()
    sf.write(wav, speech16, RATE_HZ, format="WAV", subtype="PCM_16")
    response = httpx.post(
        f"{server.http}/animate",
        files={"audio": ("speech.wav", wav.getvalue(), "audio/wav")},
        timeout=TEST_TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    offline = np.asarray(response.json()["frames"], dtype=np.float64)
    streamed = reference[1].frames()
    assert streamed.shape == offline.shape
    diff = np.abs(streamed - offline)
    mad, worst = float(diff.mean()), float(diff.max())
    frame, channel = divmod(int(diff.argmax()), NUM_BLENDSHAPES)
    # The parity bound at the default window settings.
    assert mad <= 0.01 and worst <= 0.05, (
        f"stream vs /animate: mean abs diff {mad:.4f}, max {worst:.4f} "
        f"(frame {frame}, {reference[0].names[channel]})"
    )


@pytest.mark.parametrize(
    "chunk_bytes",
    [32, 333, RATE_HZ * 2 * 5],
    ids=["1ms", "333-bytes-split-samples", "5s"],
)
def test_chunk_size_does_not_change_frames(
    server: RunningServer, clip: np.ndarray, clip_frames: np.ndarray, chunk_bytes: int
) -> None:
    frames = stream_frames(server, clip, chunk_bytes)
    np.testing.assert_allclose(frames, clip_frames, rtol=0, atol=SAME_STREAM_ATOL)


def test_float32_stream_equals_int16_stream(
    server: RunningServer, clip: np.ndarray, clip_frames: np.ndarray
) -> None:
    as_float = (clip.astype(np.float32) / 32768.0).astype("<f4")
    _, utterance = run(stream_once(server.ws, as_float.tobytes(), 6_400, encoding="pcm_f32le"))
    np.testing.assert_allclose(utterance.frames(), clip_frames, rtol=0, atol=SAME_STREAM_ATOL)


def test_48khz_stereo_stream_follows_the_16khz_stream(
    server: RunningServer, clip: np.ndarray, clip_frames: np.ndarray
) -> None:
    up = soxr.resample(clip.astype(np.float32) / 32768.0, RATE_HZ, 48_000)
    mono = np.clip(np.round(up * 32768.0), -32768, 32767).astype("<i2")
    stereo = np.stack([mono, mono], axis=1)  # (n, 2): interleaved left, right
    _, utterance = run(
        stream_once(server.ws, stereo.tobytes(), 48_000 // 10 * 4, sample_rate=48_000, channels=2)
    )
    frames = utterance.frames()
    assert abs(len(frames) - expected_frames(len(mono), 48_000)) <= 1
    common = min(len(frames), len(clip_frames))
    diff = np.abs(frames[:common] - clip_frames[:common])
    mad, worst = float(diff.mean()), float(diff.max())
    # soxr there and back costs little; a channel-mixing or resampling slip costs far more.
    assert mad < 0.02 and worst < 0.05, f"vs 16 kHz mono: mean abs diff {mad:.4f}, max {worst:.4f}"


def test_binary_output_carries_the_json_frames(
    server: RunningServer, clip: np.ndarray, clip_frames: np.ndarray
) -> None:
    _, utterance = run(stream_once(server.ws, clip.tobytes(), CHUNK_100MS_BYTES, output="binary"))
    assert isinstance(utterance.answer, Done)
    binary = utterance.frames()
    assert utterance.answer.frame_count == len(binary)
    # JSON rounds to 6 decimals; binary carries the float32 values.
    np.testing.assert_allclose(binary, clip_frames, rtol=0, atol=1e-6)


# --- sessions at once -------------------------------------------------------------------------


def test_concurrent_sessions_get_their_own_frames(
    server: RunningServer, clip: np.ndarray, clip_frames: np.ndarray
) -> None:
    audios = {
        "speech": clip,
        "reversed": clip[::-1].copy(),
        "silence": np.zeros_like(clip),
        "half": clip // 2,
    }
    alone = {"speech": clip_frames}
    for name in ("reversed", "silence", "half"):
        alone[name] = stream_frames(server, audios[name], CHUNK_100MS_BYTES)

    async def together() -> dict[str, np.ndarray]:
        async with contextlib.AsyncExitStack() as stack:
            clients = {
                name: await stack.enter_async_context(open_stream(server.ws)) for name in audios
            }
            # Paced at twice real time, so the sessions' windows fall due together and share
            # backend calls, and their sends and frames interleave on the loop.
            await asyncio.gather(
                *(
                    clients[name].send_audio(audios[name].tobytes(), CHUNK_100MS_BYTES, pace=2.0)
                    for name in audios
                )
            )
            ends = await asyncio.gather(*(clients[name].end() for name in audios))
            return {name: u.frames() for name, u in zip(audios, ends, strict=True)}

    calls_before = metric(server, "pmmtalk_batch_size_count")
    windows_before = metric(server, "pmmtalk_batch_size_sum")
    mixed = run(together())
    calls = metric(server, "pmmtalk_batch_size_count") - calls_before
    windows = metric(server, "pmmtalk_batch_size_sum") - windows_before
    for name in audios:
        np.testing.assert_allclose(
            mixed[name], alone[name], rtol=0, atol=OTHER_SESSIONS_ATOL, err_msg=name
        )
    # Paced, one session has at most a window or two due at a time, so an average batch well
    # above one shows the sessions really shared backend calls (else this test proves little).
    assert windows / calls > 1.5, f"{windows:.0f} windows in {calls:.0f} backend calls"


# --- interrupt, silence, utterances -----------------------------------------------------------


def test_interrupt_eases_to_neutral_and_resets(
    server: RunningServer, speech16: np.ndarray, one_second: np.ndarray
) -> None:
    window = server.settings.stream.window()
    ease_frames = round(server.settings.stream.interrupt_ease_s * FPS)
    # 2 s of audio plus the lookahead: exactly the windows up to 2 s can run, and no more
    # will until more audio comes, so the interrupt lands at a known frame.
    cut = 2 * RATE_HZ + window.lookahead_samples
    answered = (cut - window.lookahead_samples) // window.hop_samples * window.hop_frames

    async def session() -> tuple[Utterance, Utterance]:
        async with open_stream(server.ws) as client:
            await client.send_audio(speech16[:cut].tobytes(), CHUNK_100MS_BYTES)
            await client.wait_frames(answered)
            cut_short = await client.interrupt()
            await client.send_audio(speech16[:RATE_HZ].tobytes(), CHUNK_100MS_BYTES)
            return cut_short, await client.end()

    cut_short, after = run(session())
    frames = cut_short.frames()
    assert isinstance(cut_short.answer, Interrupted)
    assert cut_short.answer.frame_count == len(frames) == answered + ease_frames
    last = frames[answered - 1]
    assert last.max() > 0.1, "pick a cut inside speech so the ease is visible"
    eased = frames[answered:]
    # Each eased frame is the last frame scaled down, to all zeros at the end.
    scale = eased @ last / (last @ last)
    np.testing.assert_allclose(eased, scale[:, None] * last[None, :], atol=1e-5)
    assert np.all(np.diff(scale) <= 1e-6) and scale[0] < 1.0
    assert np.abs(eased[-1]).max() < 1e-6
    # The next utterance starts from frame 0 and from a clean state.
    assert isinstance(after.answer, Done)
    assert after.answer.frame_count == expected_frames(RATE_HZ)
    np.testing.assert_allclose(after.frames(), one_second, rtol=0, atol=SAME_STREAM_ATOL)


def test_two_utterances_on_one_connection(
    server: RunningServer, clip: np.ndarray, clip_frames: np.ndarray, one_second: np.ndarray
) -> None:
    async def session() -> list[Utterance]:
        async with open_stream(server.ws) as client:
            await client.send_audio(clip.tobytes(), CHUNK_100MS_BYTES)
            first = await client.end()
            await client.send_audio(clip[:RATE_HZ].tobytes(), CHUNK_100MS_BYTES)
            return [first, await client.end()]

    first, second = run(session())
    assert isinstance(first.answer, Done) and isinstance(second.answer, Done)
    assert first.answer.frame_count == expected_frames(clip.size)
    assert second.answer.frame_count == expected_frames(RATE_HZ)
    np.testing.assert_allclose(first.frames(), clip_frames, rtol=0, atol=SAME_STREAM_ATOL)
    # The second utterance counts from 0 and owes nothing to the first one's audio.
    np.testing.assert_allclose(second.frames(), one_second, rtol=0, atol=SAME_STREAM_ATOL)


# Neutral is all zeros. 0.05 is 5 % of a coefficient's range, too small to see on a face; the
# sample's own closing pause (room noise, no speech) measures at most 0.021 on every coefficient
# with the bundled model (jawOpen 0.0), so the bound leaves room for a retrained model.
NEUTRAL_MAX: Final = 0.05


def test_silence_keeps_the_mouth_closed(server: RunningServer) -> None:
    frames = stream_frames(server, np.zeros(2 * RATE_HZ, dtype=np.int16), CHUNK_100MS_BYTES)
    assert len(frames) == 2 * FPS
    worst, jaw = float(frames.max()), float(frames[:, JAW_OPEN].max())
    assert worst < NEUTRAL_MAX, f"silence gives coefficients up to {worst:.3f} (jawOpen {jaw:.3f})"


def test_trailing_silence_returns_to_neutral(server: RunningServer, speech16: np.ndarray) -> None:
    # The sample's last 2 s (speech, then its own short pause), then 1.5 s of digital silence:
    # the windows of the last 0.5 s of frames hold no speech.
    speech = speech16[-2 * RATE_HZ :]
    silence = np.zeros(round(1.5 * RATE_HZ), dtype=np.int16)
    frames = stream_frames(server, np.concatenate([speech, silence]), CHUNK_100MS_BYTES)
    assert frames[: 2 * FPS, JAW_OPEN].max() > 0.3, "the speech part should open the jaw"
    tail = frames[-FPS // 2 :]
    worst, jaw = float(tail.max()), float(tail[:, JAW_OPEN].max())
    assert jaw < NEUTRAL_MAX and worst < NEUTRAL_MAX, (
        f"the last 0.5 s of silence: jawOpen up to {jaw:.3f}, any coefficient up to {worst:.3f}"
    )


# --- monitoring -------------------------------------------------------------------------------


def test_frame_lag_metric_counts_every_frame(server: RunningServer, speech16: np.ndarray) -> None:
    lags_before = metric(server, "pmmtalk_frame_lag_seconds_count")
    calls_before = metric(server, "pmmtalk_batch_size_count")
    frames = stream_frames(server, speech16[:RATE_HZ], CHUNK_100MS_BYTES)
    assert metric(server, "pmmtalk_frame_lag_seconds_count") - lags_before == len(frames)
    assert metric(server, "pmmtalk_batch_size_count") > calls_before
