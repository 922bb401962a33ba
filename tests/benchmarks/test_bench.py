"""`pmmtalk bench`: its options, its verdicts on known figures, and one tiny real run through
the command line that writes every output (no speed is asserted: it depends on the machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmarks.backends import Timing
from benchmarks.bench import (
    BenchOptions,
    BenchResult,
    Row,
    markdown,
    report_json,
    run,
    summary,
    write_report,
)
from benchmarks.capacity import Capacity
from benchmarks.server import AnimateTiming, StartTiming
from pmmtalk.cli import app
from tests.benchmarks.conftest import made_run, soak_result

MACHINE = {"cpu": "Test CPU", "cores": 2, "commit": "abc1234", "date": "2026-11-23", "gpu": None}


def test_options_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="unknown or no parts"):
        BenchOptions(parts=("capacity", "warp"))
    with pytest.raises(ValueError, match="add the capacity part, or give --soak-clients"):
        BenchOptions(parts=("soak",))
    assert BenchOptions(parts=("soak",), soak_clients=3).soak_s == 600.0
    with pytest.raises(ValueError, match="client counts"):
        BenchOptions(ns=(0, 4))
    with pytest.raises(ValueError, match="step's audio"):
        BenchOptions(step_duration_s=0.1)
    with pytest.raises(ValueError, match="--sessions must be at least 1"):
        BenchOptions(sessions=0)


def test_defaults_fit_the_budget_and_quick_is_small() -> None:
    full, quick = BenchOptions(), BenchOptions(quick=True)
    assert full.planned_ns() == [1, 2, 4, 8, 12, 16, 20, 24, 28, 32]
    assert (full.step_s, full.n_sessions, full.soak_s) == (20.0, 1000, 600.0)
    assert full.parts == ("offline", "capacity", "sequential")  # the soak only on request
    assert quick.planned_ns() == [1, 2] and quick.n_sessions < 100 and quick.step_s <= 5


def test_the_report_quotes_the_command_that_asks_for_its_options(tmp_path: Path) -> None:
    assert BenchOptions().command_line() == "pmmtalk bench"
    options = BenchOptions(
        quick=True,
        parts=("capacity", "soak"),
        ns=(1, 2),
        step_duration_s=2.0,
        backend="torch",
        note="busy machine",
        out_dir=tmp_path,
    )
    assert options.command_line() == (
        "pmmtalk bench --quick --parts capacity,soak --ns 1,2 --step-duration-s 2 "
        f"--backend torch --note 'busy machine' --out {tmp_path}"
    )


def bench_result(runs: list[int], lags: list[float]) -> BenchResult:
    capacity = Capacity(
        [1, 2, 4, 8, 12, 16], [made_run(n, lag) for n, lag in zip(runs, lags, strict=True)], 20.0
    )
    return BenchResult(
        command="pmmtalk bench",
        machine=MACHINE,
        parts=["capacity", "sequential"],
        server_command="pmmtalk serve --port PORT",
        info={"backend": "onnx", "window": {"lookahead_s": 0.3, "hop_s": 0.4}},
        starts=[StartTiming("first start", 60.0), StartTiming("warm start", 1.5)],
        animate=AnimateTiming(10.0, 5, 0.21, 0.2, 200.0, 300),
        capacity=capacity,
        sequential=soak_result(104, 0, 0),
    )


def test_summary_judges_each_target_from_the_same_run() -> None:
    rows = summary(bench_result([1, 2, 4, 8, 12], [0.05, 0.1, 0.1, 0.2, 0.5]))
    by_figure = {row.figure: row for row in rows}
    assert by_figure["ready after start (warm export cache)"] == Row(
        "ready after start (warm export cache)", "1.5 s", "5 s", "met"
    )
    assert by_figure["`POST /animate`, 10 s WAV (wall, median of 5)"].verdict == "met"
    single = next(r for r in rows if r.figure.startswith("one stream"))
    assert (single.measured, single.target, single.verdict) == ("50 ms", "450 ms", "met")
    streams = next(r for r in rows if r.figure.startswith("real-time streams"))
    assert (streams.measured, streams.verdict) == ("**8**", "NOT met")
    memory = next(r for r in rows if r.figure.startswith("server memory"))
    assert memory.verdict == "not measured" and "at N = 12" in memory.measured
    soak = [r for r in rows if r.figure.startswith("sequential soak")]
    assert [r.verdict for r in soak] == ["met", "met", "met"]

    passing = summary(bench_result([1, 2, 4, 8, 12, 16], [0.05, 0.1, 0.1, 0.1, 0.1, 0.2]))
    streams = next(r for r in passing if r.figure.startswith("real-time streams"))
    assert (streams.measured, streams.verdict) == ("**at least 16 (the largest N tried)**", "met")
    memory = next(r for r in passing if r.figure.startswith("server memory"))
    assert (memory.measured, memory.verdict) == ("600 MB", "met")
    short = summary(bench_result([1, 2], [0.05, 0.1]))
    streams = next(r for r in short if r.figure.startswith("real-time streams"))
    assert streams.verdict == "not measured (N up to 2 only)"


def test_markdown_and_json_carry_every_step_and_verdict() -> None:
    result = bench_result([1, 2, 4], [0.05, 0.1, 0.4])
    text = markdown(result)
    assert "Written by `pmmtalk bench` on 2026-11-23, commit `abc1234`." in text
    assert "CPU: Test CPU, 2 cores; GPU: none" in text
    assert "| 1 | 600/600 | 0 | 0 | 25 / 50 / 50 |" in text
    assert "| 4 | 2400/2400 |" in text and "p95 lag 400 ms > 300 ms |" in text
    assert "1.00 / 0.10 / 2.00" in text  # CPU cores: server / clients / machine
    assert "Largest N that keeps real time: **2**" in text and "1 client(s)." in text
    assert "| sequential | 1 | 20 (20) |" in text and "| 10 sessions |" in text
    payload = report_json(result)
    json.dumps(payload)  # every figure serialises
    assert payload["capacity"]["largest_real_time_n"] == 2
    assert [r["keeps_real_time"] for r in payload["capacity"]["runs"]] == [True, True, False]
    assert payload["summary"][0]["figure"] == "ready after start (warm export cache)"


def test_the_report_files_and_plots_are_written(tmp_path: Path) -> None:
    result = bench_result([1, 2, 4], [0.05, 0.1, 0.4])
    result.offline = [
        Timing("lite", backend, "cpu", "clip", seconds, seconds * rtf, seconds * rtf, 5)
        for backend, rtf in (("torch", 0.03), ("onnx", 0.02))
        for seconds in (1.0, 10.0)
    ]
    written = write_report(result, tmp_path)
    assert sorted(p.name for p in written) == [
        "bench.json", "bench.md", "lag_vs_n.png", "offline_rtf.png", "soak_memory.png"
    ]  # fmt: skip
    text = (tmp_path / "bench.md").read_text()
    for name in ("lag_vs_n.png", "offline_rtf.png", "soak_memory.png"):
        assert f"]({name})" in text
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 400
    assert "| lite | onnx | cpu | 10 s | 0.2000 s | 0.0200 | 50.0 |" in text
    offline = next(r for r in summary(result) if r.figure.startswith("offline 10 s clip"))
    assert (offline.figure, offline.measured, offline.verdict) == (
        "offline 10 s clip, lite, fastest CPU backend (onnx)",
        "0.200 s",
        "NOT met",  # the target is under 0.2 s
    )


def test_backends_this_machine_lacks_are_listed_not_fatal(tmp_path: Path) -> None:
    options = BenchOptions(parts=("offline",), offline_backends=("tensorrt",), out_dir=tmp_path)
    result = run(options)
    assert result.offline == [] and result.capacity is None
    assert any(line.startswith("lite/tensorrt: ") for line in result.offline_skipped)
    assert any("paper preset: not run" in line for line in result.offline_skipped)
    assert "Not run here:" in (tmp_path / "bench.md").read_text()


def test_a_tiny_real_bench_writes_every_output(tmp_path: Path) -> None:
    """N = 1 and 2 for 2 s and 6 sequential sessions against a real `pmmtalk serve --backend
    torch` (no export needed), through the command line."""
    arguments = ["bench", "--quick", "--parts", "capacity,sequential", "--ns", "1,2"]
    arguments += ["--step-duration-s", "2", "--sessions", "6", "--backend", "torch"]
    outcome = CliRunner().invoke(app, [*arguments, "--out", str(tmp_path)])
    assert outcome.exit_code == 0, outcome.output
    assert "real-time clients:" in outcome.output
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["machine"]["cores"] and data["machine"]["commit"]
    assert data["info"]["backend"] == "torch"
    assert [s["label"] for s in data["starts"]] == ["first start"]
    assert data["animate"]["frame_count"] == 300  # 10 s at 30 fps
    steps = data["capacity"]["runs"]
    first = steps[0]
    assert first["n"] == 1
    assert first["frames"] == first["frames_expected"] == 60 and first["missing_frames"] == 0
    assert first["usage"]["server_cpu_s"] > 0 and first["peak_rss_bytes"] > 0
    assert first["backend_calls"] >= 1  # the server's own histograms moved during the step
    soak = data["sequential"]
    assert soak["sessions"] == 6 and soak["frames_lost"] == 0
    assert soak["sessions_open_end"] == 0 and soak["streams_completed"] == 6
    text = (tmp_path / "bench.md").read_text()
    assert "`pmmtalk bench --quick --parts capacity,sequential --ns 1,2" in text
    assert "| 1 | 60/60 | 0 |" in text and "| sequential | 1 | 6 (6) |" in text
    assert (tmp_path / "lag_vs_n.png").stat().st_size > 0
    assert (tmp_path / "soak_memory.png").stat().st_size > 0


def test_bad_options_exit_with_a_message() -> None:
    outcome = CliRunner().invoke(app, ["bench", "--ns", "1,x"])
    assert outcome.exit_code == 2 and "--ns takes whole numbers" in outcome.output
    outcome = CliRunner().invoke(app, ["bench", "--parts", "soak"])
    assert outcome.exit_code == 2 and "--soak-clients" in outcome.output
    outcome = CliRunner().invoke(app, ["bench", "--presets", "huge"])
    assert outcome.exit_code == 2 and "unknown preset" in outcome.output
