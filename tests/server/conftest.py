"""A real uvicorn server on a free loopback port, serving the bundled default model.

The model runs on the torch backend (it loads in about a second and needs no export); the ONNX
path is covered by tests/export. `serve` starts a server with any settings in a thread and
stops it on exit, so a test can ask for limits, keys or windows of its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from export.backends.torch_backend import TorchBackend
from pmmtalk.animate import DEFAULT_CHECKPOINT_DIR, Animator
from server.app import create_app
from server.run import GracefulServer, uvicorn_config
from server.settings import ServerSettings

START_TIMEOUT_S = 60.0
SAMPLE_WAV = Path(__file__).resolve().parents[2] / "samples" / "hello.wav"


def torch_animator(settings: ServerSettings) -> Animator:
    backend = TorchBackend.from_checkpoint(
        DEFAULT_CHECKPOINT_DIR, device="cpu", window=settings.stream.window()
    )
    return Animator(
        backend,
        face_cache_size=settings.model.face_cache_size,
        silence_gate_dbfs=settings.model.silence_gate_dbfs,
    )


@dataclass(frozen=True)
class RunningServer:
    http: str  # http://127.0.0.1:PORT
    ws: str  # ws://127.0.0.1:PORT/stream
    settings: ServerSettings
    app: Any


@contextlib.contextmanager
def serve(settings: ServerSettings | None = None, **sections: Any) -> Iterator[RunningServer]:
    """Run a server in a background thread until the block ends.

    ``sections`` build the settings when none are given, e.g. ``limits={"max_sessions": 1}``.
    """
    chosen = settings or ServerSettings(port=0, **sections)
    app = create_app(chosen, animator_factory=torch_animator)
    server = GracefulServer(uvicorn_config(app, chosen, port=0, log_level="warning"), app)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(
            f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/stream", chosen, app
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    """One server with default settings, shared by a test module."""
    with serve() as running:
        yield running


@pytest.fixture(scope="session")
def speech() -> tuple[np.ndarray, int]:
    """The bundled sample (hello.wav) as int16 samples and its rate."""
    samples, rate = sf.read(SAMPLE_WAV, dtype="int16")
    return samples, rate
