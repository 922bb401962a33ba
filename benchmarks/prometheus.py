"""Reading the server's ``GET /metrics`` text: histograms, their quantiles, single samples.

A benchmark reads ``/metrics`` before and after a run and takes the difference, so the figures
cover that run alone. Quantiles are interpolated within buckets as Prometheus's
``histogram_quantile`` does, so they match what a dashboard would show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np


@dataclass(frozen=True)
class Quantiles:
    """p50, p95 and p99 in seconds (None where nothing was observed)."""

    p50: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> Quantiles:
        data = np.asarray(values, dtype=np.float64)
        if data.size == 0:
            return cls(None, None, None)
        p50, p95, p99 = np.percentile(data, [50, 95, 99])
        return cls(float(p50), float(p95), float(p99))

    @classmethod
    def of_histogram(cls, histogram: Histogram) -> Quantiles:
        return cls(*(histogram.quantile(q) for q in (0.50, 0.95, 0.99)))


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram: cumulative counts per upper bound (the last bound is +Inf)."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    total: float  # the histogram's _sum

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations made since ``earlier`` (same buckets)."""
        before = dict(earlier.buckets)
        return Histogram(
            tuple((bound, count - before.get(bound, 0.0)) for bound, count in self.buckets),
            self.count - earlier.count,
            self.total - earlier.total,
        )

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def bucket_bound(self, q: float) -> float | None:
        """The upper bound of the bucket holding rank ``q * count``: for whole-number values
        such as batch sizes, where interpolating within a bucket means nothing."""
        if not self.buckets or self.count <= 0:
            return None
        rank = q * self.buckets[-1][1]
        return next(bound for bound, count in self.buckets if count >= rank)

    def quantile(self, q: float) -> float | None:
        """Linear interpolation within the bucket holding rank ``q * count``, as Prometheus's
        ``histogram_quantile``: the first bucket starts at 0; a rank in the +Inf bucket gives
        the highest finite bound. None when the histogram is empty."""
        if not self.buckets or self.count <= 0:
            return None
        rank = q * self.buckets[-1][1]
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in self.buckets:
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound
                if count == lower_count:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                    count - lower_count
                )
            lower_bound, lower_count = bound, count
        return lower_bound


EMPTY_HISTOGRAM: Final = Histogram((), 0.0, 0.0)


def read_histogram(metrics_text: str, name: str, **labels: str) -> Histogram:
    """One histogram from a Prometheus text exposition (``GET /metrics``); the series whose
    labels include ``labels``. An absent series reads as empty."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = {}
    count = total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != name:
            continue
        for sample in family.samples:
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            if sample.name == f"{name}_bucket":
                buckets[float(sample.labels["le"])] = float(sample.value)
            elif sample.name == f"{name}_count":
                count = float(sample.value)
            elif sample.name == f"{name}_sum":
                total = float(sample.value)
    return Histogram(tuple(sorted(buckets.items())), count, total)


def read_value(metrics_text: str, name: str, **labels: str) -> float | None:
    """A gauge's value or a counter's total (``name`` without the ``_total`` suffix), summed
    over the series whose labels include ``labels``; None when no series matches."""
    from prometheus_client.parser import text_string_to_metric_families

    found: float | None = None
    for family in text_string_to_metric_families(metrics_text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name not in (name, f"{name}_total"):
                continue  # a counter's _created timestamp
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            found = (found or 0.0) + float(sample.value)
    return found
