"""docker-compose.yml and the Prometheus and Grafana files it mounts.

`docker-compose config` (Debian's docker-compose package) validates the file against the
Compose schema where it is installed; the other tests read the YAML directly and hold each
service to what the Dockerfile and the server actually provide.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.app import create_app
from server.settings import ServerSettings
from tests.deploy.conftest import (
    COMPOSE_FILE,
    DASHBOARD,
    GRAFANA_DATASOURCES,
    GRAFANA_PROVIDERS,
    PROMETHEUS_CONFIG,
    REPO,
    load_yaml,
)

SERVER_PORT = 8000
HEALTHCHECK = ["CMD", "python", "/usr/local/bin/pmmtalk-healthcheck"]


def services() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)["services"]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host source, for every short-syntax volume entry."""
    found = {}
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        found[target] = source
    return found


def compose_config(*args: str) -> dict[str, Any]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose; .ci/run)")
    result = subprocess.run(
        [binary, "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), *args, "config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    parsed = yaml.safe_load(result.stdout)
    assert isinstance(parsed, dict)
    return parsed


def test_compose_config_validates_the_file_and_the_gpu_profile() -> None:
    gpu = compose_config("--profile", "gpu")
    assert set(gpu["services"]) == {"server", "server-gpu", "prometheus", "grafana"}
    assert "profiles" not in gpu["services"]["server"]
    assert gpu["services"]["server-gpu"]["profiles"] == ["gpu"]
    devices = gpu["services"]["server-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_compose_config_rejects_a_bad_file(tmp_path: Path) -> None:
    # The validation above must be able to fail: a misspelt key is refused.
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE_FILE.read_text().replace("restart:", "restrat:", 1))
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose; .ci/run)")
    result = subprocess.run(
        [binary, "-f", str(bad), "config"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0
    assert "restrat" in result.stderr


def test_server_is_the_cpu_image_by_default() -> None:
    server = services()["server"]
    assert server["build"] == {"context": ".", "target": "cpu"}
    assert "profiles" not in server
    published, container = server["ports"][0].rsplit(":", 1)
    assert container == str(SERVER_PORT) and published.endswith("8000}")
    assert server["healthcheck"]["test"] == HEALTHCHECK
    assert server["restart"] == "unless-stopped"


def test_gpu_server_reserves_a_gpu_and_keeps_its_engines_in_a_volume() -> None:
    gpu = services()["server-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"] == {"context": ".", "target": "gpu"}
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    # The gpu image's PMMTALK_CACHE_DIR, where the engines are built (Dockerfile).
    volume = mounts(gpu)["/cache"]
    assert volume in load_yaml(COMPOSE_FILE)["volumes"]
    assert gpu["healthcheck"]["test"] == HEALTHCHECK
    assert gpu["restart"] == "unless-stopped"
    # Both servers can run at once: they publish different host ports.
    server_port = services()["server"]["ports"][0].rsplit(":", 1)[0]
    assert gpu["ports"][0].rsplit(":", 1)[0] != server_port


def test_prometheus_scrapes_the_servers_metrics_route() -> None:
    prometheus = services()["prometheus"]
    config_path = mounts(prometheus)["/etc/prometheus/prometheus.yml"]
    assert (REPO / config_path).resolve() == PROMETHEUS_CONFIG
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]

    config = load_yaml(PROMETHEUS_CONFIG)
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "pmmtalk"]
    assert job["metrics_path"] in create_app(ServerSettings()).openapi()["paths"]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == [f"server:{SERVER_PORT}", f"server-gpu:{SERVER_PORT}"]
    for target in targets:
        assert target.split(":")[0] in services()


def test_grafana_is_provisioned_with_the_datasource_and_dashboard() -> None:
    grafana = services()["grafana"]
    volumes = mounts(grafana)
    provisioning = (REPO / volumes["/etc/grafana/provisioning"]).resolve()
    assert provisioning == GRAFANA_PROVIDERS.parents[1]
    providers = load_yaml(GRAFANA_PROVIDERS)["providers"]
    dashboards_in = providers[0]["options"]["path"]
    assert (REPO / volumes[dashboards_in]).resolve() == DASHBOARD.parent
    environment = grafana["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == (
        f"{dashboards_in}/{DASHBOARD.name}"
    )

    (datasource,) = load_yaml(GRAFANA_DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus"
    host_port = datasource["url"].removeprefix("http://")
    assert host_port == "prometheus:9090" and "prometheus" in services()
