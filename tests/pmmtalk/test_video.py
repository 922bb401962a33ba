from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from models.blendshapes import BLENDSHAPE_NAMES, NUM_BLENDSHAPES, num_frames
from models.renderer import FaceIdentity, draw_face
from pmmtalk.animate import Animation
from pmmtalk.cli import app
from pmmtalk.errors import InputError
from pmmtalk.outputs import write_animation
from pmmtalk.video import (
    VideoEncodingError,
    read_animation,
    write_curves_png,
    write_render,
)

RATE_HZ = 16_000
FACE_PX = 64
runner = CliRunner()


def tone(seconds: float, rate_hz: int = RATE_HZ) -> np.ndarray:
    t = np.arange(round(seconds * rate_hz)) / rate_hz
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def moving_coefficients(frames: int) -> np.ndarray:
    coefficients = np.zeros((frames, NUM_BLENDSHAPES), np.float32)
    phase = np.arange(frames) / 4
    coefficients[:, BLENDSHAPE_NAMES.index("jawOpen")] = 0.5 + 0.5 * np.sin(phase)
    coefficients[:, BLENDSHAPE_NAMES.index("mouthFunnel")] = np.clip(np.cos(phase), 0, 1)
    return coefficients


def probe(path: Path) -> str:
    """ffmpeg's description of the file's streams (it exits non-zero with no output named)."""
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stderr


def decoded_frames(path: Path) -> list[np.ndarray]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]


def decoded_audio(path: Path) -> np.ndarray:
    result = subprocess.run(
        [
            *(imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a"),
            *("-f", "f32le", "-ac", "1", "-ar", str(RATE_HZ), "pipe:1"),
        ],
        capture_output=True,
        check=True,
    )
    return np.frombuffer(result.stdout, np.float32)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    wave = tone(1.37)
    frames = num_frames(wave.size, RATE_HZ)  # 42
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_render(path, wave, RATE_HZ, moving_coefficients(frames), face_size=FACE_PX)
    return path, frames


def test_video_has_every_frame_and_the_speech(rendered: tuple[Path, int]) -> None:
    path, frames = rendered
    counted, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert counted == frames
    assert seconds == pytest.approx(frames / 30, abs=0.04)
    streams = probe(path)
    assert re.search(r"Video: h264.*yuv420p.*192x64", streams), streams
    assert "Audio: aac" in streams
    audio = decoded_audio(path)
    # The speech is all there: AAC may pad a few ms, but nothing is cut.
    assert audio.size / RATE_HZ == pytest.approx(frames / 30, abs=0.1)
    assert np.sqrt(np.mean(audio[: RATE_HZ // 2] ** 2)) > 0.15
    assert not list(path.parent.glob(".*partial*"))


def test_frames_show_the_face_and_a_moving_cursor(rendered: tuple[Path, int]) -> None:
    path, frames = rendered
    video = decoded_frames(path)
    coefficients = moving_coefficients(frames)
    for index in (0, frames // 2, frames - 1):
        face = draw_face(coefficients[index], FaceIdentity.default(), FACE_PX).astype(float)
        assert np.abs(video[index][:, :FACE_PX] - face).mean() < 6, index

    def cursor_column(index: int, others: tuple[int, int]) -> int:
        # What differs from both other frames (whose cursors sit elsewhere) is this cursor.
        middle = slice(FACE_PX // 4, 3 * FACE_PX // 4)
        panel = video[index][middle, FACE_PX:].astype(int)
        diff = np.minimum(*(np.abs(panel - video[o][middle, FACE_PX:]).sum(-1) for o in others))
        return int(np.argmax(diff.sum(axis=0)))

    last = frames - 1
    columns = [
        cursor_column(0, (frames // 2, last)),
        cursor_column(frames // 2, (0, last)),
        cursor_column(last, (0, frames // 2)),
    ]
    assert columns[0] < columns[1] < columns[2]


def test_slightly_off_lengths_render_and_clearly_off_ones_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wave = tone(0.5)  # 15 frames
    out = tmp_path / "near.mp4"
    with caplog.at_level(logging.WARNING, logger="pmmtalk.video"):
        write_render(out, wave, RATE_HZ, moving_coefficients(17), face_size=FACE_PX)
    assert "rendering anyway" in caplog.text
    assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == 17
    with pytest.raises(ValueError, match="made from this speech"):
        write_render(tmp_path / "far.mp4", wave, RATE_HZ, moving_coefficients(40), face_size=64)


@pytest.mark.parametrize(
    ("name", "face_size", "coefficients", "message"),
    [
        ("clip.avi", 64, moving_coefficients(15), "mp4"),
        ("clip.mp4", 65, moving_coefficients(15), "even"),
        ("clip.mp4", 32, moving_coefficients(15), "even"),
        ("clip.mp4", 64, np.full((15, 32), np.nan), "finite"),
        ("clip.mp4", 64, np.zeros((15, 31)), r"\(T, 32\)"),
    ],
)
def test_bad_render_arguments_are_refused(
    tmp_path: Path, name: str, face_size: int, coefficients: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_render(tmp_path / name, tone(0.5), RATE_HZ, coefficients, face_size=face_size)
    assert not (tmp_path / name).exists()


def test_a_failing_encoder_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: "false")
    out = tmp_path / "broken.mp4"
    with pytest.raises(VideoEncodingError, match="ffmpeg failed"):
        write_render(out, tone(0.5), RATE_HZ, moving_coefficients(15), face_size=FACE_PX)
    assert list(tmp_path.iterdir()) == []


def test_curves_png_is_a_readable_plot(tmp_path: Path) -> None:
    out = write_curves_png(tmp_path / "curves.png", moving_coefficients(45), fps=30)
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 500 and image.shape[1] > 1000
    # Curves in colour on a white page, not a blank image.
    assert (image.reshape(-1, 3) == 255).all(axis=1).mean() > 0.5
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50
    few = cv2.imread(str(write_curves_png(tmp_path / "f.png", np.ones((9, 2)), 30, ("a", "b"))))
    assert few is not None and few.shape[0] < image.shape[0]
    with pytest.raises(ValueError, match=r"\(T, 2\)"):
        write_curves_png(tmp_path / "x.png", np.ones((10, 3)), 30, names=("a", "b"))


@pytest.mark.parametrize("suffix", [".npy", ".json", ".csv"])
def test_reads_back_what_animate_writes(tmp_path: Path, suffix: str) -> None:
    frames = np.random.default_rng(0).uniform(0, 1, (12, 32)).astype(np.float32)
    written = write_animation(
        Animation(frames, 30, BLENDSHAPE_NAMES, 0.4, "lite:test"), tmp_path / f"a{suffix}"
    )
    animation = read_animation(written)
    np.testing.assert_allclose(animation.frames, frames, atol=1e-6)
    assert animation.fps == 30 and animation.names == BLENDSHAPE_NAMES
    assert animation.duration_s == pytest.approx(0.4)


def test_reads_csv_columns_by_name_and_the_rate_from_time(tmp_path: Path) -> None:
    frames = np.random.default_rng(1).uniform(0, 1, (6, 32))
    order = list(reversed(BLENDSHAPE_NAMES))
    lines = [",".join(["time_s", "extra", *order])]
    for index, row in enumerate(frames):
        values = [row[BLENDSHAPE_NAMES.index(name)] for name in order]
        lines.append(",".join([f"{index / 60:.6f}", "7", *(f"{v:.6f}" for v in values)]))
    path = tmp_path / "shuffled.csv"
    path.write_text("\n".join(lines) + "\n")
    animation = read_animation(path)
    np.testing.assert_allclose(animation.frames, frames, atol=1e-6)
    assert animation.fps == 60


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.txt", "1", "use a .json"),
        ("missing.npy", None, "not found"),
        ("bad.json", "{not json", "not a readable"),
        ("nonames.json", json.dumps({"names": ["jawOpen"], "frames": [[0.1]]}), "lacks"),
        ("short.csv", "time_s,jawOpen\n0,0.5\n", "lacks"),
    ],
)
def test_bad_coefficient_files_are_reported(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_animation(path)


def test_wrong_npy_shape_is_reported(tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", np.zeros((5, 33)))
    with pytest.raises(InputError, match=r"\(T, 32\)"):
        read_animation(tmp_path / "wide.npy")


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """0.6 s of 22.05 kHz tone, so the CLI's decoding and resampling are exercised."""
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    sf.write(path, tone(0.6, 22_050), 22_050)
    return path


def test_cli_renders_the_untrained_network(speech: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    args = ["render", str(speech), "-o", str(out), "--untrained", "lite", "--size", "64"]
    result = runner.invoke(app, [*args, "--face-seed", "3"])
    assert result.exit_code == 0, result.output
    assert "lite:untrained" in result.output
    assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == 18  # ceil(0.6 * 30)
    assert "Audio: aac" in probe(out)
    assert cv2.imread(str(tmp_path / "out.png")) is not None


def test_cli_renders_a_coefficient_file(speech: Path, tmp_path: Path) -> None:
    coefficients = tmp_path / "c.npy"
    np.save(coefficients, moving_coefficients(18))
    out = tmp_path / "given.mp4"
    result = runner.invoke(
        app, ["render", str(speech), "-o", str(out), "--coefficients", str(coefficients)]
    )
    assert result.exit_code == 0, result.output
    assert "file:c.npy" in result.output
    frames = decoded_frames(out)
    assert len(frames) == 18 and frames[0].shape == (256, 768, 3)
    assert (tmp_path / "given.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--untrained", "lite", "--checkpoint", "x"], "not both"),
        (["--coefficients", "c.npy", "--untrained", "lite"], "drop --checkpoint/--untrained"),
        (["--coefficients", "missing.npy"], "not found"),
        (["--coefficients", "long.npy"], "made from this speech"),
        (["--coefficients", "c.npy", "--size", "63"], "even"),
        (["--coefficients", "c.npy", "-o", "out.gif"], ".mp4"),
    ],
)
def test_cli_reports_bad_input(
    speech: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    np.save(tmp_path / "c.npy", moving_coefficients(18))
    np.save(tmp_path / "long.npy", moving_coefficients(90))
    extra = [str(tmp_path / arg) if arg.endswith((".npy", ".gif")) else arg for arg in extra]
    output = [] if "-o" in extra else ["-o", str(tmp_path / "out.mp4")]
    result = runner.invoke(app, ["render", str(speech), *output, *extra])
    assert result.exit_code == 2
    assert "error:" in result.output and message in result.output
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob("*.png"))
