"""The server under test as its own process, and the CPU and memory it uses.

Benchmarks start `pmmtalk serve` exactly as a user does, on a free loopback port, and measure it
from outside: its resident memory and CPU time through psutil, this process's CPU time (the
simulated clients share the machine with the server), and the whole machine's busy time (other
load on a shared machine shows there).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

import httpx
import psutil

READY_TIMEOUT_S: Final = 900.0
"""A first start may export the model to ONNX (a minute or more on a busy CPU)."""
READY_POLL_S: Final = 0.02
STOP_TIMEOUT_S: Final = 30.0
RSS_POLL_S: Final = 0.1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pmmtalk_executable() -> str:
    """The ``pmmtalk`` console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "pmmtalk"
    if beside.exists():
        return str(beside)
    raise FileNotFoundError(
        f"no pmmtalk command next to {sys.executable}; install the project (pip install -e .)"
    )


@dataclass(frozen=True)
class ServeOptions:
    """The `pmmtalk serve` flags a benchmark sets; None keeps the server's default."""

    backend: str = "auto"
    max_sessions: int = 32
    hop_s: float | None = None
    left_context_s: float | None = None
    lookahead_s: float | None = None
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    checkpoint: Path | None = None
    """A checkpoint directory; None = the bundled default model."""

    def command(self, port: int | str, executable: str | None = None) -> list[str]:
        """The command line, always on the loopback address: benchmarks never listen outside."""
        command = [executable or pmmtalk_executable(), "serve", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--backend", self.backend]
        command += ["--max-sessions", str(self.max_sessions)]
        if self.checkpoint is not None:
            command += ["--checkpoint", str(self.checkpoint)]
        for flag in ("hop_s", "left_context_s", "lookahead_s", "max_batch_size", "max_wait_ms"):
            value = getattr(self, flag)
            if value is not None:
                command += ["--" + flag.replace("_", "-"), str(value)]
        return command

    def shown(self) -> str:
        """The command as a reader would type it (port elided)."""
        return " ".join(["pmmtalk", *self.command("PORT", executable="pmmtalk")[1:]])


@dataclass(frozen=True)
class Target:
    """Where the clients go, and which process to measure."""

    http: str  # http://127.0.0.1:PORT
    ws: str  # ws://127.0.0.1:PORT/stream
    pid: int


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    http: str
    ready_s: float
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws(self) -> str:
        return self.http.replace("http://", "ws://", 1) + "/stream"

    @property
    def target(self) -> Target:
        return Target(self.http, self.ws, self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def running_server(
    command: Sequence[str], port: int, log_path: Path, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """Spawn the server, wait for ``/readyz``, and stop it (SIGTERM, then SIGKILL) on exit."""
    http = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env)
        server = ServerProcess(process, http, 0.0, log_path)
        try:
            server.ready_s = _wait_ready(server, started)
            yield server
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_ready(server: ServerProcess, started: float) -> float:
    with httpx.Client(timeout=5.0) as client:
        while True:
            code = server.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"the server exited with code {code} before it was ready:\n{server.log_tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get(server.http + "/readyz").status_code == 200:
                    return time.perf_counter() - started
            if time.perf_counter() - started > READY_TIMEOUT_S:
                raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S:g} s")
            time.sleep(READY_POLL_S)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process, or None where it cannot be read (it has exited)."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.Error, OSError):
        return None


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.Error, OSError):
        return 0.0
    return float(times.user + times.system)


def _machine_busy_s() -> float:
    """CPU seconds all cores spent on anything but idling, since boot."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return float(sum(times) - idle)


@dataclass(frozen=True)
class ResourceUsage:
    """CPU and memory over one measured interval. CPU is given in cores: CPU seconds per
    second of wall time (2.0 = two cores busy throughout)."""

    wall_s: float
    server_cpu_s: float
    client_cpu_s: float  # this process: the simulated clients
    machine_busy_s: float  # every process on the machine, all cores
    rss_start_bytes: int | None
    rss_peak_bytes: int | None
    rss_end_bytes: int | None

    def _cores(self, cpu_s: float) -> float | None:
        return cpu_s / self.wall_s if self.wall_s > 0 else None

    @property
    def server_cores(self) -> float | None:
        return self._cores(self.server_cpu_s)

    @property
    def client_cores(self) -> float | None:
        return self._cores(self.client_cpu_s)

    @property
    def machine_cores(self) -> float | None:
        return self._cores(self.machine_busy_s)


class ResourceMeter:
    """``async with ResourceMeter(pid) as meter: ...`` then ``meter.usage``: the server's CPU
    time and peak resident memory (sampled every `RSS_POLL_S`), this process's CPU time and
    the machine's busy time over the block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._stop = asyncio.Event()
        self._peak: int | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._start: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
        self._rss_start: int | None = None
        self.usage: ResourceUsage | None = None

    def _note(self, rss: int | None) -> None:
        if rss is not None:
            self._peak = rss if self._peak is None else max(self._peak, rss)

    async def _sample(self) -> None:
        while not self._stop.is_set():
            self._note(rss_bytes(self.pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), RSS_POLL_S)

    def _now(self) -> tuple[float, float, float, float]:
        own = psutil.Process().cpu_times()
        return (
            time.perf_counter(),
            _cpu_s(self.pid),
            float(own.user + own.system),
            _machine_busy_s(),
        )

    async def __aenter__(self) -> ResourceMeter:
        self._rss_start = rss_bytes(self.pid)
        self._note(self._rss_start)
        self._start = self._now()
        self._sampler = asyncio.create_task(self._sample())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._sampler is not None:
            await self._sampler
        end = self._now()
        rss_end = rss_bytes(self.pid)
        self._note(rss_end)
        wall, server, client, machine = (b - a for a, b in zip(self._start, end, strict=True))
        self.usage = ResourceUsage(
            wall, server, client, machine, self._rss_start, self._peak, rss_end
        )
