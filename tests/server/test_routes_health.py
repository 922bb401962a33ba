"""GET /healthz, /readyz, /metrics and /info on a running server."""

from __future__ import annotations

import httpx

from tests.server.conftest import RunningServer


def test_health_and_readiness(server: RunningServer) -> None:
    assert httpx.get(f"{server.http}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.http}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_info_describes_model_window_and_limits(server: RunningServer) -> None:
    info = httpx.get(f"{server.http}/info").json()
    assert info["fps"] == 30
    assert len(info["names"]) == 32 and info["names"][3] == "jawOpen"
    assert info["backend"] == "torch"
    window = server.settings.stream.window()
    assert info["window"]["hop_frames"] == window.hop_frames
    assert info["limits"]["max_sessions"] == server.settings.limits.max_sessions


def test_metrics_are_prometheus_text(server: RunningServer) -> None:
    response = httpx.get(f"{server.http}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "pmmtalk_compute_seconds",
        "pmmtalk_frame_lag_seconds",
        "pmmtalk_batch_size",
        "pmmtalk_active_sessions",
        "pmmtalk_queue_depth",
    ):
        assert f"# TYPE {name}" in text
