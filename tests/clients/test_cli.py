"""``pmmtalk client animate|stream|mic`` (clients/cli.py) against a real server.

The commands run in-process through typer's CliRunner on the real `pmmtalk` app, so the
``client`` sub-app's wiring is covered too; one subprocess checks what the client imports.
"""

from __future__ import annotations

import csv
import io
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from pmmtalk.cli import app
from tests.pmmtalk.rigs.test_livelink import decode
from tests.server.conftest import SAMPLE_WAV, RunningServer, serve

HELLO_FRAMES: Final = 179  # ceil(95309 * 30 / 16000)
REPO: Final = Path(__file__).resolve().parents[2]
FACE_PNG: Final = REPO / "pmmtalk" / "assets" / "default_face.png"

runner = CliRunner()


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serve() as running:
        yield running


def direct_animate(server: RunningServer, fmt: str) -> httpx.Response:
    response = httpx.post(
        f"{server.http}/animate",
        files={"audio": ("hello.wav", SAMPLE_WAV.read_bytes())},
        data={"format": fmt},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def assert_one_line_error(output: str, *needles: str) -> None:
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_animate_writes_the_servers_json(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = runner.invoke(
        app, ["client", "animate", str(SAMPLE_WAV), "-o", str(out), "--server", server.http]
    )
    assert result.exit_code == 0, result.output
    assert f"{HELLO_FRAMES} frames" in result.stdout and "compute" in result.stdout
    written = json.loads(out.read_text())
    direct = direct_animate(server, "json").json()
    assert written.pop("compute_ms") > 0
    direct.pop("compute_ms")
    assert written == direct


def test_animate_writes_the_servers_csv_byte_for_byte(
    server: RunningServer, tmp_path: Path
) -> None:
    out = tmp_path / "nested" / "out.csv"
    result = runner.invoke(
        app, ["client", "animate", str(SAMPLE_WAV), "-o", str(out), "--server", server.http]
    )
    assert result.exit_code == 0, result.output
    assert f"{HELLO_FRAMES} frames" in result.stdout
    assert out.read_bytes() == direct_animate(server, "csv").content


def test_animate_without_output_prints_json(server: RunningServer) -> None:
    result = runner.invoke(app, ["client", "animate", str(SAMPLE_WAV), "--server", server.http])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["frame_count"] == HELLO_FRAMES
    assert f"{HELLO_FRAMES} frames" in result.stderr


def test_fast_binary_stream_writes_every_frame(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "frames.csv"
    result = runner.invoke(
        app,
        [
            "client", "stream", str(SAMPLE_WAV), "--fast", "--output", "binary",
            "--face", str(FACE_PNG), "-o", str(out), "--server", server.http,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("frames 0-") and "lag" in lines[0]
    assert "p50" in lines[-1] and "p95" in lines[-1] and f"{HELLO_FRAMES} frames" in lines[-1]
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0][:4] == ["frame", "time_s", "jawForward", "jawRight"]
    assert [int(row[0]) for row in rows[1:]] == list(range(HELLO_FRAMES))


def test_livelink_relays_every_frame_as_a_paced_packet(
    server: RunningServer, tmp_path: Path
) -> None:
    out = tmp_path / "frames.json"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        result = runner.invoke(
            app,
            [
                "client", "stream", str(SAMPLE_WAV), "--fast", "-q", "-o", str(out),
                "--livelink", f"127.0.0.1:{port}", "--livelink-subject", "Ada",
                "--server", server.http,
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        receiver.settimeout(5)
        packets = [decode(receiver.recv(2048)) for _ in range(HELLO_FRAMES)]
    document = json.loads(out.read_text())
    assert document["names"][:3] == ["eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft"]
    assert len(document["names"]) == 52  # --livelink asks for the arkit52 profile
    frames = np.asarray(document["frames"])
    assert {packet.subject for packet in packets} == {"Ada"}
    numbers = [packet.frame_number for packet in packets]
    assert numbers == list(range(numbers[0], numbers[0] + HELLO_FRAMES))
    jaw = document["names"].index("jawOpen")
    sent = np.array([packet.values["JawOpen"] for packet in packets])
    np.testing.assert_allclose(sent, frames[:, jaw], atol=1e-6)
    assert sent.max() > 0.1  # speech opens the jaw: the packets are not all zeros
    assert f"livelink: {HELLO_FRAMES} packets" in result.output


def test_livelink_refuses_a_profile_unreal_cannot_read() -> None:
    result = runner.invoke(
        app,
        ["client", "stream", str(SAMPLE_WAV), "--livelink", "127.0.0.1", "--profile", "visemes15"],
    )
    assert result.exit_code == 2
    assert "livelink61" in result.output and "visemes15" in result.output


def test_a_4xx_exits_2_with_the_servers_code(server: RunningServer) -> None:
    result = runner.invoke(
        app, ["client", "stream", str(SAMPLE_WAV), "--style", "999", "--server", server.http]
    )
    assert result.exit_code == 2
    assert_one_line_error(result.output, "bad_style")
    assert "retry" not in result.output


def test_no_server_exits_1_after_the_retries() -> None:
    url = dead_url()
    result = runner.invoke(
        app,
        ["client", "animate", str(SAMPLE_WAV), "--server", url, "--retries", "1",
         "--retry-backoff-s", "0.01"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert_one_line_error(result.output, "cannot connect", url, "gave up after 2 attempts")
    assert "retry 1 of 1" in result.stderr


def test_user_mistakes_exit_2_without_a_traceback(tmp_path: Path) -> None:
    url = dead_url()  # never reached: each of these fails before connecting
    missing = runner.invoke(app, ["client", "stream", str(tmp_path / "x.wav"), "--server", url])
    assert missing.exit_code == 2
    assert_one_line_error(missing.output, "does not exist")
    both = runner.invoke(
        app,
        ["client", "animate", str(SAMPLE_WAV), "--face", "a.jpg", "--face-id", "b", "--server",
         url],
    )  # fmt: skip
    assert both.exit_code == 2 and "not both" in both.output
    suffix = runner.invoke(app, ["client", "animate", str(SAMPLE_WAV), "-o", "out.npy"])
    assert suffix.exit_code == 2 and ".json or .csv" in suffix.output


def test_api_key_comes_from_the_environment(tmp_path: Path) -> None:
    with serve(security={"api_keys": ("env-key",)}) as guarded:
        out = tmp_path / "keyed.json"
        args = ["client", "animate", str(SAMPLE_WAV), "-o", str(out), "--server", guarded.http]
        refused = runner.invoke(app, args, env={"PMMTALK_API_KEY": None})
        assert refused.exit_code == 2
        assert_one_line_error(refused.output, "unauthorized")
        accepted = runner.invoke(app, args, env={"PMMTALK_API_KEY": "env-key"})
        assert accepted.exit_code == 0, accepted.output
        assert json.loads(out.read_text())["frame_count"] == HELLO_FRAMES


def test_mic_without_a_device_exits_2_with_a_clear_error() -> None:
    from clients.mic import MicrophoneError, input_device

    try:
        input_device()
    except MicrophoneError:
        pass
    else:
        pytest.skip("this machine has a microphone, so there is no missing-device error to see")
    result = runner.invoke(app, ["client", "mic", "--seconds", "1", "--server", dead_url()])
    assert result.exit_code == 2
    assert_one_line_error(result.output)
    assert "no microphone" in result.output or "PortAudio" in result.output


def test_the_client_imports_neither_torch_nor_the_server_app() -> None:
    probe = (
        "import sys, clients.cli, clients.client, clients.mic; "
        "heavy = [m for m in ('torch', 'server.app', 'server.connection', 'pmmtalk.animate') "
        "if m in sys.modules]; print(heavy)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
