"""One stream's audio and its windows: the streaming engine's bookkeeping, free of I/O.

`PcmDecoder` turns the client's binary chunks (any size, any split, s16 or f32, any rate and
channel count) into 16 kHz mono float32. `StreamBuffer` holds that audio and cuts it into the
fixed windows of `models.streaming.StreamWindow`: window k answers frames
``[k * hop_frames, (k + 1) * hop_frames)`` and may run once the audio through the end of its hop
plus the lookahead has arrived (or the utterance has ended). Every frame is planned exactly once,
in order; after `StreamBuffer.finish` the frame count is ``ceil(n * 30 / rate)`` for ``n``
samples at the client's rate, the same as ``POST /animate`` gives for the same audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import soxr

from models.blendshapes import FPS, SAMPLE_RATE_HZ
from models.streaming import UNIT_FRAMES, UNIT_SAMPLES, StreamWindow
from pmmtalk.errors import AudioError, AudioTooLongError
from server.protocol import BYTES_PER_SAMPLE, Encoding

INT16_SCALE: Final = 32768.0


class PcmDecoder:
    """Raw interleaved PCM chunks -> mono float32 at 16 kHz, resampled with soxr's stream API."""

    def __init__(self, encoding: Encoding, channels: int, sample_rate_hz: int) -> None:
        self.encoding = encoding
        self.channels = channels
        self.sample_rate_hz = sample_rate_hz
        self._frame_bytes = BYTES_PER_SAMPLE[encoding] * channels
        self._dtype = np.dtype("<i2") if encoding == "pcm_s16le" else np.dtype("<f4")
        self._carry = b""  # a sample frame split across two chunks
        self.source_frames = 0  # whole sample frames decoded in this utterance
        self._resampler = (
            soxr.ResampleStream(sample_rate_hz, SAMPLE_RATE_HZ, 1, dtype="float32")
            if sample_rate_hz != SAMPLE_RATE_HZ
            else None
        )

    def decode(self, chunk: bytes) -> np.ndarray:
        """One binary message -> (n,) float32 at 16 kHz (n may be 0 for a tiny chunk).

        Raises AudioError for non-finite float samples; float samples outside [-1, 1] are
        clipped to it.
        """
        data = self._carry + chunk
        usable = len(data) - len(data) % self._frame_bytes
        self._carry = data[usable:]
        samples = np.frombuffer(data[:usable], dtype=self._dtype)
        self.source_frames += usable // self._frame_bytes
        if self.encoding == "pcm_s16le":
            mono = samples.astype(np.float32) / INT16_SCALE
        else:
            if not np.isfinite(samples).all():
                raise AudioError(
                    "the audio holds NaN or infinite samples; send finite pcm_f32le in [-1, 1]"
                )
            # Full scale is [-1, 1]; louder samples are clipped there, as a sound card would,
            # so that huge finite values cannot overflow the resampler or the model.
            mono = np.clip(samples, -1.0, 1.0).astype(np.float32)
        if self.channels > 1:
            mono = mono.reshape(-1, self.channels).mean(axis=1)
        return self._resample(mono, last=False)

    def flush(self) -> tuple[np.ndarray, int]:
        """The resampler's tail at the end of an utterance and the utterance's frame count
        (ceil(source samples * 30 / source rate), as ``POST /animate`` counts); then a fresh
        state for the next utterance.

        A split sample frame left over at the end is dropped (it is not a whole sample).
        """
        frames = math.ceil(self.source_frames * FPS / self.sample_rate_hz)
        self._carry = b""
        self.source_frames = 0
        tail = self._resample(np.zeros(0, dtype=np.float32), last=True)
        if self._resampler is not None:
            self._resampler = soxr.ResampleStream(
                self.sample_rate_hz, SAMPLE_RATE_HZ, 1, dtype="float32"
            )
        return tail, frames

    def _resample(self, mono: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None:
            return np.ascontiguousarray(mono, dtype=np.float32)
        out = self._resampler.resample_chunk(mono, last=last)
        return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class WindowPlan:
    """One window to compute and which of its frames to send."""

    index: int  # k: the window's number in the stream
    wave: np.ndarray  # (window_samples,) float32; silence before the stream and after its end
    wave_start: int  # the absolute sample of wave[0] on the stream's 16 kHz clock
    frame_offset: int  # the window's first frame on the stream clock (negative at the start)
    first_frame: int  # the first frame this window answers (k * hop_frames)
    count: int  # frames it answers: hop_frames, fewer for the last window of an utterance
    ready_at: float  # monotonic time the audio it needs had all arrived


class StreamBuffer:
    """Audio received for one utterance and the windows not yet planned."""

    def __init__(self, window: StreamWindow, max_samples: int) -> None:
        self.window = window
        self.max_samples = max_samples
        self.received = 0  # samples at 16 kHz, all time
        self.finished = False
        self.total_frames: int | None = None  # known once finished
        self._next = 0  # the next window to plan
        self._base = 0  # absolute sample index of self._chunks' first sample
        self._chunks: list[np.ndarray] = []
        self._ready_times: dict[int, float] = {}
        self._left = window.left_frames // UNIT_FRAMES * UNIT_SAMPLES

    @property
    def planned_frames(self) -> int:
        """Frames handed out in plans so far."""
        return (
            self._next * self.window.hop_frames
            if self.total_frames is None
            else min(self._next * self.window.hop_frames, self.total_frames)
        )

    @property
    def unanswered_samples(self) -> int:
        """Samples received beyond the last planned window's hop (what backpressure counts)."""
        return max(0, self.received - self._next * self.window.hop_samples)

    @property
    def done(self) -> bool:
        """Finished, and every frame planned."""
        return self.total_frames is not None and self.planned_frames >= self.total_frames

    def push(self, samples: np.ndarray, now: float) -> None:
        """Append (n,) float32 at 16 kHz; raise AudioError past ``max_samples``."""
        if self.finished:
            raise RuntimeError("push after finish")
        if self.received + samples.size > self.max_samples:
            raise AudioTooLongError(
                f"the utterance is longer than {self.max_samples / SAMPLE_RATE_HZ:.0f} s; send "
                "end (or interrupt) to start a new one, or raise limits.max_audio_s"
            )
        if samples.size == 0:
            return
        self._chunks.append(samples)
        self.received += samples.size
        need = self.window.hop_samples
        k = self._next + len(self._ready_times)
        while (k + 1) * need + self.window.lookahead_samples <= self.received:
            self._ready_times[k] = now
            k += 1

    def finish(self, now: float, total_frames: int | None = None) -> None:
        """No more audio: every remaining window may run (padded with silence).

        ``total_frames``: the utterance's frame count, by default ceil(received * 30 / 16000);
        audio resampled from another rate passes its source's count (`PcmDecoder.flush`).
        """
        self.finished = True
        if total_frames is None:
            total_frames = math.ceil(self.received * FPS / SAMPLE_RATE_HZ)
        self.total_frames = max(total_frames, self.planned_frames)
        last = math.ceil(self.total_frames / self.window.hop_frames)
        for k in range(self._next, last):
            self._ready_times.setdefault(k, now)

    def take(self, limit: int) -> list[WindowPlan]:
        """Up to ``limit`` windows whose audio is complete, in order."""
        plans: list[WindowPlan] = []
        while len(plans) < limit and self._next in self._ready_times:
            plans.append(self._plan(self._next, self._ready_times.pop(self._next)))
            self._next += 1
        if plans:
            self._trim()
        return plans

    def _plan(self, k: int, ready_at: float) -> WindowPlan:
        w = self.window
        start = k * w.hop_samples - self._left  # absolute sample of the window's first sample
        wave = np.zeros(w.window_samples, dtype=np.float32)
        audio = self._audio()
        lo = max(start, self._base)
        hi = min(start + w.window_samples, self._base + audio.size)
        if hi > lo:
            wave[lo - start : hi - start] = audio[lo - self._base : hi - self._base]
        first = k * w.hop_frames
        count = w.hop_frames
        if self.total_frames is not None:
            count = min(count, self.total_frames - first)
        offset = start // UNIT_SAMPLES * UNIT_FRAMES
        return WindowPlan(k, wave, start, offset, first, count, ready_at)

    def _audio(self) -> np.ndarray:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else np.zeros(0, dtype=np.float32)

    def _trim(self) -> None:
        """Drop audio no future window reads (before the next window's left context)."""
        keep_from = self._next * self.window.hop_samples - self._left
        audio = self._audio()
        drop = min(max(0, keep_from - self._base), audio.size)
        if drop:
            self._chunks = [audio[drop:]]
            self._base += drop


def ease_to_neutral(last: np.ndarray, frames: int) -> np.ndarray:
    """(frames, 32): a cosine ease from the frame ``last`` (32,) to zeros, ending at zero."""
    if frames <= 0:
        return np.zeros((0, last.size), dtype=np.float32)
    phase = np.arange(1, frames + 1, dtype=np.float32) / frames
    weight = 0.5 * (1 + np.cos(np.pi * phase))  # 1 -> 0
    return (weight[:, None] * last[None, :]).astype(np.float32)
