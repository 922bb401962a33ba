"""The streaming measures: lag arithmetic, the frame-count contract, and the keeps-real-time
rule, on synthetic traces whose figures are known exactly."""

from __future__ import annotations

import pytest

from benchmarks.process import ResourceUsage
from benchmarks.streams import (
    LATE_FRAME_LAG_S,
    analyse_run,
    failed_run,
    frame_latencies,
    largest_real_time,
    pcm_chunks,
    speech,
)
from tests.benchmarks.conftest import T0, answer_after, made_run, metrics_text, paced_trace

USAGE = ResourceUsage(10.0, 15.0, 2.0, 19.0, 400_000_000, 450_000_000, 420_000_000)


def test_lag_counts_from_the_audio_each_frame_waits_for() -> None:
    trace = paced_trace(2.0)
    trace.arrivals = {0: T0 + 0.80, 15: T0 + 1.15, 36: T0 + 2.00, 48: T0 + 2.10, 59: T0 + 2.10}
    lag, end_to_end, when = frame_latencies(trace)
    # Frame 0 is in window 0 (frames 0-11), which needs 0.4 + 0.3 s of audio = 11,200 samples,
    # the end of chunk 34, sent at T0 + 0.70.
    assert lag[0] == pytest.approx(0.10)
    # Frame 15 is in window 1 (frames 12-23): it needs 1.1 s of audio, sent at T0 + 1.10.
    assert lag[1] == pytest.approx(0.05)
    # Frame 36 (window 3) needs 1.9 s, sent at T0 + 1.90.
    assert lag[2] == pytest.approx(0.10)
    # Window 4 would need 2.3 s, past the 2 s of audio: its frames wait for end (T0 + 2.00).
    assert lag[3] == pytest.approx(0.10) and lag[4] == pytest.approx(0.10)
    # End to end counts from the frame's own instant: frame 15 is at 0.5 s, sent at T0 + 0.50.
    assert end_to_end[0] == pytest.approx(0.80 - 0.02)
    assert end_to_end[1] == pytest.approx(1.15 - 0.50)
    assert when.tolist() == pytest.approx([0.0, 0.5, 1.2, 1.6, 59 / 30])


def test_a_stream_is_complete_only_with_every_frame_once() -> None:
    trace = paced_trace(1.0)  # 30 frames
    answer_after(trace, 0.05)
    assert trace.problem() is None
    trace.done_frames = 29
    assert trace.problem() == "done said 29 frames, expected 30"
    trace.done_frames = 30
    del trace.arrivals[7]
    trace.arrivals[30] = T0
    assert trace.problem() == "the frame indices have gaps"
    trace.duplicates = 1
    assert "1 twice" in (trace.problem() or "")
    trace.error = "server error bad_audio: ..."
    assert trace.problem() == "server error bad_audio: ..."


def test_missing_frames_count_the_contract_not_the_arrivals() -> None:
    trace = paced_trace(1.0)  # 30 frames
    answer_after(trace, 0.05)
    assert trace.missing_frames == 0
    for index in (3, 4, 29):
        del trace.arrivals[index]
    trace.arrivals[31] = T0  # a frame past the contract does not make up for a missing one
    assert trace.missing_frames == 3


def test_a_server_keeping_up_keeps_real_time_and_one_falling_behind_does_not() -> None:
    metrics = metrics_text([0.05], [], [0.05])
    steady = []
    for index in range(2):
        trace = paced_trace(4.0)
        trace.index = index
        answer_after(trace, 0.08)
        steady.append(trace)
    run = analyse_run(steady, 4.0, metrics, metrics, USAGE)
    assert run.frames == run.frames_expected == 240
    assert run.client_lag.p95 == pytest.approx(0.08)
    assert run.lag_growth_s == pytest.approx(0.0)
    assert run.real_time_verdict() == (True, "yes")

    behind = paced_trace(4.0)
    answer_after(behind, 0.05, growth_s_per_s=0.05)  # 50 ms later for every second of audio
    run = analyse_run([behind], 4.0, metrics, metrics)
    assert run.client_lag.p95 is not None and run.client_lag.p95 < 0.3  # not yet slow ...
    keeps, why = run.real_time_verdict()
    assert not keeps and why.startswith("lag grew")  # ... but it would not last

    slow = paced_trace(4.0)
    answer_after(slow, 0.35)
    keeps, why = analyse_run([slow], 4.0, metrics, metrics).real_time_verdict()
    assert not keeps and why == "p95 lag 350 ms > 300 ms"

    broken = paced_trace(4.0)
    answer_after(broken, 0.05)
    broken.error = "server error internal: boom"
    keeps, why = analyse_run([broken], 4.0, metrics, metrics).real_time_verdict()
    assert not keeps and "1 stream(s) failed" in why


def test_late_and_missing_frames_are_counted_per_run() -> None:
    metrics = metrics_text([0.05], [], [0.05])
    on_time, late = paced_trace(2.0), paced_trace(2.0)
    late.index = 1
    answer_after(on_time, 0.05)
    answer_after(late, LATE_FRAME_LAG_S + 0.05)
    del late.arrivals[10]
    run = analyse_run([on_time, late], 2.0, metrics, metrics, USAGE)
    assert run.late_frames == 59  # every frame of the late client that arrived
    assert run.missing_frames == 1 and run.frames == run.frames_expected - 1
    assert run.failures == ["client 1: received 59 distinct frames, 0 twice"]
    assert run.peak_rss_bytes == USAGE.rss_peak_bytes and run.usage == USAGE
    assert USAGE.server_cores == pytest.approx(1.5) and USAGE.machine_cores == pytest.approx(1.9)


def test_largest_real_time_counts_up_to_the_first_failure() -> None:
    assert largest_real_time([made_run(1, 0.1), made_run(4, 0.2), made_run(8, 0.4)]) == 4
    assert largest_real_time([made_run(1, 0.5)]) is None
    # A pass after a failure does not count: the stepping would have stopped.
    assert largest_real_time([made_run(1, 0.1), made_run(4, 0.4), made_run(8, 0.1)]) == 1


def test_speech_is_looped_to_length_and_chunked_at_20_ms() -> None:
    pcm = speech(samples=16_123)
    assert pcm.shape == (16_123,) and pcm.dtype.name == "int16" and abs(pcm).max() > 0
    chunks = pcm_chunks(pcm)
    assert [len(c) for c in chunks[:2]] == [640, 640]  # 320 s16 samples
    assert sum(len(c) for c in chunks) == 2 * 16_123 and len(chunks[-1]) == 2 * 123


def test_a_step_whose_clients_cannot_connect_breaks_real_time() -> None:
    run = failed_run(24, 20.0, "only 20 of 24 clients connected")
    keeps, why = run.real_time_verdict()
    assert not keeps and why.endswith("only 20 of 24 clients connected")
    assert largest_real_time([made_run(16, 0.1), run]) == 16
