"""Sending audio at the pace of a microphone, and measuring how late each frame comes back.

A frame's lag is its arrival time minus the moment the client finished sending the audio that
frame needs. By the streaming contract (docs/protocol.md, Frame timing), the frames of window
``k`` need the utterance's audio through ``(k + 1) * hop_s + lookahead_s`` seconds; the frames
of the last windows, which run on silence after ``end``, need the whole utterance and the
``end`` message. ``ready`` gives ``hop_s`` and ``lookahead_s``.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import AsyncIterator

import numpy as np

from server.protocol import Ready


async def paced_chunks(
    pcm: np.ndarray, sample_rate: int, chunk_samples: int, *, realtime: bool
) -> AsyncIterator[np.ndarray]:
    """Cut ``pcm`` (n, channels) into chunks of ``chunk_samples`` sample frames.

    With ``realtime``, chunk ``k`` is released at ``k * chunk_samples / sample_rate`` seconds
    after the first, on an absolute schedule so that slow sends do not add up to drift; without
    it every chunk is released at once and only the socket's backpressure paces the sender.
    """
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be at least 1, got {chunk_samples}")
    started = time.monotonic()
    for at in range(0, len(pcm), chunk_samples):
        if realtime:
            delay_s = started + at / sample_rate - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
        yield pcm[at : at + chunk_samples]


class SendClock:
    """When each part of an utterance left the client, to time the frames that come back.

    ``sent(n)`` is called after every audio message with its sample-frame count, ``ended()``
    after ``end``; ``lag_s(i, now)`` is then frame ``i``'s lag if it arrived at ``now``
    (`time.monotonic` seconds).
    """

    def __init__(self, sample_rate: int, ready: Ready) -> None:
        self.sample_rate = sample_rate
        self.hop_s = ready.hop_s
        self.lookahead_s = ready.lookahead_s
        # Frames come in groups of one hop; a group's frames all need the same audio.
        self.hop_frames = max(1, round(ready.hop_s * ready.fps))
        self._totals: list[int] = []  # cumulative sample frames after each message
        self._times_s: list[float] = []  # when that message had been sent
        self._ended_s: float | None = None

    @property
    def samples_sent(self) -> int:
        """Whole sample frames sent so far in this utterance."""
        return self._totals[-1] if self._totals else 0

    def sent(self, sample_frames: int, now: float | None = None) -> None:
        """Record an audio message of ``sample_frames`` frames, sent at ``now``."""
        self._totals.append(self.samples_sent + sample_frames)
        self._times_s.append(time.monotonic() if now is None else now)

    def ended(self, now: float | None = None) -> None:
        """Record that ``end`` has been sent."""
        self._ended_s = time.monotonic() if now is None else now

    def needed_samples(self, frame_index: int) -> int:
        """Sample frames of the utterance that frame ``frame_index``'s window reads."""
        group = frame_index // self.hop_frames
        need_s = (group + 1) * self.hop_s + self.lookahead_s
        # The small tolerance keeps 0.7 s x 16 kHz (11200.000000000002) from asking for 11201.
        return math.ceil(need_s * self.sample_rate - 1e-6)

    def needed_at(self, frame_index: int) -> float | None:
        """When the audio frame ``frame_index`` needs had been sent; None before any audio."""
        if not self._totals:
            return None
        need = self.needed_samples(frame_index)
        if need > self._totals[-1]:
            # The window reaches past what was sent: it runs on silence once `end` arrives.
            return self._ended_s if self._ended_s is not None else self._times_s[-1]
        return self._times_s[bisect.bisect_left(self._totals, need)]

    def lag_s(self, frame_index: int, now: float) -> float:
        """Frame ``frame_index``'s lag in seconds if it arrived at ``now``; NaN before audio."""
        sent_s = self.needed_at(frame_index)
        return math.nan if sent_s is None else now - sent_s
