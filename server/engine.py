"""One model for every request and session: a single compute thread and a window batcher.

The backend is called from one worker thread only (backends are not re-entrant, and ONNX Runtime
already spreads one call over the cores), so the event loop never computes. Stream windows from
all sessions go through `WindowBatcher`, which gathers up to ``max_batch_size`` of them, waiting
at most ``max_wait_ms`` after the first, and runs them as one `Backend.stream_windows` call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from export.backends.base import Identity
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


@dataclass(eq=False)
class WindowJob:
    """One stream window waiting for compute."""

    wave: np.ndarray  # (W,) float32 at 16 kHz
    identity: Identity
    style: np.ndarray  # (style_dim,) float32
    frame_offset: int  # the window's first frame on its stream's clock (may be negative)
    future: asyncio.Future[np.ndarray] = field(repr=False)


class InferenceEngine:
    """Owns the `Animator` (and so the backend) and the thread all compute runs on."""

    def __init__(self, animator: Animator, batch: BatchSettings, metrics: ServerMetrics) -> None:
        self.animator = animator
        self.window = animator.backend.spec.window
        self._batch = batch
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pmmtalk-model")
        self._queue: asyncio.Queue[WindowJob] = asyncio.Queue()
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
                self.submit_window(wave, identity, style, 0)
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
        self, wave: np.ndarray, identity: Identity, style: np.ndarray, frame_offset: int
    ) -> asyncio.Future[np.ndarray]:
        """Queue one window (W,) float32; the future gives its frames (window_frames, 32),
        unclipped."""
        if self._closed:
            raise EngineClosedError("the server is shutting down")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(WindowJob(wave, identity, style, frame_offset, future))
        self._metrics.queue_depth.set(self._queue.qsize())
        return future

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        max_wait_s = self._batch.max_wait_ms / 1000
        while True:
            jobs = [await self._queue.get()]
            deadline = loop.time() + max_wait_s
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
            jobs = [job for job in jobs if not job.future.done()]  # cancelled by their session
            if not jobs:
                continue
            try:
                frames, seconds = await loop.run_in_executor(self._executor, self._compute, jobs)
            except Exception as exc:  # a backend failure fails its windows, not the server
                logger.exception("stream window batch of %d failed", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self._metrics.compute_seconds.labels("stream").observe(seconds)
            self._metrics.batch_size.observe(len(jobs))
            audio_s = len(jobs) * self.window.hop_s
            self._metrics.real_time_factor.labels("stream").set(seconds / audio_s)
            self._metrics.audio_seconds.labels("stream").inc(audio_s)
            for job, result in zip(jobs, frames, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    def _compute(self, jobs: list[WindowJob]) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        frames = self.animator.backend.stream_windows(
            np.stack([job.wave for job in jobs]),
            [job.identity for job in jobs],
            np.stack([job.style for job in jobs]),
            np.array([job.frame_offset for job in jobs], dtype=np.int64),
        )
        return frames, time.perf_counter() - started
