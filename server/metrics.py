"""Prometheus metrics, in a registry of the app's own (two apps in one process never mix)."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S: Final = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5)
BATCH_BUCKETS: Final = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


class ServerMetrics:
    """Everything ``GET /metrics`` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pmmtalk_requests",
            "HTTP requests by endpoint and outcome",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.streams = Counter(
            "pmmtalk_streams", "WebSocket streams ended, by outcome", ["outcome"], registry=r
        )
        self.errors = Counter(
            "pmmtalk_errors", "Errors answered, by protocol error code", ["code"], registry=r
        )
        self.compute_seconds = Histogram(
            "pmmtalk_compute_seconds",
            "Wall time of one backend call",
            ["kind"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.frame_lag_seconds = Histogram(
            "pmmtalk_frame_lag_seconds",
            "From the arrival of the last audio a frame's window needs to the frame being sent",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "pmmtalk_batch_size",
            "Stream windows per backend call",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.real_time_factor = Gauge(
            "pmmtalk_real_time_factor",
            "Compute seconds per second of audio answered, over the last backend call "
            "(below 1 = faster than real time)",
            ["kind"],
            registry=r,
        )
        self.active_sessions = Gauge(
            "pmmtalk_active_sessions", "Open WebSocket sessions", registry=r
        )
        self.queue_depth = Gauge(
            "pmmtalk_queue_depth", "Stream windows waiting for a backend call", registry=r
        )
        self.audio_seconds = Counter(
            "pmmtalk_audio_seconds", "Seconds of audio answered", ["kind"], registry=r
        )
