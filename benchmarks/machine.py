"""What a benchmark ran on: CPU, cores, memory, GPU, library versions and the git commit.

Every report carries this stamp, so a figure is never read without the machine it came from.
Nothing here imports PyTorch: versions come from the installed distributions' metadata and the
GPU from ``nvidia-smi``, so stamping costs milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import psutil

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
VERSIONED_DISTRIBUTIONS: Final = ("torch", "onnxruntime", "numpy", "fastapi", "uvicorn")
NVIDIA_SMI_TIMEOUT_S: Final = 10.0
GIT_TIMEOUT_S: Final = 10.0


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    """One line per NVIDIA GPU ("name, memory, driver"), from nvidia-smi; empty without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []  # a driver that does not answer is as good as no GPU for a benchmark
    return [line.strip() for line in out.splitlines() if line.strip()]


def git_commit(cwd: Path = REPO_ROOT) -> str:
    """The short commit hash, with ``-dirty`` when tracked files differ from it; "unknown"
    outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            check=True,
            cwd=cwd,
            timeout=GIT_TIMEOUT_S,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries the figures depend on (None: not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict[str, Any]:
    """The stamp: cpu, cores, memory_bytes, gpu (first GPU or None), gpus, commit, date,
    loadavg (1, 5 and 15 minute load averages at stamping time), and the library versions."""
    found = gpus()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "gpu": found[0] if found else None,
        "gpus": found,
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "loadavg": None,
    }
    with contextlib.suppress(OSError):
        info["loadavg"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info.update(versions())
    return info


def describe(info: dict[str, Any]) -> str:
    """One Markdown line naming the machine: CPU, cores, memory, GPU."""
    memory = info.get("memory_bytes")
    size = f", {memory / 2**30:.0f} GiB memory" if memory else ""
    return (
        f"CPU: {info.get('cpu')}, {info.get('cores')} cores{size}; GPU: {info.get('gpu') or 'none'}"
    )
