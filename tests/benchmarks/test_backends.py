"""The benchmark's report: the targets are judged from the figures of the same run."""

from __future__ import annotations

from benchmarks.backends import Timing, interleaved_times, markdown, targets

INFO = {
    "date": "2026-11-21",
    "commit": "abc1234",
    "cpu": "Test CPU",
    "cores": 2,
    "gpu": None,
    "python": "3.11",
    "torch": "2.13.0",
    "onnxruntime": "1.31.1",
}
WINDOW = {"window_samples": 32_000, "left_context_s": 1.5, "hop_s": 0.2, "lookahead_s": 0.3}


def clip(backend: str, seconds: float, median_s: float, device: str = "cpu") -> Timing:
    return Timing("lite", backend, device, "clip", seconds, median_s, median_s, 5)


def test_targets_met_and_missed() -> None:
    met = targets([clip("torch", 10.0, 0.45), clip("onnx", 10.0, 0.15)])
    assert met == [
        "- ONNX Runtime vs PyTorch eager, 10 s clip: 3.00x faster (target 1.5x): met.",
        "- A 10 s clip in 0.150 s on onnx (target under 0.2 s): met.",
    ]
    missed = targets([clip("torch", 10.0, 0.30), clip("onnx", 10.0, 0.25)])
    assert "1.20x faster (target 1.5x): NOT met." in missed[0]
    assert "0.250 s on onnx (target under 0.2 s): NOT met." in missed[1]


def test_gpu_figures_do_not_count_for_the_cpu_targets() -> None:
    lines = targets([clip("torch", 10.0, 0.01, device="cuda:0"), clip("onnx", 10.0, 0.15)])
    assert lines == ["- A 10 s clip in 0.150 s on onnx (target under 0.2 s): met."]
    assert targets([]) == ["- The lite preset's 10 s clip was not timed on both CPU backends."]


def test_every_clip_length_gets_its_own_verdict() -> None:
    lines = targets([clip("torch", 1.0, 0.04), clip("onnx", 1.0, 0.02), clip("torch", 10.0, 0.3)])
    assert lines[0] == "- ONNX Runtime vs PyTorch eager, 1 s clip: 2.00x faster (target 1.5x): met."
    assert len(lines) == 2  # 10 s ran on torch only: no ratio, but the time verdict
    assert "0.300 s on torch" in lines[1] and "NOT met" in lines[1]


def test_report_tables_carry_every_timing() -> None:
    stream = Timing("lite", "onnx", "cpu", "stream", 4, 0.2, 0.19, 7)
    report = markdown([clip("onnx", 1.0, 0.02), stream], INFO, WINDOW)
    assert "| lite | onnx | cpu | 1 s | 0.0200 s | 0.0200 | 50.0 |" in report
    # 4 windows of 0.2 s hop per 0.2 s call: 4 streams kept in real time.
    assert "| lite | onnx | cpu | 4 | 0.2000 s | 0.0500 s | 4.0 |" in report
    assert "commit `abc1234`" in report


def test_interleaved_times_take_turns_and_rotate_the_starting_run() -> None:
    calls: list[str] = []
    runs = [lambda: calls.append("a"), lambda: calls.append("b"), lambda: calls.append("c")]
    figures = interleaved_times(runs, 3)
    warm_up, rounds = calls[:3], calls[3:]
    assert warm_up == ["a", "b", "c"]
    assert rounds == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert len(figures) == 3
    assert all(0 <= least <= median for median, least in figures)
