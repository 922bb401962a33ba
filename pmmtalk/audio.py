"""Speech input: decode any audio file libsndfile reads into 16 kHz mono float32.

Decoding is libsndfile's (through soundfile), resampling is soxr's. What this module adds is the
checks a user's upload needs: empty, not audio, truncated, silent-by-construction (zero samples),
non-finite samples and too long, each reported as an :class:`~pmmtalk.errors.AudioError` whose
message says what to send instead.
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import soundfile as sf
import soxr

from models.blendshapes import SAMPLE_RATE_HZ, num_frames
from pmmtalk.errors import AudioError, AudioTooLongError

logger = logging.getLogger(__name__)

TARGET_SAMPLE_RATE_HZ: Final = SAMPLE_RATE_HZ
"""Rate of every array this module returns; the network's input rate."""

AudioSource = str | os.PathLike[str] | bytes | BinaryIO
"""A path, the file's bytes, or a binary file object positioned at the start of the file."""

# The formats worth naming to a user, in libsndfile's spelling; the message lists those this
# build of libsndfile actually has.
_NAMED_FORMATS: Final = ("WAV", "FLAC", "OGG", "MP3", "AIFF")

# libsndfile checks each chunk size against the file length and, when the header claims more
# than the file holds, logs "<chunk> : <declared> (should be <present>)" and then silently reads
# only what is there. soundfile exposes that log (SoundFile.extra_info) but no flag, so the log
# is the only place the mismatch shows: 'data' is the WAV/WAVEX sample chunk, 'SSND' AIFF's.
_SHORT_CHUNK_RE: Final = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
# RF64 keeps its true sizes in a 'ds64' chunk and reports the mismatch as a frame count.
_SHORT_RF64_RE: Final = re.compile(
    r"Calculated frame count (\d+) does not match value from 'ds64' chunk of (\d+)"
)
# Writers that stream to a pipe cannot seek back to fill in the size, so they leave a
# placeholder (0xFFFFFFFF from ffmpeg, about 0x7FFFF000 from sox). Such files are whole, not
# truncated; any declared size at or above this is treated as "unknown".
_STREAMING_SIZE_PLACEHOLDER_BYTES: Final = 0x7FFF0000

# A cut MP3 reads short of the length its header (Xing) promised. MP3s without that header get a
# length estimated from the file size, which can overshoot a whole file by a frame or a trailing
# tag, so only a shortfall beyond this fraction of the promised length counts as truncation.
_LENGTH_ESTIMATE_TOLERANCE: Final = 0.01


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """A decoded clip, resampled, with what the source file was."""

    samples: np.ndarray
    """Mono speech at :data:`TARGET_SAMPLE_RATE_HZ`, shape (n,), float32, nominally in [-1, 1]."""
    sample_rate_hz: int
    """Rate of ``samples``: always :data:`TARGET_SAMPLE_RATE_HZ`."""
    source_sample_rate_hz: int
    """Sample rate of the file as decoded."""
    source_channels: int
    """Channel count of the file; all channels are averaged into ``samples``."""
    duration_s: float
    """Length of the source in seconds (source frames / source rate)."""
    source_frames: int
    """Samples per channel in the file as decoded."""

    @property
    def num_frames(self) -> int:
        """Animation frames this clip gets: ceil(source_frames * 30 / source rate)."""
        return num_frames(self.source_frames, self.source_sample_rate_hz)


def decode_audio(source: AudioSource, *, max_seconds: float | None = None) -> DecodedAudio:
    """Decode an audio file to mono float32 at 16 kHz and say what the source was.

    Args:
        source: a path, the file's bytes, or a binary file object. Anything libsndfile reads:
            WAV (8/16/24/32-bit integer or 32/64-bit float), FLAC, OGG/Vorbis and more; any
            sample rate and channel count.
        max_seconds: reject clips longer than this many seconds of source audio; None for no
            limit.

    Returns:
        :class:`DecodedAudio` whose ``samples`` have shape (n,), dtype float32, at
        ``TARGET_SAMPLE_RATE_HZ``, n = round(source_frames * 16000 / source_rate). Channels are
        averaged (a plain mean, no gain); integer PCM is scaled to [-1, 1), float files are
        passed through unscaled.

    Raises:
        AudioError: the input is empty, missing, not audio, truncated, has no samples, holds NaN
            or infinite values, or is longer than ``max_seconds``.
    """
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
    name, opened = _open_source(source)
    try:
        with sf.SoundFile(opened) as f:
            source_rate_hz = int(f.samplerate)
            channels = int(f.channels)
            declared_frames = int(f.frames)
            _check_header_length(name, f.extra_info)
            # Checked before decoding, so an over-long upload costs no decode time or memory.
            declared_s = declared_frames / source_rate_hz
            if max_seconds is not None and declared_s > max_seconds:
                raise AudioTooLongError(
                    f"{name} is {declared_s:.1f} s long, over the {max_seconds:g} s limit; "
                    "send a shorter clip or split it into parts"
                )
            frames = _read_all(name, f, declared_frames)
    except sf.LibsndfileError as e:
        raise AudioError(
            f"{name} is not a readable audio file ({_libsndfile_reason(e)}); "
            f"send {_accepted_formats_text()}"
        ) from e

    if frames.shape[0] == 0:
        raise AudioError(
            f"{name} contains no audio samples; send a recording with speech in it "
            "(if the file was cut short in transfer, send the complete file)"
        )
    finite = np.isfinite(frames)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise AudioError(
            f"{name} contains {bad} NaN or infinite sample values; every sample must be a finite "
            "number: re-export the audio from its editor or recorder"
        )
    duration_s = frames.shape[0] / source_rate_hz

    mono = frames[:, 0] if channels == 1 else frames.mean(axis=1, dtype=np.float32)
    # Float files may hold samples beyond full scale; clip them there, as playback would, so that
    # huge finite values cannot overflow the resampler or the model.
    mono = np.clip(mono, -1.0, 1.0)
    if source_rate_hz == TARGET_SAMPLE_RATE_HZ:
        samples = np.ascontiguousarray(mono, dtype=np.float32)
    else:
        samples = soxr.resample(mono, source_rate_hz, TARGET_SAMPLE_RATE_HZ, quality="HQ")
        samples = np.ascontiguousarray(samples, dtype=np.float32)
    logger.debug(
        "decoded %s: %d Hz, %d channel(s), %.3f s -> %d samples at %d Hz",
        name,
        source_rate_hz,
        channels,
        duration_s,
        samples.shape[0],
        TARGET_SAMPLE_RATE_HZ,
    )
    return DecodedAudio(
        samples=samples,
        sample_rate_hz=TARGET_SAMPLE_RATE_HZ,
        source_sample_rate_hz=source_rate_hz,
        source_channels=channels,
        duration_s=duration_s,
        source_frames=int(frames.shape[0]),
    )


def load_audio(source: AudioSource, *, max_seconds: float | None = None) -> np.ndarray:
    """Decode an audio file to the network's input: mono float32 samples at 16 kHz, shape (n,).

    A thin wrapper over :func:`decode_audio` (same arguments, same errors) for callers that need
    only the samples.
    """
    return decode_audio(source, max_seconds=max_seconds).samples


def _open_source(source: AudioSource) -> tuple[str, str | io.BytesIO | BinaryIO]:
    """Return (a name for messages, something soundfile can open), rejecting empty input."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError(_empty_message("the audio data"))
        return "the audio data", io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise AudioError(f"audio file not found: {path}; check the path")
        if not path.is_file():
            raise AudioError(f"{path} is not a file; pass the path of an audio file")
        if path.stat().st_size == 0:
            raise AudioError(_empty_message(str(path)))
        return str(path), str(path)
    name = str(getattr(source, "name", "the audio stream"))
    # Read into memory: uploads may arrive on streams that cannot seek, which libsndfile needs.
    data = source.read()
    if not data:
        raise AudioError(_empty_message(name))
    return name, io.BytesIO(data)


def _empty_message(name: str) -> str:
    return f"{name} is empty (0 bytes); send {_accepted_formats_text()} with speech in it"


def _accepted_formats_text() -> str:
    available = sf.available_formats()
    named = [fmt for fmt in _NAMED_FORMATS if fmt in available]
    return "an audio file: " + ", ".join(named) + " or another format libsndfile reads"


def _libsndfile_reason(error: sf.LibsndfileError) -> str:
    # str(error) starts "Error opening <repr of a file object>", which means nothing to a user;
    # libsndfile's own words are in error_string.
    return error.error_string.strip() or f"libsndfile error {error.code}"


def _check_header_length(name: str, log: str) -> None:
    """Raise if libsndfile's log shows the header promising more audio than the file holds."""
    for match in _SHORT_CHUNK_RE.finditer(log):
        declared, present = int(match[1]), int(match[2])
        if present < declared < _STREAMING_SIZE_PLACEHOLDER_BYTES:
            raise AudioError(
                f"{name} is truncated: its header declares {declared} bytes of audio but the file "
                f"holds only {present}; the file was probably cut short in transfer, so send "
                "the complete file"
            )
    for match in _SHORT_RF64_RE.finditer(log):
        present, declared = int(match[1]), int(match[2])
        if present < declared:
            raise AudioError(
                f"{name} is truncated: its header declares {declared} frames but the file holds "
                f"only {present}; the file was probably cut short in transfer, so send the "
                "complete file"
            )


def _read_all(name: str, f: sf.SoundFile, declared_frames: int) -> np.ndarray:
    """Read every frame as float32, shape (frames, channels); raise if the data stops early."""
    try:
        frames = f.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        # FLAC knows its length from the header and fails mid-stream when the rest is missing.
        raise AudioError(
            f"{name} is truncated or corrupt: decoding stopped with '{_libsndfile_reason(e)}'; "
            "send the complete, undamaged file"
        ) from e
    if frames.shape[0] < declared_frames * (1 - _LENGTH_ESTIMATE_TOLERANCE):
        raise AudioError(
            f"{name} is truncated: its header declares {declared_frames} frames but only "
            f"{frames.shape[0]} could be read; send the complete file"
        )
    return frames
