"""POST /animate and POST /faces on a real server: the answer's contract, faces, every bad input
as a 4xx with the protocol's error body, limits, API keys, and the request metrics."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr
from prometheus_client.parser import text_string_to_metric_families
from skimage import data as skimage_data

from models.blendshapes import BLENDSHAPE_NAMES
from server.faces import face_id_of
from server.protocol import ErrorBody
from tests.server.conftest import SAMPLE_WAV, RunningServer, serve

TIMEOUT_S = 120.0  # generous: the machine's two cores are shared with a training job
SAMPLE_BYTES = SAMPLE_WAV.read_bytes()

# The limited server: hello.wav (6 s, 191 kB) fits the upload limit but not the duration limit,
# and the astronaut photo (512 x 512, 465 kB) fits the upload limit but not the pixel limit.
SMALL_UPLOAD_BYTES = 600_000
SMALL_AUDIO_S = 3.0
SMALL_IMAGE_PIXELS = 100_000
API_KEY = "k1"


@pytest.fixture(scope="module")
def limited() -> Iterator[RunningServer]:
    limits = {
        "max_upload_bytes": SMALL_UPLOAD_BYTES,
        "max_audio_s": SMALL_AUDIO_S,
        "max_image_pixels": SMALL_IMAGE_PIXELS,
    }
    with serve(limits=limits) as running:
        yield running


@pytest.fixture(scope="module")
def keyed() -> Iterator[RunningServer]:
    with serve(security={"api_keys": [API_KEY]}) as running:
        yield running


# --- helpers ----------------------------------------------------------------------------------


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, subtype=subtype, format=fmt)
    return out.getvalue()


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


ASTRONAUT = skimage_data.astronaut()  # (512, 512, 3) RGB, one clear frontal face
ASTRONAUT_PNG = png_bytes(ASTRONAUT)
GREY_PNG = png_bytes(np.full((256, 256, 3), 128, dtype=np.uint8))


def post(
    running: RunningServer,
    path: str,
    files: dict[str, tuple[str, bytes, str]],
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return httpx.post(
        f"{running.http}{path}", files=files, data=data, headers=headers, timeout=TIMEOUT_S
    )


def animate(
    running: RunningServer,
    audio: bytes = SAMPLE_BYTES,
    face: bytes | None = None,
    headers: dict[str, str] | None = None,
    **fields: str,
) -> httpx.Response:
    files = {"audio": ("speech.wav", audio, "audio/wav")}
    if face is not None:
        files["face"] = ("face.png", face, "image/png")
    return post(running, "/animate", files, fields, headers)


def upload_face(running: RunningServer, photo: bytes) -> httpx.Response:
    return post(running, "/faces", {"face": ("face.png", photo, "image/png")})


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """The answer is ``status`` with exactly the protocol's error body; returns its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "type", "message"}
    assert body["error"]["type"] == "error"
    assert body["error"]["code"] == code
    ErrorBody.model_validate(body)
    message: str = body["error"]["message"]
    assert len(message) >= 15, message  # says what was wrong, not just a code
    return message


def check_animation(body: dict[str, Any], samples: int, rate: int) -> np.ndarray:
    """The JSON answer's contract for ``samples`` at ``rate`` Hz; returns the frames."""
    assert set(body) == {
        "fps",
        "names",
        "frames",
        "duration_s",
        "model",
        "compute_ms",
        "frame_count",
    }
    expected = math.ceil(samples * 30 / rate)
    assert body["fps"] == 30
    assert body["names"] == list(BLENDSHAPE_NAMES)
    assert len(body["names"]) == 32
    assert body["frame_count"] == expected
    assert body["duration_s"] == pytest.approx(samples / rate, abs=1e-6)
    assert isinstance(body["model"], str) and body["model"]
    assert body["compute_ms"] > 0
    frames = np.asarray(body["frames"], dtype=np.float64)
    assert frames.shape == (expected, 32)
    assert ((frames >= 0) & (frames <= 1)).all()
    return frames


def metric_values(running: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (sample name, sorted labels)."""
    response = httpx.get(f"{running.http}/metrics", timeout=TIMEOUT_S)
    assert response.status_code == 200
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def requests_total(values: dict[Any, float], endpoint: str, outcome: str) -> float:
    key = ("pmmtalk_requests_total", (("endpoint", endpoint), ("outcome", outcome)))
    return values.get(key, 0.0)


def errors_total(values: dict[Any, float], code: str) -> float:
    return values.get(("pmmtalk_errors_total", (("code", code),)), 0.0)


# --- the answer -------------------------------------------------------------------------------


def test_animate_the_sample(server: RunningServer, speech: tuple[np.ndarray, int]) -> None:
    samples, rate = speech
    response = animate(server)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    frames = check_animation(response.json(), samples.shape[0], rate)
    # Speech moves the jaw: the answer is not a constant face.
    jaw = frames[:, BLENDSHAPE_NAMES.index("jawOpen")]
    assert jaw.max() - jaw.min() > 0.05


# Lengths whose resampling to 16 kHz rounds across a frame boundary: 4411 = 3 x 1470 + 1 starts a
# fourth frame, but 4411 * 16000 / 44100 = 1600.4 rounds to 1600 samples (3 frames); one sample
# rounds to no samples at all, yet is a clip of one frame.
@pytest.mark.parametrize("samples", [44_100 + 1234, 4_411, 1_000, 1])
def test_a_44khz_stereo_flac_gives_the_contract_frame_count(
    server: RunningServer, speech: tuple[np.ndarray, int], samples: int
) -> None:
    mono, rate = speech
    resampled = soxr.resample(mono.astype(np.float32) / 32768, rate, 44_100)[:samples]
    stereo = np.stack([resampled, 0.5 * resampled], axis=1)
    flac = wav_bytes(stereo, 44_100, fmt="FLAC")
    response = animate(server, flac)
    assert response.status_code == 200, response.text
    check_animation(response.json(), samples, 44_100)


def test_csv_has_a_header_and_one_row_per_frame(server: RunningServer) -> None:
    as_json = animate(server).json()
    response = animate(server, format="csv")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["frame", "time_s", *BLENDSHAPE_NAMES]
    body = rows[1:]
    assert len(body) == as_json["frame_count"]
    assert [int(row[0]) for row in body] == list(range(len(body)))
    times = np.array([float(row[1]) for row in body])
    np.testing.assert_allclose(times, np.arange(len(body)) / 30, atol=1e-6)
    values = np.array([[float(v) for v in row[2:]] for row in body])
    # Both carry 6 decimals of the same float32 values, rounded the same way (in float64).
    np.testing.assert_allclose(values, np.asarray(as_json["frames"]), rtol=0, atol=1e-9)


def test_an_unknown_format_is_refused(server: RunningServer) -> None:
    message = assert_error(animate(server, format="xml"), 422, "bad_message")
    assert "format" in message


def test_styles_in_range_work_and_out_of_range_is_bad_style(server: RunningServer) -> None:
    styles = httpx.get(f"{server.http}/info", timeout=TIMEOUT_S).json()["styles"]
    assert styles >= 1
    assert animate(server, style="0").status_code == 200
    assert animate(server, style=str(styles - 1)).status_code == 200
    message = assert_error(animate(server, style=str(styles)), 400, "bad_style")
    assert str(styles) in message


@pytest.mark.parametrize("style", ["-1", "abc", "1.5"])
def test_a_style_that_is_no_index_is_refused(server: RunningServer, style: str) -> None:
    # FastAPI's form validation answers these, before the model's range check (bad_style).
    message = assert_error(animate(server, style=style), 422, "bad_message")
    assert "style" in message


def test_a_body_that_is_not_multipart_is_422(server: RunningServer) -> None:
    response = httpx.post(
        f"{server.http}/animate",
        content=b'{"audio": "hello.wav"}',
        headers={"content-type": "application/json"},
        timeout=TIMEOUT_S,
    )
    assert "audio" in assert_error(response, 422, "bad_message")


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/animate", 405), ("GET", "/nope", 404)]
)
def test_routing_errors_have_the_error_body_too(
    server: RunningServer, method: str, path: str, status: int
) -> None:
    response = httpx.request(method, f"{server.http}{path}", timeout=TIMEOUT_S)
    assert response.status_code == status
    # "Every HTTP 4xx/5xx answer" carries the protocol's error body, whatever its code.
    ErrorBody.model_validate(response.json())


# --- faces ------------------------------------------------------------------------------------


def test_a_face_photo_and_its_face_id_give_the_same_frames(
    server: RunningServer, speech: tuple[np.ndarray, int]
) -> None:
    samples, rate = speech
    with_photo = animate(server, face=ASTRONAUT_PNG)
    assert with_photo.status_code == 200, with_photo.text
    check_animation(with_photo.json(), samples.shape[0], rate)

    registered = upload_face(server, ASTRONAUT_PNG)
    assert registered.status_code == 200, registered.text
    body = registered.json()
    assert set(body) == {"face_id", "cached_faces"}
    assert body["face_id"] == face_id_of(ASTRONAUT)  # an id of the pixels, stable
    assert body["cached_faces"] >= 1
    assert upload_face(server, ASTRONAUT_PNG).json()["face_id"] == body["face_id"]

    with_id = animate(server, face_id=body["face_id"])
    assert with_id.status_code == 200, with_id.text
    np.testing.assert_allclose(
        np.asarray(with_id.json()["frames"]), np.asarray(with_photo.json()["frames"]), atol=1e-6
    )


def test_a_photo_without_a_face_is_bad_face(server: RunningServer) -> None:
    assert_error(upload_face(server, GREY_PNG), 400, "bad_face")
    assert_error(animate(server, face=GREY_PNG), 400, "bad_face")


@pytest.mark.parametrize("photo", [b"", b"this is not a photo", ASTRONAUT_PNG[:100]])
def test_an_unreadable_photo_is_bad_face(server: RunningServer, photo: bytes) -> None:
    assert_error(upload_face(server, photo), 400, "bad_face")


def test_an_unknown_face_id_is_404(server: RunningServer) -> None:
    message = assert_error(animate(server, face_id="0123456789abcdef"), 404, "bad_face")
    assert "0123456789abcdef" in message and "/faces" in message


def test_a_face_and_a_face_id_together_are_refused(server: RunningServer) -> None:
    face_id = upload_face(server, ASTRONAUT_PNG).json()["face_id"]
    assert_error(animate(server, face=ASTRONAUT_PNG, face_id=face_id), 400, "bad_face")


# --- bad audio --------------------------------------------------------------------------------


def test_bytes_that_are_not_audio_are_bad_audio(server: RunningServer) -> None:
    message = assert_error(animate(server, b"hello, this is text " * 50), 400, "bad_audio")
    assert "not a readable audio file" in message


def test_an_empty_upload_is_bad_audio(server: RunningServer) -> None:
    assert_error(animate(server, b""), 400, "bad_audio")


def test_a_truncated_wav_is_bad_audio(server: RunningServer) -> None:
    half = SAMPLE_BYTES[: len(SAMPLE_BYTES) // 2]  # the header still promises all 6 s
    message = assert_error(animate(server, half), 400, "bad_audio")
    assert "truncated" in message


def test_a_float_wav_with_nan_is_bad_audio(
    server: RunningServer, speech: tuple[np.ndarray, int]
) -> None:
    samples, rate = speech
    floats = samples[:16_000].astype(np.float32) / 32768
    floats[1234] = np.nan
    message = assert_error(animate(server, wav_bytes(floats, rate, "FLOAT")), 400, "bad_audio")
    assert "NaN" in message


def test_missing_audio_is_422(server: RunningServer) -> None:
    response = post(server, "/animate", {"face": ("face.png", ASTRONAUT_PNG, "image/png")})
    message = assert_error(response, 422, "bad_message")
    assert "audio" in message


def test_missing_face_on_faces_is_422(server: RunningServer) -> None:
    response = post(server, "/faces", {"photo": ("face.png", ASTRONAUT_PNG, "image/png")})
    message = assert_error(response, 422, "bad_message")
    assert "face" in message


# --- metrics ----------------------------------------------------------------------------------


def test_metrics_count_requests_and_errors(server: RunningServer) -> None:
    before = metric_values(server)
    assert animate(server).status_code == 200
    assert animate(server, b"not audio at all, just text").status_code == 400
    assert animate(server, face_id="ffffffffffffffff").status_code == 404
    assert upload_face(server, ASTRONAUT_PNG).status_code == 200
    after = metric_values(server)

    def grew(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert requests_total(after, "animate", "ok") - requests_total(before, "animate", "ok") == 1
    rejected = requests_total(after, "animate", "rejected")
    assert rejected - requests_total(before, "animate", "rejected") == 2
    assert requests_total(after, "faces", "ok") - requests_total(before, "faces", "ok") == 1
    assert errors_total(after, "bad_audio") - errors_total(before, "bad_audio") == 1
    assert errors_total(after, "bad_face") - errors_total(before, "bad_face") == 1
    assert grew(("pmmtalk_compute_seconds_count", (("kind", "animate"),))) == 1


# --- limits -----------------------------------------------------------------------------------


def test_within_the_limits_works(limited: RunningServer, speech: tuple[np.ndarray, int]) -> None:
    samples, rate = speech
    clip = samples[: int(SMALL_AUDIO_S * rate)]
    response = animate(limited, wav_bytes(clip, rate))
    assert response.status_code == 200, response.text
    check_animation(response.json(), clip.shape[0], rate)


def test_an_upload_over_the_byte_limit_is_413(limited: RunningServer) -> None:
    message = assert_error(animate(limited, b"\0" * (SMALL_UPLOAD_BYTES + 1)), 413, "too_large")
    assert str(SMALL_UPLOAD_BYTES) in message


def test_audio_over_the_duration_limit_is_413(limited: RunningServer) -> None:
    assert len(SAMPLE_BYTES) < SMALL_UPLOAD_BYTES  # refused for its length, not its size
    message = assert_error(animate(limited), 413, "too_large")
    assert "limit" in message


def test_a_face_upload_over_the_byte_limit_is_413(
    limited: RunningServer, speech: tuple[np.ndarray, int]
) -> None:
    samples, rate = speech
    big = b"\0" * (SMALL_UPLOAD_BYTES + 1)
    assert_error(animate(limited, wav_bytes(samples[:rate], rate), face=big), 413, "too_large")
    assert_error(upload_face(limited, big), 413, "too_large")


def test_a_photo_over_the_pixel_limit_is_413(
    limited: RunningServer, speech: tuple[np.ndarray, int]
) -> None:
    assert len(ASTRONAUT_PNG) < SMALL_UPLOAD_BYTES  # refused for its pixels, not its bytes
    message = assert_error(upload_face(limited, ASTRONAUT_PNG), 413, "too_large")
    assert str(SMALL_IMAGE_PIXELS) in message
    samples, rate = speech
    audio = wav_bytes(samples[:rate], rate)
    assert_error(animate(limited, audio, face=ASTRONAUT_PNG), 413, "too_large")


def test_limit_refusals_are_counted(limited: RunningServer) -> None:
    before = errors_total(metric_values(limited), "too_large")
    assert animate(limited).status_code == 413
    assert errors_total(metric_values(limited), "too_large") - before == 1


# --- API keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": "wrong"},
        {"Authorization": f"Basic {API_KEY}"},
    ],
)
def test_without_the_key_requests_are_401(keyed: RunningServer, headers: dict[str, str]) -> None:
    message = assert_error(animate(keyed, headers=headers), 401, "unauthorized")
    assert "API key" in message
    response = httpx.post(
        f"{keyed.http}/faces",
        files={"face": ("face.png", ASTRONAUT_PNG, "image/png")},
        headers=headers,
        timeout=TIMEOUT_S,
    )
    assert_error(response, 401, "unauthorized")
    assert_error(httpx.get(f"{keyed.http}/info", headers=headers), 401, "unauthorized")


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {API_KEY}"}, {"X-API-Key": API_KEY}]
)
def test_with_the_key_requests_are_answered(
    keyed: RunningServer, headers: dict[str, str], speech: tuple[np.ndarray, int]
) -> None:
    samples, rate = speech
    response = animate(keyed, headers=headers)
    assert response.status_code == 200, response.text
    check_animation(response.json(), samples.shape[0], rate)
    assert httpx.get(f"{keyed.http}/info", headers=headers).status_code == 200


def test_a_refused_key_costs_no_compute(keyed: RunningServer) -> None:
    before = metric_values(keyed)
    assert animate(keyed).status_code == 401
    after = metric_values(keyed)
    assert errors_total(after, "unauthorized") - errors_total(before, "unauthorized") == 1
    key = ("pmmtalk_compute_seconds_count", (("kind", "animate"),))
    assert after.get(key, 0.0) == before.get(key, 0.0)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_monitoring_needs_no_key(keyed: RunningServer, path: str) -> None:
    assert httpx.get(f"{keyed.http}{path}", timeout=TIMEOUT_S).status_code == 200
