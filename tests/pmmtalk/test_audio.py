"""pmmtalk.audio: real files in, 16 kHz mono float32 out, and clear errors for bad uploads."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pmmtalk.audio import TARGET_SAMPLE_RATE_HZ, decode_audio, load_audio
from pmmtalk.errors import AudioError, InputError

TONE_HZ = 440.0
CLIP_SECONDS = 0.5


def sine(sample_rate_hz: int, channels: int = 1, seconds: float = CLIP_SECONDS) -> np.ndarray:
    """A 440 Hz sine at half scale, shape (frames, channels), same signal on every channel."""
    t = np.arange(round(seconds * sample_rate_hz)) / sample_rate_hz
    tone = 0.5 * np.sin(2 * np.pi * TONE_HZ * t)
    return np.repeat(tone[:, None], channels, axis=1)


def write(path: Path, data: np.ndarray, rate_hz: int, fmt: str, subtype: str | None) -> Path:
    sf.write(path, data, rate_hz, format=fmt, subtype=subtype)
    return path


def dominant_frequency_hz(samples: np.ndarray, sample_rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[0])))
    return float(np.fft.rfftfreq(samples.shape[0], 1 / sample_rate_hz)[np.argmax(spectrum)])


def wav_bytes(data: np.ndarray, rate_hz: int = 16_000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, rate_hz, format="WAV", subtype=subtype)
    return buf.getvalue()


def assert_resampled_sine(samples: np.ndarray, source_frames: int, source_rate_hz: int) -> None:
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    expected = round(source_frames * TARGET_SAMPLE_RATE_HZ / source_rate_hz)
    assert abs(samples.shape[0] - expected) <= 1
    # 0.5 s of signal gives 2 Hz FFT bins.
    assert dominant_frequency_hz(samples, TARGET_SAMPLE_RATE_HZ) == pytest.approx(TONE_HZ, abs=2)


@pytest.mark.parametrize(
    ("fmt", "subtype", "suffix"),
    [
        ("WAV", "PCM_U8", "wav"),
        ("WAV", "PCM_16", "wav"),
        ("WAV", "PCM_24", "wav"),
        ("WAV", "PCM_32", "wav"),
        ("WAV", "FLOAT", "wav"),
        ("FLAC", "PCM_16", "flac"),
        ("FLAC", "PCM_24", "flac"),
        ("OGG", "VORBIS", "ogg"),
    ],
)
def test_formats_decode_to_16khz_mono_float32(
    tmp_path: Path, fmt: str, subtype: str, suffix: str
) -> None:
    rate_hz = 44_100
    data = sine(rate_hz)
    path = write(tmp_path / f"tone.{suffix}", data, rate_hz, fmt, subtype)

    decoded = decode_audio(path)

    assert_resampled_sine(decoded.samples, data.shape[0], rate_hz)
    assert decoded.sample_rate_hz == TARGET_SAMPLE_RATE_HZ
    assert decoded.source_sample_rate_hz == rate_hz
    assert decoded.source_channels == 1
    assert decoded.duration_s == pytest.approx(CLIP_SECONDS, abs=1e-3)
    # The amplitude survives decoding and resampling (8-bit and Vorbis are lossy, hence the slack).
    assert np.max(np.abs(decoded.samples)) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("rate_hz", [8_000, 16_000, 22_050, 44_100, 48_000])
def test_any_sample_rate_is_resampled_to_16khz(tmp_path: Path, rate_hz: int) -> None:
    data = sine(rate_hz)
    path = write(tmp_path / "tone.wav", data, rate_hz, "WAV", "PCM_16")

    samples = load_audio(path)

    assert_resampled_sine(samples, data.shape[0], rate_hz)


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_is_mixed_down_to_mono(tmp_path: Path, channels: int) -> None:
    rate_hz = 48_000
    data = sine(rate_hz, channels)
    path = write(tmp_path / "tone.wav", data, rate_hz, "WAV", "FLOAT")

    decoded = decode_audio(path)

    assert decoded.source_channels == channels
    assert_resampled_sine(decoded.samples, data.shape[0], rate_hz)
    # Identical channels average to the same signal: no summing gain.
    assert np.max(np.abs(decoded.samples)) == pytest.approx(0.5, abs=0.01)


def test_opposite_phase_stereo_mixes_to_silence(tmp_path: Path) -> None:
    # A real mean of channels cancels; taking one channel or a sum of magnitudes would not.
    tone = sine(22_050)[:, 0]
    path = write(tmp_path / "phase.wav", np.stack([tone, -tone], axis=1), 22_050, "WAV", "FLOAT")

    samples = load_audio(path)

    assert np.max(np.abs(samples)) < 1e-4


def test_six_channel_ogg_decodes(tmp_path: Path) -> None:
    data = sine(48_000, 6)
    path = write(tmp_path / "surround.ogg", data, 48_000, "OGG", "VORBIS")

    decoded = decode_audio(path)

    assert decoded.source_channels == 6
    assert_resampled_sine(decoded.samples, data.shape[0], 48_000)


def test_bytes_and_file_object_sources_match_path(tmp_path: Path) -> None:
    data = sine(22_050, 2)
    path = write(tmp_path / "tone.flac", data, 22_050, "FLAC", "PCM_16")

    from_path = load_audio(path)
    from_str = load_audio(str(path))
    from_bytes = load_audio(path.read_bytes())
    with path.open("rb") as f:
        from_file = load_audio(f)

    for samples in (from_str, from_bytes, from_file):
        np.testing.assert_array_equal(samples, from_path)


def test_errors_are_input_errors() -> None:
    # The server maps InputError to a 4xx response; a ValueError handler also catches it.
    assert issubclass(AudioError, InputError)
    assert issubclass(AudioError, ValueError)


def test_empty_bytes_are_rejected() -> None:
    with pytest.raises(AudioError, match=r"empty \(0 bytes\)"):
        load_audio(b"")


def test_empty_file_and_stream_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav is empty"):
        load_audio(path)
    with pytest.raises(AudioError, match="empty"):
        load_audio(io.BytesIO(b""))


def test_text_file_is_not_audio_and_message_lists_formats(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are meeting notes, not a recording\n" * 20)

    with pytest.raises(AudioError) as info:
        load_audio(path)

    message = str(info.value)
    assert "notes.txt is not a readable audio file" in message
    assert "Format not recognised" in message
    for fmt in ("WAV", "FLAC", "OGG"):
        assert fmt in message


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
@pytest.mark.parametrize("keep_fraction", [0.5, 0.9])
def test_wav_cut_short_mid_data_is_truncated(subtype: str, keep_fraction: float) -> None:
    # libsndfile opens such a file without complaint and silently reads only the frames present;
    # the header's data size is what shows the cut.
    whole = wav_bytes(sine(16_000), subtype=subtype)
    cut = whole[: int(len(whole) * keep_fraction)]

    with pytest.raises(AudioError, match="is truncated: its header declares"):
        load_audio(cut)


def test_wav_from_a_pipe_with_placeholder_size_is_accepted() -> None:
    # ffmpeg writing to a pipe cannot seek back, so it leaves 0xFFFFFFFF as the data size.
    data = bytearray(wav_bytes(sine(16_000)))
    data_chunk = data.find(b"data")
    data[4:8] = data[data_chunk + 4 : data_chunk + 8] = (0xFFFFFFFF).to_bytes(4, "little")

    samples = load_audio(bytes(data))

    assert samples.shape[0] == round(CLIP_SECONDS * 16_000)


def test_wav_with_wrong_riff_size_but_whole_data_is_accepted() -> None:
    # Only the sample data matters: a file whose RIFF size is off but whose data chunk is whole
    # (a damaged trailing metadata chunk) still decodes.
    data = bytearray(wav_bytes(sine(16_000)))
    data[4:8] = (len(data) + 100).to_bytes(4, "little")

    samples = load_audio(bytes(data))

    assert samples.shape[0] == round(CLIP_SECONDS * 16_000)


def test_flac_cut_short_is_truncated_or_corrupt() -> None:
    buf = io.BytesIO()
    sf.write(buf, sine(16_000), 16_000, format="FLAC")
    cut = buf.getvalue()[: len(buf.getvalue()) * 3 // 4]

    with pytest.raises(AudioError, match="truncated or corrupt"):
        load_audio(cut)


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile built without MP3")
def test_mp3_cut_short_is_truncated() -> None:
    # libsndfile reads a cut MP3 without error; only the frame count falls short of the header's.
    buf = io.BytesIO()
    sf.write(buf, sine(16_000, seconds=2.0), 16_000, format="MP3")
    whole = buf.getvalue()

    assert load_audio(whole).shape[0] == pytest.approx(32_000, abs=1)
    with pytest.raises(AudioError, match="header declares 32000 frames but only"):
        load_audio(whole[: len(whole) // 2])


def test_float_wav_with_nan_is_rejected() -> None:
    data = sine(16_000)
    data[100, 0] = np.nan
    data[200, 0] = np.inf

    with pytest.raises(AudioError, match="2 NaN or infinite sample values"):
        load_audio(wav_bytes(data, subtype="FLOAT"))


def test_zero_sample_wav_is_rejected() -> None:
    with pytest.raises(AudioError, match="contains no audio samples"):
        load_audio(wav_bytes(np.zeros((0, 1))))


def test_longer_than_max_seconds_is_rejected() -> None:
    data = wav_bytes(sine(16_000, seconds=2.0))

    with pytest.raises(AudioError, match=r"2\.0 s long, over the 1\.5 s limit"):
        load_audio(data, max_seconds=1.5)
    assert load_audio(data, max_seconds=2.0).shape == (32_000,)


def test_max_seconds_applies_to_compressed_formats(tmp_path: Path) -> None:
    path = write(tmp_path / "long.ogg", sine(16_000, seconds=2.0), 16_000, "OGG", "VORBIS")

    with pytest.raises(AudioError, match="over the 1 s limit"):
        load_audio(path, max_seconds=1)


def test_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_take.wav"

    with pytest.raises(AudioError, match=r"audio file not found: .*no_such_take\.wav"):
        load_audio(missing)


def test_non_positive_max_seconds_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="max_seconds must be positive"):
        load_audio(wav_bytes(sine(16_000)), max_seconds=0)
