"""Shared helpers for the deployment files' tests: paths, and the image helper script as a module.

No Docker engine runs where these tests run, so they check the files themselves: the Dockerfile
with hadolint, the compose file with `docker-compose config`, and everything the images run
(requirements, scripts, the dashboard's queries) against the project itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
DEPLOY = REPO / "deploy"
REQUIREMENTS = DEPLOY / "requirements"
IMAGE_SCRIPT = DEPLOY / "docker" / "image.py"
HEALTHCHECK_SCRIPT = DEPLOY / "docker" / "healthcheck.py"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "pmmtalk.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "pmmtalk.json"


def load_yaml(path: Path) -> dict:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path} is not a YAML mapping"
    return loaded


def image_module() -> ModuleType:
    """deploy/docker/image.py, imported under a name of its own (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("pmmtalk_image_script", IMAGE_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
