"""The benchmark's PNG plots (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from benchmarks.backends import Timing
    from benchmarks.soak import SoakResult
    from benchmarks.streams import StreamRun

from benchmarks.soak import TARGET_RSS_GROWTH
from benchmarks.streams import REAL_TIME_P95_LAG_S

DPI: Final = 110


def _figure(rows: int, columns: int, size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: a benchmark machine has no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False)
    return figure, [axis for row in axes for axis in row]


def _save(figure: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # No software stamp in the metadata: re-running on the same figures gives the same file.
    figure.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(figure)
    return path


def _ms(value: float | None) -> float:
    return float("nan") if value is None else value * 1000


def lag_against_n(runs: Sequence[StreamRun], path: Path, title: str) -> Path:
    """Client frame lag p50/p95/p99 against N (log scale, with the real-time bound), and the
    server's compute per call and CPU use against N."""
    figure, (lag_axis, load_axis) = _figure(1, 2, (11.0, 4.2))
    ns = [run.n for run in runs]
    for name, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^--")):
        lag_axis.plot(ns, [_ms(getattr(r.client_lag, name)) for r in runs], style, label=name)
    lag_axis.axhline(
        REAL_TIME_P95_LAG_S * 1000,
        color="grey",
        linestyle=":",
        label=f"real-time bound on p95 ({REAL_TIME_P95_LAG_S * 1000:.0f} ms)",
    )
    for run in runs:
        if not run.keeps_real_time:
            lag_axis.axvspan(run.n - 0.5, run.n + 0.5, color="red", alpha=0.12)
    lag_axis.set_yscale("log")
    lag_axis.set_xlabel("simulated real-time clients N")
    lag_axis.set_ylabel("client frame lag (ms)")
    lag_axis.set_title("frame lag (red: real time broken)")
    lag_axis.set_xticks(ns)
    lag_axis.legend(fontsize=8)

    load_axis.plot(ns, [_ms(r.server_compute.p50) for r in runs], "o-", label="compute p50")
    load_axis.plot(ns, [_ms(r.server_compute.p95) for r in runs], "s-", label="compute p95")
    load_axis.set_xlabel("simulated real-time clients N")
    load_axis.set_ylabel("one batched backend call (ms)")
    load_axis.set_xticks(ns)
    cores = load_axis.twinx()
    server_cores = [
        float("nan") if r.usage is None or r.usage.server_cores is None else r.usage.server_cores
        for r in runs
    ]
    machine_cores = [
        float("nan") if r.usage is None or r.usage.machine_cores is None else r.usage.machine_cores
        for r in runs
    ]
    cores.plot(ns, server_cores, "d:", color="black", label="server CPU (cores)")
    # The whole machine's use shows when other load, not the server, took the cores.
    cores.plot(ns, machine_cores, "x:", color="grey", label="machine CPU (cores)")
    cores.set_ylabel("CPU (cores busy)")
    cores.set_ylim(bottom=0)
    handles = load_axis.get_legend_handles_labels()
    extra = cores.get_legend_handles_labels()
    load_axis.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="upper left")
    load_axis.set_title("server load")
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def offline_rtf(timings: Sequence[Timing], path: Path, title: str) -> Path:
    """Real-time factor (compute / audio seconds) per backend and clip length, grouped bars."""
    clips = [t for t in timings if t.case == "clip"]
    lengths = sorted({t.size for t in clips})
    series = sorted({(t.preset, t.backend, t.device) for t in clips})
    figure, (axis,) = _figure(1, 1, (7.5, 4.0))
    width = 0.8 / max(1, len(series))
    for j, (preset, backend, device) in enumerate(series):
        values = []
        for seconds in lengths:
            cell = next(
                (
                    t
                    for t in clips
                    if (t.preset, t.backend, t.device, t.size) == (preset, backend, device, seconds)
                ),
                None,
            )
            values.append(cell.median_s / cell.size if cell else float("nan"))
        axis.bar(
            [i + (j - (len(series) - 1) / 2) * width for i in range(len(lengths))],
            values,
            width,
            label=f"{preset} {backend} ({device})",
        )
    axis.axhline(1.0, color="grey", linestyle=":", label="real time")
    axis.set_yscale("log")
    axis.set_xticks(range(len(lengths)), [f"{s:g} s" for s in lengths])
    axis.set_xlabel("clip length")
    axis.set_ylabel("real-time factor (lower is faster)")
    axis.legend(fontsize=8)
    axis.set_title(title, fontsize=10)
    return _save(figure, path)


def soak_memory(results: Sequence[SoakResult], path: Path, title: str) -> Path:
    """The server's resident memory through each soak run, the warm-up marked."""
    figure, axes = _figure(1, len(results), (5.5 * len(results), 3.8))
    for axis, result in zip(axes, results, strict=True):
        when = [x for x, _ in result.rss_samples]
        axis.plot(when, [rss / 1e6 for _, rss in result.rss_samples], "o-", markersize=3)
        axis.axvline(result.warmup, color="grey", linestyle=":", label="end of warm-up")
        if result.growth is not None:
            limit = result.growth.baseline_bytes * (1 + TARGET_RSS_GROWTH) / 1e6
            axis.axhline(limit, color="red", linestyle="--", label="target: +5 % after warm-up")
        values = [rss / 1e6 for _, rss in result.rss_samples] or [0.0]
        # Whole megabytes and a range of +-10 %: allocator noise of a few kB is not a trend.
        axis.set_ylim(min(values) * 0.9, max(values) * 1.1)
        axis.ticklabel_format(axis="y", useOffset=False, style="plain")
        axis.set_xlabel("sessions done" if result.kind == "sequential" else "seconds")
        axis.set_ylabel("server resident memory (MB)")
        growth = "-" if result.growth is None else f"{result.growth.growth * 100:+.1f} %"
        axis.set_title(f"{result.kind}: {result.sessions} sessions, growth {growth}", fontsize=9)
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)
