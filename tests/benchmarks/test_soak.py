"""The soak runs: memory growth arithmetic, the frame-count bookkeeping, and both runs on a
tiny scale against a real server (its pid is this process: the server runs in a thread)."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from benchmarks.process import Target
from benchmarks.soak import (
    SessionTally,
    clip_samples,
    memory_growth,
    sequential_soak,
    settled_sessions,
    timed_soak,
    utterance_samples,
)
from benchmarks.streams import SAMPLE_RATE_HZ
from tests.benchmarks.conftest import answer_after, paced_trace, soak_result
from tests.server.conftest import RunningServer, serve


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    with serve() as running:
        yield _target(running)


def _target(running: RunningServer) -> Target:
    return Target(running.http, running.ws, os.getpid())


def test_growth_counts_from_the_first_sample_after_the_warm_up() -> None:
    samples = [(50.0, 100), (100.0, 200), (150.0, 215), (200.0, 210)]
    growth = memory_growth(samples, 100.0)
    assert growth is not None
    assert (growth.baseline_bytes, growth.final_bytes, growth.peak_bytes) == (200, 210, 215)
    assert growth.growth == pytest.approx(0.05) and growth.peak_growth == pytest.approx(0.075)
    assert memory_growth(samples, 200.0) is None  # one sample after the warm-up: no growth


def test_soak_verdicts_follow_the_three_targets() -> None:
    good = soak_result(104, 0, 0).verdicts()
    assert [met for *_, met in good] == [True, True, True]
    assert good[2][1] == "+4.0 % (0 -> 0 MB)" and good[2][2] == "< 5 %"
    bad = soak_result(106, 3, 2).verdicts()
    assert [met for *_, met in bad] == [False, False, False]
    assert bad[0][1] == "3 (1 of 20 sessions off)"
    assert soak_result(100, 0, None).verdicts()[1][3] is None  # the gauge was not read


def test_the_tally_counts_lost_frames_against_the_contract() -> None:
    tally = SessionTally()
    whole, short = paced_trace(1.0), paced_trace(1.0)
    answer_after(whole, 0.05)
    answer_after(short, 0.05)
    del short.arrivals[4], short.arrivals[5]
    tally.add(whole, 0.2, keep_lag=True)
    tally.add(short, 0.3, keep_lag=False)
    assert (tally.sessions, tally.frames_expected, tally.frames, tally.frames_lost) == (
        2,
        60,
        58,
        2,
    )
    assert tally.broken == 1 and tally.failures == [
        "session 2: received 28 distinct frames, 0 twice"
    ]
    assert len(tally.lags) == 1 and tally.lags[0].size == 30


def test_soak_clips_rarely_fill_whole_frames() -> None:
    lengths = [clip_samples(k) for k in range(1000)]
    assert min(lengths) >= 12_000 and max(lengths) <= 20_000
    ragged = sum(1 for n in lengths if n * 30 % SAMPLE_RATE_HZ)
    assert ragged > 900  # the ceil of the frame-count contract matters for almost every clip
    utterances = {utterance_samples(c, k) for c in range(4) for k in range(10)}
    assert len(utterances) > 20
    assert min(utterances) >= 3 * SAMPLE_RATE_HZ and max(utterances) <= 8 * SAMPLE_RATE_HZ


def test_sequential_soak_on_a_real_server(target: Target) -> None:
    result = asyncio.run(sequential_soak(target, sessions=12, rss_every=3))
    assert result.sessions == 12 and result.failures == []
    expected = sum(math.ceil(clip_samples(k) * 30 / SAMPLE_RATE_HZ) for k in range(12))
    assert result.frames_expected == expected == result.frames
    assert result.frames_lost == 0 and result.broken_sessions == 0
    assert result.sessions_open_end == 0
    assert result.streams_completed == 12  # the server saw every session end cleanly
    assert [when for when, _ in result.rss_samples] == [3.0, 6.0, 9.0, 12.0]
    assert result.warmup == 1.0 and result.growth is not None  # 10 % of 12, rounded
    assert all(met for *_, met in result.verdicts()[:2])
    assert result.session_wall.p50 is not None and result.session_wall.p50 > 0


def test_timed_soak_on_a_real_server(target: Target) -> None:
    result = asyncio.run(timed_soak(target, clients=2, duration_s=2.0, utterance_s=(0.5, 1.0)))
    assert result.clients == 2 and result.sessions >= 4  # both clients reconnected
    assert result.failures == [] and result.frames_lost == 0
    assert result.frames == result.frames_expected
    assert result.sessions_open_end == 0 and result.streams_completed == result.sessions
    assert result.client_lag.p95 is not None
    assert result.growth is not None and result.warmup == pytest.approx(0.2)
    assert result.rss_every == pytest.approx(0.1)  # a short soak reads memory more often
    assert result.wall_s >= 2.0


def test_a_session_left_open_is_reported(target: Target) -> None:
    async def hold_one_open() -> int | None:
        async with connect(target.ws), httpx.AsyncClient() as http:
            # The server admits the session when it accepts; wait for its gauge to say so.
            for _ in range(200):
                count, _ = await settled_sessions(http, target, timeout_s=0.0)
                if count:
                    break
                await asyncio.sleep(0.05)
            count, _ = await settled_sessions(http, target, timeout_s=0.3)
            return count

    assert asyncio.run(hold_one_open()) == 1
