"""Microphone input for a stream, through the sounddevice package (PortAudio).

sounddevice is imported only when a microphone is asked for: importing it needs the PortAudio
shared library, which servers and containers often lack, and the rest of the client must work
there. Every way of not having a microphone (no package, no PortAudio, no input device) is a
`MicrophoneError` that says what to install or plug in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from clients.client import DEFAULT_CHUNK_MS, EXIT_INPUT, ClientError, PcmSource

logger = logging.getLogger(__name__)


class MicrophoneError(ClientError):
    """No microphone can be used on this machine: the message says why and what to do."""

    exit_code = EXIT_INPUT


@dataclass(frozen=True)
class InputDevice:
    """A capture device: its PortAudio index, name and default rate in Hz."""

    index: int
    name: str
    sample_rate: int


def load_sounddevice() -> ModuleType:
    """The sounddevice module, or a `MicrophoneError` naming what is missing."""
    try:
        import sounddevice
    except ImportError:
        raise MicrophoneError(
            "microphone input needs the sounddevice package: pip install sounddevice"
        ) from None
    except OSError as exc:  # sounddevice raises this when the PortAudio library is missing
        raise MicrophoneError(
            f"microphone input needs the PortAudio library ({exc}): install it with "
            "`apt-get install libportaudio2` (Debian, Ubuntu) or `brew install portaudio` (macOS)"
        ) from None
    return sounddevice


def input_device(device: int | str | None = None) -> InputDevice:
    """The device to record from: ``device`` (an index or part of a name), else the default."""
    sd = load_sounddevice()
    try:
        found: Any = sd.query_devices(device, kind="input")
    except (sd.PortAudioError, ValueError) as exc:
        which = "the default input device" if device is None else f"input device {device!r}"
        raise MicrophoneError(
            f"no microphone: {which} cannot be opened ({exc}); connect a microphone, or pick "
            "another with --device (`python -m sounddevice` lists them)"
        ) from None
    if int(found["max_input_channels"]) < 1:
        raise MicrophoneError(f"device {found['name']!r} has no input channels; pick a microphone")
    return InputDevice(int(found["index"]), str(found["name"]), round(found["default_samplerate"]))


def microphone_source(
    seconds: float,
    *,
    device: int | str | None = None,
    chunk_ms: float = DEFAULT_CHUNK_MS,
) -> PcmSource:
    """Record ``seconds`` of mono int16 audio at the device's own rate, in ``chunk_ms`` blocks.

    The device is checked now, so a missing microphone fails before anything connects; it is
    opened when the stream asks for the first chunk.
    """
    if not seconds > 0:
        raise MicrophoneError(f"the recording length must be above 0 s, got {seconds}")
    found = input_device(device)
    chunk_samples = max(1, round(found.sample_rate * chunk_ms / 1000))
    total_samples = round(seconds * found.sample_rate)
    chunks = _record(found, chunk_samples, total_samples)
    return PcmSource(found.sample_rate, 1, chunks)


async def _record(
    found: InputDevice, chunk_samples: int, total_samples: int
) -> AsyncIterator[np.ndarray]:
    sd = load_sounddevice()
    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue[np.ndarray] = asyncio.Queue()

    def captured(indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        # PortAudio calls this on its own thread; the queue belongs to the event loop.
        if status:
            logger.warning("microphone: %s", status)
        loop.call_soon_threadsafe(blocks.put_nowait, indata.copy())

    try:
        recorder = sd.InputStream(
            samplerate=found.sample_rate,
            blocksize=chunk_samples,
            device=found.index,
            channels=1,
            dtype="int16",
            callback=captured,
        )
    except sd.PortAudioError as exc:
        raise MicrophoneError(f"cannot open {found.name!r} for recording: {exc}") from None
    logger.info("recording from %s at %d Hz", found.name, found.sample_rate)
    with recorder:
        recorded = 0
        while recorded < total_samples:
            block = (await blocks.get())[: total_samples - recorded]
            recorded += len(block)
            yield block
