"""GET / and /web/: the browser page and every file it loads, served by the app alone.

The app is driven without its lifespan (no model loads): the page needs no server state.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import ServerSettings

REPO = Path(__file__).resolve().parents[2]
WEB_DIR = REPO / "clients" / "web"

# index.html's src/href attributes, the modules' relative imports, and the worklet's URL.
HTML_ASSET = re.compile(r'(?:src|href)="(web/[^"]+)"')
JS_IMPORT = re.compile(r'from "\./([^"]+)"')
JS_URL = re.compile(r'new URL\("([^"]+\.js)", import\.meta\.url\)')


@pytest.fixture(scope="module")
def client() -> TestClient:
    # Keys on: the page itself must still load without one (the key is typed into it).
    return TestClient(create_app(ServerSettings(security={"api_keys": ("page-test-key",)})))


def test_page_is_served_at_root_without_a_key(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="web/app.js">' in response.text
    assert 'id="api-key"' in response.text


def test_every_asset_the_page_loads_is_served(client: TestClient) -> None:
    html = client.get("/").text
    wanted = {path.removeprefix("web/") for path in HTML_ASSET.findall(html)}
    pending = [name for name in wanted if name.endswith(".js")]
    while pending:  # follow the module graph from app.js
        source = client.get(f"/web/{pending.pop()}").text
        for name in JS_IMPORT.findall(source) + JS_URL.findall(source):
            if name not in wanted:
                wanted.add(name)
                pending.append(name)
    # The walk must reach the whole page, or it proves nothing.
    assert {"style.css", "app.js", "session.js", "face.js", "mic-worklet.js"} <= wanted
    for name in sorted(wanted):
        response = client.get(f"/web/{name}")
        assert response.status_code == 200, name
        kind = response.headers["content-type"]
        if name.endswith(".js"):  # browsers refuse a module served with another type
            assert "javascript" in kind, (name, kind)
        else:
            assert kind.startswith("text/css"), (name, kind)


def test_browsers_revalidate_the_page_files(client: TestClient) -> None:
    """Unversioned names: a cached copy must be checked (a cheap 304) so upgrades show up."""
    assert client.get("/").headers["cache-control"] == "no-cache"
    first = client.get("/web/app.js")
    assert first.headers["cache-control"] == "no-cache"
    again = client.get("/web/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304


def test_missing_assets_get_the_json_404(client: TestClient) -> None:
    # index.html is only at /; the encoded ".." climbs out of the assets folder to it.
    for path in ("/web/nothing.js", "/web/index.html", "/web/%2e%2e/index.html"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "bad_message"


def test_package_data_ships_every_page_file() -> None:
    """An installed server has only the files pyproject.toml lists as package data."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["clients"]
    files = [p.relative_to(REPO / "clients").as_posix() for p in WEB_DIR.rglob("*") if p.is_file()]
    assert "web/index.html" in files and "web/assets/app.js" in files
    unshipped = [f for f in files if not any(_glob_matches(f, p) for p in patterns)]
    assert unshipped == []


def _glob_matches(path: str, pattern: str) -> bool:
    """setuptools' glob: ``*`` stays within one folder."""
    parts, wanted = path.split("/"), pattern.split("/")
    return len(parts) == len(wanted) and all(map(fnmatch.fnmatchcase, parts, wanted))
