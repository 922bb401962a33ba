"""The Godot client (clients/godot) end to end: Debian's godot3-server runs the project headless
against a real server, and the JSON file it writes is checked against the stream's contract, the
server's /animate answer for the same WAV, and the blend shape weights the mesh ended up holding.

Godot 3 has no Python, so the GDScript is tested by running it. A GDScript error does not stop
Godot (the scene just stops doing anything), so a run fails as soon as a ``SCRIPT ERROR`` line
appears instead of waiting for its timeout.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.server.conftest import SAMPLE_WAV, RunningServer, serve

GODOT: Final = shutil.which("godot3-server")
PROJECT: Final = Path(__file__).resolve().parents[2] / "clients" / "godot"
FPS: Final = 30
RUN_TIMEOUT_S: Final = 120.0  # one Godot run; the fast full-sample run takes 1 to 20 s
SCRIPT_ERROR: Final = "SCRIPT ERROR"
# The stream-vs-/animate parity bound at the default window settings, as
# tests/server/test_connection.py checks it for the Python WebSocket client.
PARITY_MEAN: Final = 0.01
PARITY_MAX: Final = 0.05
# Values pass through Godot's JSON writer, which keeps 6 decimals; weights are also read back
# from the MeshInstance as float32.
WEIGHT_ATOL: Final = 2e-6
CHUNK_S: Final = 0.1  # pmmtalk_stream.gd's CHUNK_S
MESH_SHAPES: Final = [
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthSmileLeft",
    "mouthSmileRight",
]

pytestmark = [
    pytest.mark.godot,
    pytest.mark.skipif(
        GODOT is None, reason="needs Debian's godot3-server (apt-get install godot3-server)"
    ),
]


@dataclass(frozen=True)
class GodotRun:
    returncode: int
    output: str  # stdout and stderr together
    result: dict[str, Any] | None  # the --out file, when one was written


@pytest.fixture(scope="module")
def godot_server() -> Iterator[RunningServer]:
    with serve() as running:
        yield running


def run_godot(tmp_path: Path, *args: str) -> GodotRun:
    """Run the project headless with these arguments (after Godot's `--`); --out is added."""
    assert GODOT is not None
    out = tmp_path / "out.json"
    out.unlink(missing_ok=True)
    # HOME keeps Godot's user:// folder out of the real home; a known LANG quiets its locale error.
    env = {**os.environ, "HOME": str(tmp_path), "LANG": "en_US.UTF-8"}
    command = [GODOT, "--path", str(PROJECT), "--", *args, "--out", str(out)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines: list[str] = []
    stop = threading.Event()  # set at the output's end (Godot exited) or at a script error

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if SCRIPT_ERROR in line:
                stop.set()
        stop.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stop.wait(RUN_TIMEOUT_S)
    try:
        process.wait(timeout=2)  # a script error leaves Godot running: give it a moment only
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    reader.join(timeout=5)
    output = "".join(lines)
    assert SCRIPT_ERROR not in output, output
    assert process.returncode is not None and process.returncode >= 0, (
        f"godot3-server did not finish within {RUN_TIMEOUT_S} s:\n{output}"
    )
    result = json.loads(out.read_text()) if out.exists() else None
    return GodotRun(process.returncode, output, result)


def animate(server: RunningServer, wav: bytes) -> dict[str, Any]:
    response = httpx.post(
        f"{server.http}/animate",
        files={"audio": ("speech.wav", wav, "audio/wav")},
        timeout=RUN_TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def check_stream(run: GodotRun, offline: dict[str, Any], samples: int, rate: int) -> np.ndarray:
    """The contract every successful run keeps; returns the received frames, (n, 32)."""
    assert run.returncode == 0, run.output
    assert run.result is not None and "error" not in run.result
    expected = math.ceil(samples * FPS / rate)
    received = run.result["frames"]
    assert [f["index"] for f in received] == list(range(expected))
    assert run.result["done"] == {"frame_count": expected}
    assert run.result["ready"]["names"] == offline["names"]
    frames = np.asarray([f["values"] for f in received], dtype=np.float64)
    diff = np.abs(frames - np.asarray(offline["frames"], dtype=np.float64))
    assert diff.mean() <= PARITY_MEAN and diff.max() <= PARITY_MAX, (
        f"Godot stream vs /animate: mean abs diff {diff.mean():.4f}, max {diff.max():.4f}"
    )
    return frames


def check_mesh(run: GodotRun, frames: np.ndarray, names: list[str]) -> None:
    """Every frame was applied, in order, to the mesh's blend shapes by name."""
    assert run.result is not None
    mesh = run.result["mesh"]
    assert mesh["shapes"] == MESH_SHAPES
    assert mesh["skipped"] == [name for name in names if name not in MESH_SHAPES]
    skip_reports = [line for line in run.output.splitlines() if "are skipped" in line]
    assert len(skip_reports) == 1, run.output  # reported once, not per frame
    applied = run.result["applied"]
    assert [a["index"] for a in applied] == list(range(len(frames)))
    channel = {name: names.index(name) for name in MESH_SHAPES}
    weights = np.asarray([[a["weights"][s] for s in MESH_SHAPES] for a in applied])
    np.testing.assert_allclose(
        weights, frames[:, [channel[s] for s in MESH_SHAPES]], rtol=0, atol=WEIGHT_ATOL
    )
    final = run.result["final_weights"]
    np.testing.assert_allclose(
        [final[s] for s in MESH_SHAPES], frames[-1, [channel[s] for s in MESH_SHAPES]], atol=1e-6
    )
    # The sample opens the mouth: a mapping that set nothing (or the wrong shapes) fails here.
    widest = int(frames[:, channel["jawOpen"]].argmax())
    assert applied[widest]["weights"]["jawOpen"] > 0.3


def test_fast_stream_matches_animate_and_drives_the_mesh(
    godot_server: RunningServer, tmp_path: Path
) -> None:
    run = run_godot(tmp_path, "--server", godot_server.ws, "--wav", str(SAMPLE_WAV), "--fast")
    info = sf.info(str(SAMPLE_WAV))
    offline = animate(godot_server, SAMPLE_WAV.read_bytes())
    frames = check_stream(run, offline, info.frames, info.samplerate)
    check_mesh(run, frames, offline["names"])
    assert run.result is not None
    assert run.result["wav"]["encoding"] == "pcm_s16le"
    # --fast sends ahead of the wall clock (2 s at once), unlike a microphone.
    sent = run.result["sent"]
    assert max(s["audio_s"] - (s["t_s"] - sent[0]["t_s"]) for s in sent) > 1.0


def test_real_time_binary_stream_of_stereo_float_wav(
    godot_server: RunningServer, tmp_path: Path
) -> None:
    speech, rate = sf.read(SAMPLE_WAV, dtype="float32")
    clip = speech[: int(1.2 * rate)]  # the first word: the jaw opens in the first 0.5 s
    stereo = np.stack([clip, 0.5 * clip], axis=1)  # (n, 2): the server averages the channels
    buffer = io.BytesIO()
    sf.write(buffer, stereo, rate, format="WAV", subtype="FLOAT")
    wav = tmp_path / "stereo-float.wav"
    wav.write_bytes(buffer.getvalue())

    run = run_godot(tmp_path, "--server", godot_server.ws, "--wav", str(wav), "--binary")
    offline = animate(godot_server, buffer.getvalue())
    frames = check_stream(run, offline, len(clip), rate)
    check_mesh(run, frames, offline["names"])
    assert run.result is not None
    assert run.result["wav"] | {"path": None} == {
        "path": None,
        "sample_rate": rate,
        "channels": 2,
        "encoding": "pcm_f32le",
        "samples": len(clip),
    }
    # Real-time pacing: chunk k leaves no earlier than k * CHUNK_S after the first.
    sent = run.result["sent"]
    assert sent[-1]["audio_s"] == pytest.approx(len(clip) / rate, abs=1e-6)
    for s in sent:
        assert s["audio_s"] - CHUNK_S <= s["t_s"] - sent[0]["t_s"] + 0.01, sent
    # Real-time playback: frame i is applied i / 30 s after frame 0, give or take a Godot frame
    # (applying all frames on arrival would put the last one a whole second early).
    applied = run.result["applied"]
    for a in applied:
        assert a["t_s"] - applied[0]["t_s"] >= (a["index"] - 1) / FPS, a


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A TCP port that takes connections and never answers the WebSocket handshake."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"ws://127.0.0.1:{listener.getsockname()[1]}/stream"


def closed_port_url() -> str:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    return f"ws://127.0.0.1:{port}/stream"


def test_no_server_is_a_clear_failure(tmp_path: Path) -> None:
    run = run_godot(tmp_path, "--server", closed_port_url(), "--wav", str(SAMPLE_WAV), "--fast")
    assert run.returncode == 1
    assert "cannot connect to" in run.output and "is the server running" in run.output
    assert run.result is not None and "cannot connect" in run.result["error"]


def test_silent_server_times_out(tmp_path: Path, silent_listener: str) -> None:
    args = ["--server", silent_listener, "--wav", str(SAMPLE_WAV), "--timeout", "1"]
    run = run_godot(tmp_path, *args)
    assert run.returncode == 1
    assert "timed out: nothing from the server for 1 s" in run.output


def test_api_key_goes_in_a_header_and_no_origin_is_sent(tmp_path: Path) -> None:
    requests: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(RUN_TIMEOUT_S)

        def answer_once() -> None:
            connection, _ = listener.accept()
            with connection:
                requests.append(connection.recv(65536).decode("latin-1"))

        thread = threading.Thread(target=answer_once, daemon=True)
        thread.start()
        url = f"ws://127.0.0.1:{listener.getsockname()[1]}/stream"
        run = run_godot(tmp_path, "--server", url, "--wav", str(SAMPLE_WAV), "--api-key", "k-123")
        thread.join(timeout=5)
    assert run.returncode == 1  # the listener hangs up instead of answering
    (request,) = requests
    assert request.startswith("GET /stream HTTP/1.1\r\n")
    headers = request.lower().split("\r\n")
    assert "x-api-key: k-123" in headers
    # The server's Origin allow-list only checks connections that send one.
    assert not any(h.startswith("origin:") for h in headers)


def test_server_error_is_reported(godot_server: RunningServer, tmp_path: Path) -> None:
    args = ["--server", godot_server.ws, "--wav", str(SAMPLE_WAV), "--style", "9999", "--fast"]
    run = run_godot(tmp_path, *args)
    assert run.returncode == 1
    assert "the server refused the stream: bad_style" in run.output
    assert run.result is not None and run.result["frames"] == []


def wav_24bit() -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(1600, dtype=np.float32), 16_000, format="WAV", subtype="PCM_24")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda wav: ["--wav", str(wav), "--nope"], "unknown argument --nope"),
        (lambda wav: ["--wav", str(wav), "--style", "loud"], "--style takes a style index"),
        (lambda wav: ["--wav", str(wav.parent / "missing.wav")], "cannot open the WAV file"),
        (lambda wav: ["--wav", str(wav)], "convert it first"),
    ],
    ids=["unknown-flag", "bad-style", "missing-wav", "24-bit-wav"],
)
def test_bad_input_exits_2_with_a_message(
    tmp_path: Path, make_args: Callable[[Path], list[str]], message: str
) -> None:
    wav = tmp_path / "in.wav"
    wav.write_bytes(wav_24bit())
    run = run_godot(tmp_path, "--server", closed_port_url(), *make_args(wav))
    assert run.returncode == 2, run.output
    assert message in run.output


def test_text_file_is_not_a_wav(tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all, just some words\n" * 10)
    run = run_godot(tmp_path, "--server", closed_port_url(), "--wav", str(text))
    assert run.returncode == 2
    assert "is not a WAV file" in run.output
