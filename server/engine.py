"""One model for every request and session: compute threads and a window batcher.

The backend is called from a pool of ``Backend.concurrent_calls`` worker threads (one for the
torch and TensorRT backends; one per physical core for ONNX Runtime on a CPU, where separate
single-threaded window calls fill the cores better than one call spread over them), so the
event loop never computes. Stream windows from all sessions go through the batcher
(`InferenceEngine._batch_loop`): whenever a worker is free, it gathers up to ``max_batch_size``
queued windows, waiting at most ``max_wait_ms`` after the first, and runs them as one
`Backend.stream_windows` call on that worker. While every worker is busy, windows queue up and
the next call takes several at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import numpy as np

from export.backends.base import Carry, Identity, WindowOutput
from models.blendshapes import SAMPLE_RATE_HZ
from pmmtalk.animate import Animation, Animator
from server.metrics import ServerMetrics
from server.settings import BatchSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")

WARMUP_AUDIO_S = 1.0
"""Length of the silent clip each path runs once before the server reports ready."""


class EngineClosedError(RuntimeError):
    """The engine is shutting down; no more work is accepted."""


class WindowResult(NamedTuple):
    """One computed window."""

    frames: np.ndarray  # (window_frames, 32) float32, unclipped
    carry: Carry  # what the stream's next window takes as its carry


@dataclass(eq=False)
class WindowJob:
    """One stream window waiting for compute."""

    wave: np.ndarray  # (W,) float32 at 16 kHz
    identity: Identity
    style: np.ndarray  # (style_dim,) float32
    frame_offset: int  # the window's first frame on its stream's clock (may be negative)
    carry: Carry | None  # the previous window's `WindowResult.carry`; None: the stream's first
    future: asyncio.Future[WindowResult] = field(repr=False)


class InferenceEngine:
    """Owns the `Animator` (and so the backend) and the thread all compute runs on."""

    def __init__(self, animator: Animator, batch: BatchSettings, metrics: ServerMetrics) -> None:
        self.animator = animator
        self.window = animator.backend.spec.window
        self._batch = batch
        self._metrics = metrics
        self.workers = max(1, animator.backend.concurrent_calls)
        self._executor = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="pmmtalk-model"
        )
        self._queue: asyncio.Queue[WindowJob] = asyncio.Queue()
        self._free_workers = asyncio.Semaphore(self.workers)
        self._batches: set[asyncio.Task[None]] = set()  # window batches being computed
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.ready = False

    async def start(self) -> None:
        """Start the batcher and run every path once (the window path at its largest batch), so
        the first real request is not slow."""
        self._task = asyncio.create_task(self._batch_loop(), name="pmmtalk-window-batcher")
        identity = await self.identity(None)
        style = self.animator.style_vector(None)
        silence = np.zeros(round(WARMUP_AUDIO_S * SAMPLE_RATE_HZ), dtype=np.float32)
        await self.animate(silence, identity, style)
        wave = np.zeros(self.window.window_samples, dtype=np.float32)
        # A full batch, not one window: the runtime sizes its buffers for the largest batch now,
        # so resident memory does not step up later, the first time many streams coincide.
        await asyncio.gather(
            *(
                self.submit_window(wave, identity, style, 0, None)
                for _ in range(self._batch.max_batch_size)
            )
        )
        self.ready = True

    async def close(self) -> None:
        """Stop taking work, fail what is queued, and release the backend."""
        self._closed = True
        self.ready = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for batch in list(self._batches):
            batch.cancel()  # fails its windows; the worker thread finishes its call
        await asyncio.gather(*self._batches, return_exceptions=True)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(EngineClosedError("the server is shutting down"))
        self._executor.shutdown(wait=True)
        self.animator.close()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the compute thread."""
        if self._closed:
            raise EngineClosedError("the server is shutting down")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def identity(self, face: np.ndarray | None) -> Identity:
        """The identity pyramid of an RGB photo (H, W, 3) uint8, or the default face (None);
        raises `pmmtalk.errors.FaceError` when the photo holds no usable face."""
        return await self.run(self.animator.identity, face)

    async def animate(
        self,
        samples: np.ndarray,
        identity: Identity,
        style: np.ndarray,
        frame_count: int | None = None,
    ) -> tuple[Animation, float]:
        """A whole clip (n,) float32 at 16 kHz -> (animation, compute seconds); ``frame_count``
        as in `Animator.animate`."""

        def work() -> tuple[Animation, float]:
            started = time.perf_counter()
            result = self.animator.animate_with(samples, identity, style, frame_count)
            return result, time.perf_counter() - started

        animation, seconds = await self.run(work)
        audio_s = samples.size / SAMPLE_RATE_HZ
        self._metrics.compute_seconds.labels("animate").observe(seconds)
        if audio_s > 0:
            self._metrics.real_time_factor.labels("animate").set(seconds / audio_s)
        self._metrics.audio_seconds.labels("animate").inc(audio_s)
        return animation, seconds

    def submit_window(
        self,
        wave: np.ndarray,
        identity: Identity,
        style: np.ndarray,
        frame_offset: int,
        carry: Carry | None,
    ) -> asyncio.Future[WindowResult]:
        """Queue one window (W,) float32 with its stream's carry (None for the stream's first
        window); the future gives its `WindowResult`."""
        if self._closed:
            raise EngineClosedError("the server is shutting down")
        future: asyncio.Future[WindowResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(WindowJob(wave, identity, style, frame_offset, carry, future))
        self._metrics.queue_depth.set(self._queue.qsize())
        return future

    async def _batch_loop(self) -> None:
        while True:
            await self._free_workers.acquire()  # windows queue up while every worker is busy
            try:
                jobs = await self._next_batch()
            except BaseException:
                self._free_workers.release()
                raise
            if not jobs:
                self._free_workers.release()
                continue
            batch = asyncio.create_task(self._run_batch(jobs), name="pmmtalk-window-batch")
            self._batches.add(batch)
            batch.add_done_callback(self._batches.discard)

    async def _next_batch(self) -> list[WindowJob]:
        """The next window and those that join it within ``max_wait_ms``, still wanted."""
        loop = asyncio.get_running_loop()
        jobs = [await self._queue.get()]
        deadline = loop.time() + self._batch.max_wait_ms / 1000
        while len(jobs) < self._batch.max_batch_size:
            if not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        self._metrics.queue_depth.set(self._queue.qsize())
        return [job for job in jobs if not job.future.done()]  # cancelled by their session

    async def _run_batch(self, jobs: list[WindowJob]) -> None:
        """One backend call on a free worker; its results (or its failure) go to the windows."""
        loop = asyncio.get_running_loop()
        try:
            output, seconds = await loop.run_in_executor(self._executor, self._compute, jobs)
        except asyncio.CancelledError:  # the engine is closing
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(EngineClosedError("the server is shutting down"))
            raise
        except Exception as exc:  # a backend failure fails its windows, not the server
            logger.exception("stream window batch of %d failed", len(jobs))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            self._free_workers.release()
        self._metrics.compute_seconds.labels("stream").observe(seconds)
        self._metrics.batch_size.observe(len(jobs))
        audio_s = len(jobs) * self.window.hop_s
        self._metrics.real_time_factor.labels("stream").set(seconds / audio_s)
        self._metrics.audio_seconds.labels("stream").inc(audio_s)
        for job, frames, carry in zip(jobs, output.frames, output.carries, strict=True):
            if not job.future.done():
                job.future.set_result(WindowResult(frames, carry))

    def _compute(self, jobs: list[WindowJob]) -> tuple[WindowOutput, float]:
        started = time.perf_counter()
        output = self.animator.backend.stream_windows(
            np.stack([job.wave for job in jobs]),
            [job.identity for job in jobs],
            np.stack([job.style for job in jobs]),
            np.array([job.frame_offset for job in jobs], dtype=np.int64),
            [job.carry for job in jobs],
        )
        return output, time.perf_counter() - started
