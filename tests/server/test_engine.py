"""The engine's worker pool: as many window batches at once as the backend takes, never more.

A fake backend stands in for the model, so these tests check the scheduling alone: its
``stream_windows`` records how many calls overlap, and (for concurrent backends) meets the other
worker at a barrier, which only works if two calls really run at the same time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np

from export.backends.base import BackendName, Carry, Identity, ModelSpec, WindowOutput
from models.config import preset_config
from models.streaming import StreamWindow
from pmmtalk.animate import Animator
from server.engine import EngineClosedError, InferenceEngine
from server.metrics import ServerMetrics
from server.settings import BatchSettings

BARRIER_TIMEOUT_S = 10.0


class FakeBackend:
    """Answers every window with its frame offset in every coefficient, and counts overlap."""

    name: BackendName = "onnx"
    device = "cpu"

    def __init__(self, concurrent_calls: int, meet: int = 0) -> None:
        self.concurrent_calls = concurrent_calls
        window = StreamWindow()
        self.spec = ModelSpec(
            config=preset_config("lite"),
            window=window,
            style_table=np.zeros((2, 64), dtype=np.float32),
            name="lite:fake",
        )
        self._lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.calls = 0
        self.release = threading.Event()  # never set: a short pause stands in for compute
        self.barrier = threading.Barrier(meet) if meet else None
        self.hold: threading.Event | None = None

    def encode_face(self, face: np.ndarray) -> Identity:
        return (np.zeros((1, 4), dtype=np.float32),)

    def speech_to_frames(
        self, wave: np.ndarray, identity: Identity, style: np.ndarray
    ) -> np.ndarray:
        return np.zeros((int(np.ceil(wave.size * 30 / 16_000)), 32), dtype=np.float32)

    def stream_windows(
        self,
        waves: np.ndarray,
        identities: Sequence[Identity],
        styles: np.ndarray,
        frame_offsets: np.ndarray,
        carries: Sequence[Carry | None] | None = None,
    ) -> WindowOutput:
        with self._lock:
            self.running += 1
            self.calls += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.barrier is not None:
                self.barrier.wait(BARRIER_TIMEOUT_S)  # BrokenBarrierError if no one else comes
            elif self.hold is not None:
                self.hold.wait(BARRIER_TIMEOUT_S)
            else:
                self.release.wait(0.05)
            frames = self.spec.window.window_frames
            out = np.broadcast_to(frame_offsets[:, None, None], (len(waves), frames, 32))
            # The next carry counts the windows of its stream: one more than the carry given.
            given = [-1.0 if c is None else float(c[0, 0]) for c in carries or [None] * len(waves)]
            carried = np.array(given, dtype=np.float32)[:, None, None] + 1.0
            return WindowOutput(
                out.astype(np.float32),
                np.broadcast_to(carried, (len(waves), *self.spec.carry_shape)).copy(),
            )
        finally:
            with self._lock:
                self.running -= 1

    def close(self) -> None:
        pass


def make_engine(backend: FakeBackend, max_batch_size: int = 1) -> InferenceEngine:
    animator = Animator(backend, silence_gate_dbfs=None)  # type: ignore[arg-type]
    batch = BatchSettings(max_batch_size=max_batch_size, max_wait_ms=0.0)
    return InferenceEngine(animator, batch, ServerMetrics())


async def submit(engine: InferenceEngine, offsets: list[int]) -> list[np.ndarray]:
    """One window per offset, each starting its own stream; their frames."""
    identity = await engine.identity(None)
    style = engine.animator.style_vector(None)
    wave = np.zeros(engine.window.window_samples, dtype=np.float32)
    results = await asyncio.gather(
        *(engine.submit_window(wave, identity, style, offset, None) for offset in offsets)
    )
    return [result.frames for result in results]


def test_a_concurrent_backend_gets_two_batches_at_once() -> None:
    backend = FakeBackend(concurrent_calls=2, meet=2)
    engine = make_engine(backend)

    # Not `start`: its warm-up is one batch, which would wait at the barrier alone. The batcher
    # runs as `start` runs it.
    async def scenario() -> list[np.ndarray]:
        engine._task = asyncio.create_task(engine._batch_loop())
        try:
            return await submit(engine, list(range(6)))
        finally:
            await engine.close()

    results = asyncio.run(scenario())
    assert engine.workers == 2
    assert backend.most_at_once == 2  # the barrier let every call through: they ran in pairs
    assert backend.calls == 6
    for offset, frames in enumerate(results):  # each window got its own answer back
        assert frames.shape == (backend.spec.window.window_frames, 32)
        assert (frames == offset).all()


def test_a_serial_backend_never_gets_two_calls_at_once() -> None:
    backend = FakeBackend(concurrent_calls=1)
    engine = make_engine(backend)

    async def scenario() -> list[np.ndarray]:
        await engine.start()
        try:
            return await submit(engine, list(range(6)))
        finally:
            await engine.close()

    results = asyncio.run(scenario())
    assert engine.workers == 1
    assert backend.most_at_once == 1
    assert [int(frames[0, 0]) for frames in results] == list(range(6))


def test_windows_queued_while_every_worker_is_busy_share_the_next_call() -> None:
    backend = FakeBackend(concurrent_calls=1)
    engine = make_engine(backend, max_batch_size=8)

    async def scenario() -> list[np.ndarray]:
        engine._task = asyncio.create_task(engine._batch_loop())
        try:
            return await submit(engine, list(range(9)))
        finally:
            await engine.close()

    results = asyncio.run(scenario())
    # All nine were queued before the batcher ran: a batch of eight, then one.
    assert backend.calls == 2
    assert [int(frames[0, 0]) for frames in results] == list(range(9))


def test_closing_fails_the_windows_still_being_computed() -> None:
    backend = FakeBackend(concurrent_calls=2)
    hold = threading.Event()
    backend.hold = hold  # the call blocks until the test lets it go

    async def scenario() -> BaseException | None:
        engine = make_engine(backend)
        engine._task = asyncio.create_task(engine._batch_loop())
        identity = await engine.identity(None)
        style = engine.animator.style_vector(None)
        wave = np.zeros(engine.window.window_samples, dtype=np.float32)
        future = engine.submit_window(wave, identity, style, 0, None)
        while backend.running == 0:
            await asyncio.sleep(0.01)
        # close() waits for the worker thread; let the call finish a moment after it began.
        threading.Timer(0.3, hold.set).start()
        await engine.close()
        try:
            await future
        except EngineClosedError as exc:
            return exc
        return None

    failure = asyncio.run(scenario())
    assert isinstance(failure, EngineClosedError)
    assert backend.running == 0


def test_each_window_gets_its_own_carry_back() -> None:
    backend = FakeBackend(concurrent_calls=1)
    engine = make_engine(backend, max_batch_size=4)

    async def scenario() -> list[float]:
        engine._task = asyncio.create_task(engine._batch_loop())
        try:
            identity = await engine.identity(None)
            style = engine.animator.style_vector(None)
            wave = np.zeros(engine.window.window_samples, dtype=np.float32)
            shape = backend.spec.carry_shape
            carries = [None, np.full(shape, 4.0, np.float32), np.full(shape, 9.0, np.float32)]
            results = await asyncio.gather(
                *(engine.submit_window(wave, identity, style, 0, c) for c in carries)
            )
            return [float(result.carry[0, 0]) for result in results]
        finally:
            await engine.close()

    # One batch of three: the fake numbers each stream's windows, so each carry came back to
    # the window that sent its predecessor's.
    assert asyncio.run(scenario()) == [0.0, 5.0, 10.0]
