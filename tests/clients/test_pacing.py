"""Frame-lag bookkeeping and real-time pacing of the Python client, without a server."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest

from clients.pacing import SendClock, paced_chunks
from server.protocol import Ready

RATE_HZ = 16_000


def ready(hop_s: float = 0.4, lookahead_s: float = 0.3) -> Ready:
    names = [f"shape{i}" for i in range(32)]
    return Ready(
        session_id="0" * 12,
        fps=30,
        names=names,
        model="test",
        lookahead_s=lookahead_s,
        hop_s=hop_s,
    )


def test_a_group_waits_for_its_hop_and_the_lookahead() -> None:
    clock = SendClock(RATE_HZ, ready())
    # 100 ms chunks sent at t = 1, 2, 3, ... s: the k-th chunk completes (k + 1) * 0.1 s.
    for k in range(10):
        clock.sent(RATE_HZ // 10, now=float(k + 1))
    # Frames 0..11 (group 0) need 0.4 + 0.3 = 0.7 s: the 7th chunk, sent at t = 7.
    assert clock.needed_samples(0) == clock.needed_samples(11) == 11_200
    assert clock.needed_at(0) == clock.needed_at(11) == 7.0
    assert clock.lag_s(5, now=7.25) == pytest.approx(0.25)
    # Frame 12 starts group 1, which needs 1.1 s: not sent yet, so it waits for `end`.
    assert clock.needed_samples(12) == 17_600
    assert clock.needed_at(12) == 10.0  # the last send, until end is known
    clock.ended(now=10.5)
    assert clock.needed_at(12) == 10.5
    assert clock.samples_sent == RATE_HZ


def test_lag_before_any_audio_is_nan() -> None:
    assert math.isnan(SendClock(RATE_HZ, ready()).lag_s(0, now=1.0))


def test_needed_audio_is_counted_at_the_sources_own_rate() -> None:
    clock = SendClock(44_100, ready(hop_s=0.2, lookahead_s=0.1))
    assert clock.hop_frames == 6
    assert clock.needed_samples(0) == math.ceil(0.3 * 44_100)
    assert clock.needed_samples(6) == math.ceil(0.5 * 44_100)


def test_realtime_chunks_follow_the_wall_clock_and_fast_ones_do_not() -> None:
    pcm = np.zeros((RATE_HZ * 3 // 10, 1), dtype=np.int16)  # 0.3 s

    async def release_times(realtime: bool) -> list[float]:
        began = time.monotonic()
        return [
            time.monotonic() - began
            async for _ in paced_chunks(pcm, RATE_HZ, RATE_HZ // 10, realtime=realtime)
        ]

    paced = asyncio.run(release_times(True))
    assert len(paced) == 3
    # Chunk k leaves at k * 0.1 s, never early (late only by the jitter of a busy machine).
    for k, at in enumerate(paced):
        assert k * 0.1 - 1e-3 <= at < k * 0.1 + 0.5, paced
    fast = asyncio.run(release_times(False))
    assert fast[-1] < 0.05


def test_a_chunk_of_no_samples_is_refused() -> None:
    async def first() -> None:
        async for _ in paced_chunks(np.zeros((10, 1), np.int16), RATE_HZ, 0, realtime=False):
            pass

    with pytest.raises(ValueError, match="at least 1"):
        asyncio.run(first())
