"""The server benchmark script: its targets and report, and one tiny real run (no speed is
asserted: the figures depend on the machine)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.server import AnimateTiming, Report, StartTiming, main, markdown, targets
from benchmarks.streams import StreamRun
from tests.benchmarks.conftest import made_run


def report(runs: list[StreamRun], ready_s: float = 3.0, animate_s: float = 0.2) -> Report:
    return Report(
        command="python -m benchmarks.server",
        server_command="pmmtalk serve --port PORT",
        machine={"date": "2026-11-22", "commit": "abc1234", "cpu": "Test CPU", "cores": 2},
        info={"backend": "onnx", "window": {"lookahead_s": 0.3, "hop_s": 0.4}},
        starts=[StartTiming("first start", 20.0), StartTiming("warm start", ready_s)],
        animate=AnimateTiming(10.0, 5, animate_s, animate_s, animate_s * 800, 300),
        runs=runs,
    )


def test_targets_are_judged_from_the_same_run() -> None:
    runs = [made_run(1, 0.2), made_run(16, 0.25, rss=900_000_000), made_run(20, 0.5)]
    lines = targets(report(runs))
    assert lines == [
        "- Concurrent real-time streams: 16 (target at least 16 with p95 frame lag at most "
        "300 ms): met.",
        "- One stream's p95 frame lag: 200 ms client-observed, 200 ms server-side (target at "
        "most 150 ms + the 0.3 s lookahead = 450 ms): met.",
        "- POST /animate of a 10 s WAV: 0.200 s wall (160 ms compute) (target under 0.3 s): met.",
        "- Ready 3.0 s after start (warm start) (target within 5 s): met.",
        "- Server resident memory with 16 streams: peak 900 MB (target under 1 GB): met.",
    ]
    missed = targets(report([made_run(1, 0.5), made_run(16, 0.2, rss=1_200_000_000)], 7.5, 0.4))
    assert all(line.endswith("NOT met.") for line in missed)
    short = targets(report([made_run(1, 0.1), made_run(2, 0.1)]))
    assert short[0].endswith("not measured (N up to 2 only).")
    stopped = targets(report([made_run(1, 0.1), made_run(2, 0.4)]))
    assert stopped[0].startswith("- Concurrent real-time streams: 1 ") and "NOT met" in stopped[0]
    assert short[-1] == "- Server resident memory with 16 streams: not measured."


def test_report_carries_every_run_and_the_command() -> None:
    text = markdown(report([made_run(1, 0.1), made_run(4, 0.4)]))
    assert "`python -m benchmarks.server`" in text and "`pmmtalk serve --port PORT`" in text
    assert "| 1 | 600/600 | 50 / 100 / 100 |" in text
    assert "| 4 | 2400/2400 |" in text and "p95 lag 400 ms > 300 ms |" in text
    assert "Largest N that keeps real time: **1**." in text
    assert "| warm start | 3.00 s |" in text


def test_a_tiny_real_run_writes_a_complete_report(tmp_path: Path) -> None:
    """One client for 2 s against a real `pmmtalk serve` (torch: no export needed)."""
    argv = ["--quick", "--ns", "1", "--duration-s", "2", "--animate-repeats", "1"]
    assert main([*argv, "--backend", "torch", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "server.json").read_text())
    assert data["info"]["backend"] == "torch"
    assert [s["label"] for s in data["starts"]] == ["first start"]
    assert data["starts"][0]["ready_s"] > 0
    assert data["animate"]["frame_count"] == 300  # 10 s at 30 fps
    (run,) = data["runs"]
    assert run["n"] == 1 and run["failures"] == []
    assert run["frames"] == run["frames_expected"] == 60  # ceil(2 s x 30 fps), every one
    # The server's own histograms moved during the run: its frame lag and backend calls.
    assert run["server_lag"]["p50"] is not None and run["backend_calls"] >= 1
    assert run["client_lag"]["p95"] is not None and not math.isnan(run["client_lag"]["p95"])
    assert run["peak_rss_bytes"] > 0
    text = (tmp_path / "server.md").read_text()
    assert "| 1 | 60/60 |" in text and "--backend torch" in text
