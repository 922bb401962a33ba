"""The provisioned Grafana dashboard: a well-formed dashboard whose every query names series and
labels that a real server's /metrics serves."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from tests.deploy.conftest import DASHBOARD, GRAFANA_DATASOURCES, load_yaml
from tests.server.conftest import RunningServer, serve

METRIC = re.compile(r"\bpmmtalk_[a-z_]+\b")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
SELECTOR_LABEL = re.compile(r"([a-z_]+)\s*=~?")
PROMETHEUS_LABELS = {"le", "instance", "job"}  # le: histogram buckets; the rest: scrape targets
PROMETHEUS_SERIES = {"up"}
METRICS_TIMEOUT_S = 30.0
# What the issue asks the dashboard to show, as the series that show it.
REQUIRED_SERIES = {
    "frame lag": "pmmtalk_frame_lag_seconds_bucket",
    "compute latency": "pmmtalk_compute_seconds_bucket",
    "active streams": "pmmtalk_active_sessions",
    "real-time factor": "pmmtalk_audio_seconds_total",
    "errors": "pmmtalk_errors_total",
}


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def panels() -> list[dict[str, Any]]:
    return list(dashboard()["panels"])


def expressions() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def provisioned_uid() -> str:
    (datasource,) = load_yaml(GRAFANA_DATASOURCES)["datasources"]
    return str(datasource["uid"])


def series_labels(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, from Prometheus' text format."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def exercise(server: RunningServer) -> None:
    """Traffic that makes every labelled series appear: a stream, a good and a bad upload."""
    rate = 16_000
    tone = (np.sin(np.arange(rate) * 2 * np.pi * 220 / rate) * 8000).astype(np.int16)
    with connect(server.ws, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": rate}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(tone.tobytes())
        ws.send(json.dumps({"type": "end"}))
        while json.loads(ws.recv(timeout=60))["type"] != "done":
            pass
    bad = httpx.post(f"{server.http}/animate", files={"audio": b"not audio"}, timeout=30)
    assert bad.status_code == 400, bad.text


@pytest.fixture(scope="module")
def served_series() -> Iterator[dict[str, set[str]]]:
    with serve() as server:
        exercise(server)
        # A stream is counted when its session has been cleaned up, just after the close.
        deadline = time.monotonic() + METRICS_TIMEOUT_S
        while True:
            series = series_labels(httpx.get(f"{server.http}/metrics", timeout=10).text)
            if "pmmtalk_streams_total" in series or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        yield series


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] == "PMMTalk Server"
    assert isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels():
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["targets"], f"{panel['title']}: no queries"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"])


def test_every_query_uses_the_provisioned_datasource() -> None:
    uid = provisioned_uid()
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
    for variable in dashboard()["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    named = {name for expr in expressions() for name in METRIC.findall(expr)}
    for what, series in REQUIRED_SERIES.items():
        assert series in named, f"no panel shows the {what} ({series})"


def test_every_series_and_label_queried_is_served(served_series: dict[str, set[str]]) -> None:
    for expr in expressions():
        names = METRIC.findall(expr)
        for name in names:
            assert name in served_series, f"{name} is not in /metrics (query: {expr})"
        labels = set().union(*(served_series[name] for name in names)) | PROMETHEUS_LABELS
        grouped = {
            label.strip()
            for group in GROUPING.findall(expr)
            for label in group.split(",")
            if label.strip()
        }
        selected = set(SELECTOR_LABEL.findall(expr))
        assert grouped | selected <= labels, f"unknown label in {expr}"
        bare = set(re.findall(r"\b([a-z_]+)\{", expr)) - set(names)
        assert bare <= PROMETHEUS_SERIES, f"{bare} in {expr}"


def test_the_label_check_can_fail(served_series: dict[str, set[str]]) -> None:
    # `code` is a label of the errors counter, not of the frame lag histogram.
    assert "code" in served_series["pmmtalk_errors_total"]
    assert "code" not in served_series["pmmtalk_frame_lag_seconds_bucket"]
    assert "pmmtalk_frame_lag_seconds" not in served_series  # a histogram serves _bucket etc.
