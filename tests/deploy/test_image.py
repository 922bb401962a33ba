"""deploy/docker/image.py: seeding the gpu image's cache volume, the engine build, then serving."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from export.cache import checkpoint_digest, export_dir_for
from pmmtalk.animate import DEFAULT_CHECKPOINT_DIR
from server.settings import ServerSettings
from tests.deploy.conftest import image_module


class ExecError(Exception):
    """Raised by the fake os.execvp so that start_gpu stops where the real one would."""


@pytest.fixture(scope="module")
def image() -> ModuleType:
    return image_module()


@pytest.fixture
def calls(image: ModuleType, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Record the engine build and the exec instead of running them; the build exits with
    ``calls["build_rc"]``."""
    recorded: dict[str, Any] = {"build": [], "exec": None, "build_rc": 0}

    def run(command: list[str], check: bool = False) -> subprocess.CompletedProcess[str]:
        recorded["build"].append(command)
        return subprocess.CompletedProcess(command, recorded["build_rc"])

    def execvp(file: str, args: list[str]) -> None:
        recorded["exec"] = (file, args)
        raise ExecError

    monkeypatch.setattr(image.subprocess, "run", run)
    monkeypatch.setattr(image.os, "execvp", execvp)
    return recorded


def baked_entry(baked: Path, settings: ServerSettings) -> Path:
    """A stand-in for the export baked into the image, under the name the server looks up."""
    name = export_dir_for(checkpoint_digest(DEFAULT_CHECKPOINT_DIR), settings.stream.window()).name
    entry = baked / "exports" / name
    entry.mkdir(parents=True)
    (entry / "manifest.json").write_text("{}")
    (entry / "stream_window.onnx").write_bytes(b"graph")
    return entry


def test_entry_is_where_the_server_looks(image: ModuleType, tmp_path: Path) -> None:
    settings = ServerSettings(model={"cache_dir": tmp_path})
    entry = image.entry_for(settings)
    digest = checkpoint_digest(DEFAULT_CHECKPOINT_DIR)
    # The server's window (1.0 s context, 0.4 s hop; StreamWindow()'s defaults).
    assert entry == tmp_path / "exports" / f"{digest[:16]}-ctx1s-hop0.4s-la0.4s"
    hop = ServerSettings(model={"cache_dir": tmp_path}, stream={"hop_s": 0.8})
    assert image.entry_for(hop).name.endswith("ctx1s-hop0.8s-la0.4s")


def test_engine_limits_cover_the_servers_longest_clip_and_batch(image: ModuleType) -> None:
    # 120 s of audio + 1.0 s context + 0.4 s lookahead = 121.4 s, and the server wants the
    # clip strictly below the engine's length.
    assert image.engine_limits(ServerSettings()) == (123, 8)
    small = ServerSettings(limits={"max_audio_s": 30}, batch={"max_batch_size": 16})
    assert image.engine_limits(small) == (33, 16)


def test_start_gpu_seeds_builds_then_serves(
    image: ModuleType, calls: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "volume"
    settings = ServerSettings(model={"cache_dir": cache})
    baked = baked_entry(tmp_path / "baked", settings)
    monkeypatch.setenv("PMMTALK_BAKED_CACHE", str(tmp_path / "baked"))

    with pytest.raises(ExecError):
        image.start_gpu(settings, ["--max-sessions", "4"])

    seeded = cache / "exports" / baked.name
    assert (seeded / "stream_window.onnx").read_bytes() == b"graph"
    assert calls["build"] == [
        [
            *("pmmtalk", "export", "tensorrt", "--export-dir", str(seeded)),
            *("--max-seconds", "123", "--max-batch", "8"),
        ]
    ]
    assert calls["exec"] == ("pmmtalk", ["pmmtalk", "serve", "--max-sessions", "4"])
    assert [p.name for p in (cache / "exports").iterdir()] == [baked.name]  # no partial left


def test_a_second_start_keeps_the_volumes_entry_and_its_engines(
    image: ModuleType, calls: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "volume"
    settings = ServerSettings(model={"cache_dir": cache})
    baked = baked_entry(tmp_path / "baked", settings)
    monkeypatch.setenv("PMMTALK_BAKED_CACHE", str(tmp_path / "baked"))
    engines = cache / "exports" / baked.name / "tensorrt"
    engines.mkdir(parents=True)
    (engines / "engines.json").write_text("built on the first start")
    (tmp_path / "baked" / "exports" / "0123456789abcdef-ctx1s-hop0.4s-la0.4s").mkdir()

    assert image.seed(tmp_path / "baked", cache) == ["0123456789abcdef-ctx1s-hop0.4s-la0.4s"]
    assert (engines / "engines.json").read_text() == "built on the first start"
    assert not (cache / "exports" / baked.name / "stream_window.onnx").exists()
    assert image.seed(tmp_path / "baked", cache) == []


def test_start_gpu_stops_when_the_engine_build_fails(
    image: ModuleType, calls: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ServerSettings(model={"cache_dir": tmp_path / "volume"})
    baked_entry(tmp_path / "baked", settings)
    monkeypatch.setenv("PMMTALK_BAKED_CACHE", str(tmp_path / "baked"))
    calls["build_rc"] = 1
    assert image.start_gpu(settings, []) == 1
    assert calls["exec"] is None


def test_start_gpu_explains_a_window_with_no_baked_export(
    image: ModuleType,
    calls: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    baked_entry(tmp_path / "baked", ServerSettings())  # the default window only
    monkeypatch.setenv("PMMTALK_BAKED_CACHE", str(tmp_path / "baked"))
    other = ServerSettings(model={"cache_dir": tmp_path / "volume"}, stream={"hop_s": 0.8})
    assert image.start_gpu(other, []) == 2
    assert calls["build"] == [] and calls["exec"] is None
    message = capsys.readouterr().err
    assert "ctx1s-hop0.8s-la0.4s" in message and "docs/deploy.md" in message


def test_export_takes_no_arguments(image: ModuleType) -> None:
    with pytest.raises(SystemExit) as exit_info:
        image.main(["export", "--hop-s", "0.8"])
    assert exit_info.value.code == 2
