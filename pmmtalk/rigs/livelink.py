"""Live Link Face UDP packets, so Unreal's built-in Live Link Face source drives a MetaHuman.

The iPhone app Live Link Face sends one UDP datagram per captured frame to port 11111; Unreal's
Apple ARKit Face Support plugin receives it as a Live Link subject, with no extra plugin. This
module writes the same datagrams (packet version 6). Every multi-byte field is big-endian
(Unreal's network-byte-order serializer)::

    uint8     version = 6
    int32     device id length N, then N bytes of UTF-8
    int32     subject name length M, then M bytes of UTF-8
    int32     frame number      } the frame time (FQualifiedFrameTime):
    float32   sub-frame         } frame number + sub-frame at
    int32     rate numerator    } numerator / denominator frames per second
    int32     rate denominator  }
    uint8     value count = 61
    float32   x 61              the `profiles.LIVELINK61_NAMES` curves, in that order

so a packet is ``270 + N + M`` bytes. docs/rigs.md gives the sources of this layout and a
worked example.
"""

from __future__ import annotations

import datetime
import math
import socket
import struct
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Final

import numpy as np

from models.blendshapes import FPS
from pmmtalk.rigs.profiles import ARKIT52_NAMES, LIVELINK61_NAMES

LIVELINK_PORT: Final = 11111
"""The port Live Link Face sends to and Unreal listens on by default."""
PACKET_VERSION: Final = 6
MAX_STRING_BYTES: Final = 256
"""Unreal sizes its receive buffer for names of up to 256 characters."""

_FRAME_TIME: Final = struct.Struct(">ifii")  # frame number, sub-frame, rate num, rate den
_DEVICE_NAMESPACE: Final = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")  # RFC 4122 URL


def frame_values(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """52 ARKit values (``arkit52`` order) or 61 curves (``livelink61`` order) -> (61,) float32;
    the 9 rotations of a 52-value frame are 0. ValueError for another length or non-finite."""
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    if array.size == len(ARKIT52_NAMES):
        array = np.concatenate([array, np.zeros(len(LIVELINK61_NAMES) - array.size, np.float32)])
    if array.size != len(LIVELINK61_NAMES):
        raise ValueError(
            f"a Live Link Face frame takes {len(ARKIT52_NAMES)} values (the arkit52 profile) or "
            f"{len(LIVELINK61_NAMES)} (livelink61), got {array.size}"
        )
    if not np.isfinite(array).all():
        raise ValueError("a Live Link Face frame holds NaN or infinite values")
    return array


def _string(text: str, what: str) -> bytes:
    data = text.encode("utf-8")
    if not data or len(data) > MAX_STRING_BYTES:
        raise ValueError(f"the {what} must be 1 to {MAX_STRING_BYTES} bytes of UTF-8, got {text!r}")
    return struct.pack(">i", len(data)) + data


def encode_packet(
    device_id: str,
    subject_name: str,
    frame_number: int,
    values: Sequence[float] | np.ndarray,
    fps: int = FPS,
    subframe: float = 0.0,
) -> bytes:
    """One Live Link Face datagram (version 6; layout in the module docstring).

    ``frame_number`` counts frames at ``fps`` (a timecode: frames since midnight for Unreal's
    timecode sync), ``subframe`` is in [0, 1), ``values`` as `frame_values` takes them.
    """
    if not 0 <= subframe < 1:
        raise ValueError(f"subframe must be in [0, 1), got {subframe}")
    if not -(2**31) <= frame_number < 2**31:
        raise ValueError(f"frame_number must fit a signed 32-bit integer, got {frame_number}")
    curves = frame_values(values)
    return b"".join(
        (
            struct.pack(">B", PACKET_VERSION),
            _string(device_id, "device id"),
            _string(subject_name, "subject name"),
            _FRAME_TIME.pack(frame_number, subframe, fps, 1),
            struct.pack(">B", curves.size),
            curves.astype(">f4").tobytes(),
        )
    )


def time_of_day_frames(fps: int = FPS, now: datetime.datetime | None = None) -> int:
    """Whole frames at ``fps`` since the last local midnight: a timecode for "now"."""
    moment = now if now is not None else datetime.datetime.now()
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return math.floor((moment - midnight).total_seconds() * fps)


class LiveLinkSink:
    """Sends frames to Unreal (or anything that reads Live Link Face) as UDP datagrams.

    Frame ``i`` of the caller's clock goes out stamped with the frame number
    ``start_frame + i`` at ``fps`` (`frame_number`); ``start_frame`` defaults to the local time
    of day when the sink opens, so Unreal sees a timecode that advances with the animation.
    A caller that starts a new utterance, whose indices count from 0 again, calls
    `restart_clock` first so time never runs backwards. Not thread-safe; one sink per sender.

    Args:
        host: the Unreal machine's name or address (IPv4 or IPv6).
        port: its Live Link Face port (11111 unless changed in Unreal).
        subject_name: the Live Link subject the frames drive (what Unreal lists).
        device_id: tells sources apart; by default a UUID derived from ``subject_name``, so
            a restarted sender is the same device to Unreal.
        fps: the frame rate of the caller's frames and of the timecode.
        start_frame: the frame number of index 0; None = now (`time_of_day_frames`).
    """

    def __init__(
        self,
        host: str,
        port: int = LIVELINK_PORT,
        subject_name: str = "PMMTalk",
        device_id: str | None = None,
        fps: int = FPS,
        start_frame: int | None = None,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1-65535, got {port}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.subject_name = subject_name
        self.device_id = device_id or str(uuid.uuid5(_DEVICE_NAMESPACE, subject_name))
        encode_packet(self.device_id, subject_name, 0, np.zeros(len(ARKIT52_NAMES)), fps)
        self.fps = fps
        self.start_frame = start_frame if start_frame is not None else time_of_day_frames(fps)
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM
            )[0]
        except socket.gaierror as exc:
            raise ValueError(
                f"cannot resolve the Live Link host {host!r}: {exc.strerror}"
            ) from None
        self.address = address
        self._socket = socket.socket(family, kind, proto)

    def frame_number(self, frame_index: int) -> int:
        """The timecode frame number sent for the caller's frame ``frame_index``."""
        return self.start_frame + frame_index

    def restart_clock(self) -> None:
        """Make the current time of day frame index 0 (call before a new utterance)."""
        self.start_frame = time_of_day_frames(self.fps)

    def send(self, frame_index: int, values: Sequence[float] | np.ndarray) -> int:
        """Send one frame: 52 values (``arkit52``) or 61 (``livelink61``); returns bytes sent."""
        packet = encode_packet(
            self.device_id, self.subject_name, self.frame_number(frame_index), values, self.fps
        )
        return self._socket.sendto(packet, self.address)

    def send_frames(self, start_index: int, frames: np.ndarray) -> None:
        """Send frames (n, 52) or (n, 61) as indices ``start_index`` ... ``start_index + n - 1``.

        Sends at once: a caller playing audio paces its calls to the audio clock.
        """
        for offset, row in enumerate(np.asarray(frames)):
            self.send(start_index + offset, row)

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> LiveLinkSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
