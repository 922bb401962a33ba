"""deploy/requirements: what the images install, and that serving needs nothing else (no torch).

Every requirement line must be one of pyproject.toml's own specs, so the two cannot drift. The
server is then run, as the cpu image runs it, in a process where every installed package outside
cpu.txt (and what those packages depend on) cannot be imported: PyTorch included.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import soundfile as sf
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from websockets.sync.client import connect

from models.checkpoint import save_checkpoint
from models.pmmtalk import PMMTalk
from tests.deploy.conftest import (
    HEALTHCHECK_SCRIPT,
    IMAGE_SCRIPT,
    REPO,
    REQUIREMENTS,
    image_module,
)

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
CORE = PYPROJECT["dependencies"]
GPU_EXTRA = PYPROJECT["optional-dependencies"]["gpu"]
PROJECT_DISTRIBUTION = "pmmtalk-server"
SAMPLE_WAV = REPO / "samples" / "hello.wav"
FACE_PHOTO = REPO / "pmmtalk" / "assets" / "default_face.png"
START_TIMEOUT_S = 120.0
# The tiny model's export for StreamWindow()'s window is the one tests/export makes too, in the
# same session cache: whichever runs first pays for it.
TINY_WINDOW_ENV = {"PMMTALK_STREAM__LEFT_CONTEXT_S": "1.5", "PMMTALK_STREAM__HOP_S": "0.2"}

BLOCKER = """
import importlib.abc, json, os, sys

BLOCKED = frozenset(json.loads(os.environ["PMMTALK_TEST_BLOCKED_MODULES"]))


class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is not installed in the image", name=name)
        return None


sys.meta_path.insert(0, NotInTheImage())
"""
BLOCKING_SERVE = (
    BLOCKER
    + """
from pmmtalk.cli import app

app(sys.argv[1:], prog_name="pmmtalk")
"""
)
BLOCKING_IMAGE_SCRIPT = (
    BLOCKER
    + """
import runpy

script = os.environ["PMMTALK_TEST_SCRIPT"]
sys.argv = [script, *sys.argv[1:]]
runpy.run_path(script, run_name="__main__")
"""
)


def requirement_lines(path: Path) -> list[str]:
    """The requirement specs of a requirements file, following `-r` includes."""
    specs = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            specs.extend(requirement_lines(path.parent / line[3:].strip()))
        elif line:
            specs.append(line)
    return specs


def installed_closure(specs: list[str]) -> set[str]:
    """Canonical names of the installed distributions these specs pull in, transitively."""
    todo = [Requirement(spec) for spec in specs]
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here, so nothing can import it here either
        names.add(name)
        for text in distribution.requires or []:
            child = Requirement(text)
            extras = {"", *requirement.extras}
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                todo.append(child)
    return names


def blocked_modules(allowed: set[str]) -> set[str]:
    """Top-level modules that only distributions outside ``allowed`` provide."""
    blocked = set()
    for module, distributions in importlib.metadata.packages_distributions().items():
        if module in sys.stdlib_module_names:
            continue
        if not any(canonicalize_name(d) in allowed for d in distributions):
            blocked.add(module)
    return blocked


@pytest.mark.parametrize("name", ["serve.txt", "cpu.txt", "gpu.txt"])
def test_every_line_is_a_pyproject_spec(name: str) -> None:
    specs = requirement_lines(REQUIREMENTS / name)
    assert specs
    for spec in specs:
        assert spec in CORE or spec in GPU_EXTRA, f"{name}: {spec!r} is not in pyproject.toml"


def test_the_images_runtimes() -> None:
    cpu = requirement_lines(REQUIREMENTS / "cpu.txt")
    gpu = requirement_lines(REQUIREMENTS / "gpu.txt")
    serve = requirement_lines(REQUIREMENTS / "serve.txt")
    assert not any(Requirement(s).name.startswith("onnxruntime") for s in serve)
    assert set(cpu) - set(serve) == {next(s for s in CORE if s.startswith("onnxruntime"))}
    # onnxruntime and onnxruntime-gpu both install the module `onnxruntime`: only one may go in.
    assert set(gpu) - set(serve) == set(GPU_EXTRA)
    for specs in (cpu, gpu):
        assert "torch" not in {Requirement(s).name for s in specs}


def test_the_blocker_would_catch_torch() -> None:
    allowed = installed_closure(requirement_lines(REQUIREMENTS / "cpu.txt"))
    blocked = blocked_modules(allowed | {PROJECT_DISTRIBUTION})
    assert {"torch", "transformers", "librosa", "matplotlib"} <= blocked
    assert not {"onnxruntime", "fastapi", "cv2", "numpy", "server"} & blocked


def blocked_env() -> dict[str, str]:
    """The environment that keeps a child process from importing what cpu.txt does not pull in."""
    allowed = installed_closure(requirement_lines(REQUIREMENTS / "cpu.txt"))
    blocked = sorted(blocked_modules(allowed | {PROJECT_DISTRIBUTION}))
    return {**os.environ, "PMMTALK_TEST_BLOCKED_MODULES": json.dumps(blocked)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TorchFreeServer:
    http: str
    port: int
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def torch_free_server(
    tiny_model: PMMTalk, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TorchFreeServer]:
    """`pmmtalk serve` on ONNX Runtime from a warm export cache, unable to import anything the
    cpu image does not install. The export is made, as the image's export stage makes it, by
    `pmmtalk-image export`."""
    checkpoint = save_checkpoint(tiny_model, tmp_path_factory.mktemp("tiny-checkpoint"))
    env = {**os.environ, **TINY_WINDOW_ENV, "PMMTALK_MODEL__CHECKPOINT": str(checkpoint)}
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    try:
        assert image_module().main(["export"]) == 0
    finally:
        patch.undo()
    env = {**blocked_env(), **env}
    port = free_port()
    log = tmp_path_factory.mktemp("torch-free") / "serve.log"
    command = [sys.executable, "-c", BLOCKING_SERVE, "serve", "--backend", "onnx"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*command, "--port", str(port)], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    server = TorchFreeServer(f"http://127.0.0.1:{port}", port, process)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited ({process.returncode}):\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.http}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_serves_every_route_without_torch(torch_free_server: TorchFreeServer) -> None:
    http = torch_free_server.http
    info = httpx.get(f"{http}/info", timeout=10).json()
    assert info["backend"] == "onnx"
    assert info["window"]["hop_s"] == 0.2

    samples, rate = sf.read(SAMPLE_WAV, dtype="int16")
    expected_frames = math.ceil(len(samples) * 30 / rate)
    with SAMPLE_WAV.open("rb") as audio:
        animated = httpx.post(f"{http}/animate", files={"audio": audio}, timeout=60)
    assert animated.status_code == 200, animated.text
    assert len(animated.json()["frames"]) == expected_frames

    with FACE_PHOTO.open("rb") as photo:
        face = httpx.post(f"{http}/faces", files={"face": photo}, timeout=60)
    assert face.status_code == 200, face.text

    frames = 0
    with connect(f"ws://127.0.0.1:{torch_free_server.port}/stream", open_timeout=10) as ws:
        start = {"type": "start", "sample_rate": rate, "face_id": face.json()["face_id"]}
        ws.send(json.dumps(start))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(samples.tobytes())
        ws.send(json.dumps({"type": "end"}))
        while (message := json.loads(ws.recv(timeout=60)))["type"] != "done":
            assert message["type"] == "frames", message
            frames += len(message["frames"])
    assert frames == expected_frames

    assert "pmmtalk_frame_lag_seconds_count" in httpx.get(f"{http}/metrics", timeout=10).text


def test_health_check_script(torch_free_server: TorchFreeServer) -> None:
    def check(port: int) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PMMTALK_PORT": str(port)}
        return subprocess.run(
            [sys.executable, str(HEALTHCHECK_SCRIPT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    healthy = check(torch_free_server.port)
    assert healthy.returncode == 0, healthy.stderr
    nobody = check(free_port())
    assert nobody.returncode == 1
    assert nobody.stderr.startswith("unhealthy: http://127.0.0.1:")


def test_gpu_start_script_runs_without_torch(tmp_path: Path) -> None:
    # The gpu image has no PyTorch either. With nothing baked in, the script must get as far as
    # looking up the server's export (checkpoint digest, cache path) and explain what is missing.
    env = {
        **blocked_env(),
        "PMMTALK_TEST_SCRIPT": str(IMAGE_SCRIPT),
        "PMMTALK_BAKED_CACHE": str(tmp_path / "baked"),
        "PMMTALK_CACHE_DIR": str(tmp_path / "volume"),
    }
    result = subprocess.run(
        [sys.executable, "-c", BLOCKING_IMAGE_SCRIPT, "start-gpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "no export of the model for this stream window" in result.stderr
    assert "ctx1s-hop0.4s-la0.4s" in result.stderr
