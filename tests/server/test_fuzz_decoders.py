"""Property-based fuzzing of every decoder a client's bytes reach, with hypothesis.

The decoders: uploaded audio files (`pmmtalk.audio.decode_audio`), photos (`server.faces.
decode_photo`, which probes with Pillow and decodes with OpenCV in `pmmtalk.face.load_image`),
a start message's inline base64 face (`server.inputs.decode_base64_photo`), streamed PCM chunks
(`server.stream.PcmDecoder`), client JSON messages (`server.protocol.parse_client_message`) and
the binary frame format PMF1 that clients decode (`server.protocol.decode_binary_frames`).

Each gets arbitrary bytes and, for the file formats, real files (made here, in memory) that are
truncated, overwritten, extended and given extreme header fields. The properties: a decoder
either returns a well-formed result (the shapes, dtypes and ranges its docstring promises, within
the limits it was given) or raises the one user-facing error type of its kind, with a message;
any other exception would be a 500 or a dropped stream on the server. A decode must also finish
within `HANG_S` (the C decoders run under a hang guard). Runs are derandomized, so CI sees the
same examples every time; the ``fuzz_long`` variant runs many more (docs/robustness.md).
"""

from __future__ import annotations

import base64
import io
import math
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from PIL import Image

from pmmtalk.audio import TARGET_SAMPLE_RATE_HZ, DecodedAudio, decode_audio
from pmmtalk.errors import AudioError, AudioTooLongError, FaceError
from server.faces import FaceTooLargeError, decode_photo
from server.inputs import decode_base64_photo
from server.protocol import (
    BYTES_PER_SAMPLE,
    NUM_BLENDSHAPES,
    Encoding,
    End,
    Error,
    Interrupt,
    ProtocolError,
    Start,
    decode_binary_frames,
    encode_binary_frames,
    parse_client_message,
)
from server.stream import PcmDecoder

T = TypeVar("T")

CI_EXAMPLES: Final = 300
"""Examples per property in the default run: about ten seconds for all of them."""
LONG_EXAMPLES: Final = 5_000
"""Examples per property in the ``fuzz_long`` run."""
HANG_S: Final = 20.0
"""A single decode taking this long counts as a hang (each takes milliseconds)."""
MAX_AUDIO_S: Final = 2.0
"""The duration limit given to decode_audio: the corpus files are 0.25 s long, so a mutated
header that makes a file look longer must hit this limit, not a decode of its claimed length."""
MAX_IMAGE_PIXELS: Final = 64 * 64
"""The pixel limit given to decode_photo: the corpus photos have 32 x 24 pixels."""


def fuzz_settings(max_examples: int) -> settings:
    # No deadline: the cores are shared, so timing is left to the hang guard; derandomized and
    # without an example database, so a run is the same everywhere and writes nothing.
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


_guard = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fuzz-hang-guard")


def bounded(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, failing (not blocking the suite) if it runs past `HANG_S`."""
    return _guard.submit(fn, *args, **kwargs).result(timeout=HANG_S)


# --- corpora: small valid files, made in memory -----------------------------------------------


def _tone(seconds: float, rate: int, channels: int) -> np.ndarray:
    """(n, channels) float32: a quiet chord with some noise, like speech in level."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(rate + channels)
    mono = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1330 * t)
    columns = [mono + 0.01 * rng.standard_normal(t.size) for _ in range(channels)]
    return np.stack(columns, axis=1).astype(np.float32)


def _sound_file(fmt: str, subtype: str, rate: int, channels: int) -> bytes:
    out = io.BytesIO()
    sf.write(out, _tone(0.25, rate, channels), rate, format=fmt, subtype=subtype)
    return out.getvalue()


AUDIO_CORPUS: Final = {
    "wav-pcm16-16k-mono": _sound_file("WAV", "PCM_16", 16_000, 1),
    "wav-pcm24-44k-stereo": _sound_file("WAV", "PCM_24", 44_100, 2),
    "wav-float-8k-mono": _sound_file("WAV", "FLOAT", 8_000, 1),
    "flac-48k-stereo": _sound_file("FLAC", "PCM_16", 48_000, 2),
    "ogg-vorbis-22k-mono": _sound_file("OGG", "VORBIS", 22_050, 1),
    "aiff-pcm16-32k-mono": _sound_file("AIFF", "PCM_16", 32_000, 1),
    "rf64-pcm16-16k-mono": _sound_file("RF64", "PCM_16", 16_000, 1),
}


def _image_file(fmt: str, mode: str) -> bytes:
    rows = np.linspace(0, 255, 24, dtype=np.uint8)[:, None]
    cols = np.linspace(0, 255, 32, dtype=np.uint8)[None, :]
    rgb = np.stack([rows + 0 * cols, cols + 0 * rows, (rows // 2 + cols // 2)], axis=2)
    image = Image.fromarray(rgb.astype(np.uint8))
    if mode == "I;16":
        image = Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257)
    elif mode != "RGB":
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


IMAGE_CORPUS: Final = {
    "png-rgb": _image_file("PNG", "RGB"),
    "png-rgba": _image_file("PNG", "RGBA"),
    "png-gray16": _image_file("PNG", "I;16"),
    "jpeg": _image_file("JPEG", "RGB"),
    "bmp": _image_file("BMP", "RGB"),
    "webp": _image_file("WEBP", "RGB"),
    "gif": _image_file("GIF", "P"),
    "tiff": _image_file("TIFF", "RGB"),
}

HEADER_BYTES: Final = 64
"""Mutations land in the first bytes half the time: that is where the sizes and counts live."""
EXTREME_U32: Final = (0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF)


@st.composite
def mutated(draw: st.DrawFn, corpus: dict[str, bytes]) -> bytes:
    """A corpus file with one to four edits: cut, overwrite, insert or an extreme u32 field."""
    data = bytearray(corpus[draw(st.sampled_from(sorted(corpus)))])
    for _ in range(draw(st.integers(1, 4))):
        size = len(data)
        in_header = draw(st.booleans())
        at = draw(st.integers(0, min(size, HEADER_BYTES) if in_header else size))
        edit = draw(st.sampled_from(["cut", "overwrite", "insert", "extreme-u32"]))
        if edit == "cut":
            del data[at:]
        elif edit == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(patch)] = patch
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            value = draw(st.sampled_from(EXTREME_U32))
            fmt = draw(st.sampled_from(["<I", ">I"]))  # RIFF is little-endian, AIFF and PNG big
            data[at : at + 4] = struct.pack(fmt, value)
    return bytes(data)


# --- properties ---------------------------------------------------------------------------------


def check_audio_file(data: bytes) -> None:
    """decode_audio gives 16 kHz mono finite float32 of the stated length, or an AudioError."""
    try:
        decoded: DecodedAudio = bounded(decode_audio, data, max_seconds=MAX_AUDIO_S)
    except AudioError as exc:
        assert str(exc), "an audio error must say what was wrong"
        if isinstance(exc, AudioTooLongError):
            assert f"{MAX_AUDIO_S:g} s" in str(exc)
        return
    samples = decoded.samples
    # A file of a few samples may resample to none (the animator still gives it its frames).
    assert samples.dtype == np.float32 and samples.ndim == 1 and np.isfinite(samples).all()
    assert decoded.source_frames >= 1
    assert decoded.sample_rate_hz == TARGET_SAMPLE_RATE_HZ
    assert decoded.source_sample_rate_hz > 0 and decoded.source_channels >= 1
    assert 0 < decoded.duration_s <= MAX_AUDIO_S
    expected = decoded.source_frames * TARGET_SAMPLE_RATE_HZ / decoded.source_sample_rate_hz
    assert abs(samples.size - expected) <= 1, (samples.size, expected)
    assert decoded.num_frames == math.ceil(
        decoded.source_frames * 30 / decoded.source_sample_rate_hz
    )


def check_photo(data: bytes) -> None:
    """decode_photo gives RGB uint8 within the pixel limit, or a FaceError (never a decode of a
    photo over the limit: the check must hold for what OpenCV decodes, not only Pillow's probe)."""
    try:
        rgb = bounded(decode_photo, data, MAX_IMAGE_PIXELS)
    except FaceError as exc:
        assert str(exc), "a face error must say what was wrong"
        if isinstance(exc, FaceTooLargeError):
            assert str(MAX_IMAGE_PIXELS) in str(exc)
        return
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    height, width = rgb.shape[:2]
    assert height >= 1 and width >= 1
    assert height * width <= MAX_IMAGE_PIXELS, f"decoded {width}x{height} past the limit"


def check_base64_face(text: str) -> None:
    """An inline face is the bytes it encodes, or a FaceError; and every payload round-trips."""
    try:
        photo = decode_base64_photo(text)
    except FaceError as exc:
        assert "base64" in str(exc)
        return
    assert isinstance(photo, bytes)


def check_base64_roundtrip(case: tuple[bytes, str]) -> None:
    payload, prefix = case
    assert decode_base64_photo(prefix + base64.b64encode(payload).decode()) == payload


PcmCase = tuple[Encoding, int, int, list[bytes]]


def check_pcm_chunks(case: PcmCase) -> None:
    """Any chunks, split anywhere: finite mono float32 at 16 kHz and the source frame count,
    or an AudioError exactly when a complete float sample is NaN or infinite."""
    encoding, channels, rate, chunks = case
    decoder = PcmDecoder(encoding, channels, rate)
    frame_bytes = BYTES_PER_SAMPLE[encoding] * channels
    received = b""
    produced = 0
    for chunk in chunks:
        received += chunk
        whole = received[: len(received) - len(received) % frame_bytes]
        complete = np.frombuffer(whole, dtype="<f4" if encoding == "pcm_f32le" else "<i2")
        try:
            out = bounded(decoder.decode, chunk)
        except AudioError as exc:
            assert not np.isfinite(complete).all(), "refused finite samples"
            assert "NaN" in str(exc)
            return
        assert np.isfinite(complete).all(), "accepted a NaN or infinite sample"
        assert out.dtype == np.float32 and out.ndim == 1 and np.isfinite(out).all()
        if encoding == "pcm_s16le" and rate == TARGET_SAMPLE_RATE_HZ:
            assert out.size == 0 or (out.min() >= -1.0 and out.max() < 1.0)
        produced += out.size
    tail, frame_count = decoder.flush()
    assert tail.dtype == np.float32 and np.isfinite(tail).all()
    source_frames = len(received) // frame_bytes
    assert frame_count == math.ceil(source_frames * 30 / rate)
    # soxr's stream returns the whole signal once flushed, within a sample of the exact length.
    expected = source_frames * TARGET_SAMPLE_RATE_HZ / rate
    assert abs(produced + tail.size - expected) <= 1.5, (produced + tail.size, expected)


def check_client_message(text: str) -> None:
    """A client text message parses to a message with in-range fields, or a bad_message
    `ProtocolError` whose message makes a well-formed `Error`."""
    try:
        message = parse_client_message(text)
    except ProtocolError as exc:
        assert exc.code == "bad_message"
        Error(code=exc.code, message=str(exc)).model_dump_json()
        assert "expected a JSON object" in str(exc)
        return
    assert isinstance(message, Start | End | Interrupt)
    if isinstance(message, Start):
        assert 8_000 <= message.sample_rate <= 192_000
        assert 1 <= message.channels <= 8
        assert message.style is None or message.style >= 0


def check_binary_frames(data: bytes) -> None:
    """PMF1 decodes to (start, (n, 32) float32) that encodes back to the same bytes, or a
    ValueError."""
    try:
        start, frames = decode_binary_frames(data)
    except ValueError as exc:
        assert str(exc)
        return
    assert frames.dtype == np.float32 and frames.shape[1] == NUM_BLENDSHAPES
    assert encode_binary_frames(start, frames) == data


# --- strategies ---------------------------------------------------------------------------------

JSON_SCALARS: Final = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
json_values = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)
START_FIELDS: Final = sorted(Start.model_fields)


@st.composite
def client_messages(draw: st.DrawFn) -> str:
    """Raw text, arbitrary JSON, or an object with a real type and real or odd fields."""
    kind = draw(st.sampled_from(["text", "json", "typed"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "json":
        return _json(draw(json_values))
    fields: dict[str, Any] = {
        "type": draw(st.sampled_from(["start", "end", "interrupt", "Start", "", "stop"]))
    }
    names = st.sampled_from(START_FIELDS) | st.text(max_size=10)
    for name in draw(st.lists(names, max_size=5, unique=True)):
        fields[name] = draw(
            json_values
            | st.integers(0, 200_000)
            | st.sampled_from(["pcm_s16le", "pcm_f32le", "json", "binary"])
        )
    return _json(fields)


def _json(value: object) -> str:
    import json

    return json.dumps(value)


pcm_cases = st.tuples(
    st.sampled_from(["pcm_s16le", "pcm_f32le"]),
    st.integers(1, 8),
    st.sampled_from([8_000, 16_000, 22_050, 44_100, 48_000, 192_000]) | st.integers(8_000, 192_000),
    st.lists(st.binary(max_size=700), max_size=10),
)

binary_frames = st.binary(max_size=600) | st.builds(
    lambda head, body: head + body,
    st.builds(
        lambda start, count: struct.pack("<4sIH", b"PMF1", start, count),
        st.integers(0, 2**32 - 1),
        st.integers(0, 4),
    ),
    st.binary(max_size=4 * NUM_BLENDSHAPES * 4 + 2),
)

PROPERTIES: Final[dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], None]]]] = {
    "audio-arbitrary-bytes": (st.binary(max_size=2048), check_audio_file),
    "audio-mutated-files": (mutated(AUDIO_CORPUS), check_audio_file),
    "photo-arbitrary-bytes": (st.binary(max_size=2048), check_photo),
    "photo-mutated-files": (mutated(IMAGE_CORPUS), check_photo),
    "base64-face-text": (
        st.text(max_size=64) | st.from_regex(r"data:image/png;base64,.*") | st.just("data:x"),
        check_base64_face,
    ),
    "base64-face-roundtrip": (
        st.tuples(st.binary(max_size=256), st.sampled_from(["", "data:image/png;base64,"])),
        check_base64_roundtrip,
    ),
    "pcm-chunks": (pcm_cases, check_pcm_chunks),
    "client-messages": (client_messages(), check_client_message),
    "binary-frames": (binary_frames, check_binary_frames),
}


def run_property(name: str, max_examples: int) -> None:
    strategy, check = PROPERTIES[name]

    def example(value: Any) -> None:  # a fresh function: hypothesis decorates it once
        note(f"{name}: {value!r}")
        check(value)

    given(strategy)(fuzz_settings(max_examples)(example))()


# Expected noise of broken files: Pillow warns about the tags and EXIF blocks mutations break, and
# libsndfile asks soundfile's in-memory reader for a negative seek, which soundfile refuses
# with an exception it cannot raise from its C callback (libsndfile then reports the error).
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:PIL.*"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored from cffi callback <function SoundFile._init_virtual_io"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]


@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_decoder_survives_fuzzing(name: str) -> None:
    run_property(name, CI_EXAMPLES)


@pytest.mark.fuzz_long
@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_decoder_survives_long_fuzzing(name: str) -> None:
    run_property(name, LONG_EXAMPLES)


# --- the corpus is what it claims to be --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(AUDIO_CORPUS))
def test_every_audio_corpus_file_decodes(name: str) -> None:
    """Mutations start from valid files; an unreadable corpus would fuzz only the error path."""
    decoded = decode_audio(AUDIO_CORPUS[name])
    assert decoded.duration_s == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("name", sorted(IMAGE_CORPUS))
def test_every_image_corpus_file_decodes(name: str) -> None:
    assert decode_photo(IMAGE_CORPUS[name], MAX_IMAGE_PIXELS).shape == (24, 32, 3)


# --- bugs the long run found, now fixed ---------------------------------------------------------


def test_a_data_url_without_a_comma_is_bad_face() -> None:
    with pytest.raises(FaceError, match="base64"):
        decode_base64_photo("data:image/png;base64")


def test_loud_float_chunks_decode_to_finite_audio() -> None:
    loud = (np.sign(np.sin(np.arange(4_800) * 0.05)) * 1e36).astype("<f4")
    decoder = PcmDecoder("pcm_f32le", 1, 48_000)
    try:
        out = np.concatenate([decoder.decode(loud.tobytes()), decoder.flush()[0]])
    except AudioError:
        return  # refusing them is a fix too
    assert np.isfinite(out).all()
