"""Live Link Face packets on a real UDP socket, read by a decoder written from docs/rigs.md.

The decoder below follows the documented table field by field (big-endian, int32-length-
prefixed UTF-8 strings) and never calls the encoder's code, so a drift between the docs and
`pmmtalk.rigs.livelink` fails here.
"""

from __future__ import annotations

import datetime
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from pmmtalk.rigs import LiveLinkSink, RigConfig, encode_packet
from pmmtalk.rigs.livelink import time_of_day_frames

RECEIVE_TIMEOUT_S = 10.0

# The 61 names in packet order, as the docs' tables give them (Apple's order in PascalCase,
# then the rotations).
PACKET_NAMES = [
    *[
        "EyeBlinkLeft",
        "EyeLookDownLeft",
        "EyeLookInLeft",
        "EyeLookOutLeft",
        "EyeLookUpLeft",
        "EyeSquintLeft",
        "EyeWideLeft",
        "EyeBlinkRight",
        "EyeLookDownRight",
        "EyeLookInRight",
        "EyeLookOutRight",
        "EyeLookUpRight",
        "EyeSquintRight",
        "EyeWideRight",
        "JawForward",
        "JawLeft",
        "JawRight",
        "JawOpen",
        "MouthClose",
        "MouthFunnel",
        "MouthPucker",
        "MouthLeft",
        "MouthRight",
        "MouthSmileLeft",
        "MouthSmileRight",
        "MouthFrownLeft",
        "MouthFrownRight",
        "MouthDimpleLeft",
        "MouthDimpleRight",
        "MouthStretchLeft",
        "MouthStretchRight",
        "MouthRollLower",
        "MouthRollUpper",
        "MouthShrugLower",
        "MouthShrugUpper",
        "MouthPressLeft",
        "MouthPressRight",
        "MouthLowerDownLeft",
        "MouthLowerDownRight",
        "MouthUpperUpLeft",
        "MouthUpperUpRight",
        "BrowDownLeft",
        "BrowDownRight",
        "BrowInnerUp",
        "BrowOuterUpLeft",
        "BrowOuterUpRight",
        "CheekPuff",
        "CheekSquintLeft",
        "CheekSquintRight",
        "NoseSneerLeft",
        "NoseSneerRight",
        "TongueOut",
    ],
    *["HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll"],
    *["RightEyeYaw", "RightEyePitch", "RightEyeRoll"],
]


@dataclass
class Packet:
    version: int
    device_id: str
    subject: str
    frame_number: int
    subframe: float
    rate: tuple[int, int]
    values: dict[str, float]


def decode(data: bytes) -> Packet:
    """docs/rigs.md "Packet layout (version 6)", read field by field."""
    at = 0

    def take(fmt: str) -> tuple[object, ...]:
        nonlocal at
        fields = struct.unpack_from(">" + fmt, data, at)
        at += struct.calcsize(">" + fmt)
        return fields

    def string() -> str:
        nonlocal at
        (length,) = take("i")
        assert isinstance(length, int)
        text = data[at : at + length].decode("utf-8")
        at += length
        return text

    (version,) = take("B")
    device_id = string()
    subject = string()
    frame_number, subframe, numerator, denominator, count = take("ifiiB")
    assert isinstance(count, int)
    values = take(f"{count}f")
    assert at == len(data), "bytes left over after the values"
    assert isinstance(version, int) and isinstance(frame_number, int)
    assert isinstance(numerator, int) and isinstance(denominator, int)
    assert isinstance(subframe, float)
    return Packet(
        version,
        device_id,
        subject,
        frame_number,
        subframe,
        (numerator, denominator),
        dict(zip(PACKET_NAMES, (float(v) for v in values), strict=True)),  # type: ignore[arg-type]
    )


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(RECEIVE_TIMEOUT_S)
    try:
        yield sock
    finally:
        sock.close()


def test_frames_sent_to_a_udp_socket_decode_to_the_same_values(
    receiver: socket.socket,
) -> None:
    port = receiver.getsockname()[1]
    rng = np.random.default_rng(5)
    frames32 = rng.random((3, 32), dtype=np.float32)
    frames52 = RigConfig.default().mapper("arkit52")(frames32)
    with LiveLinkSink("127.0.0.1", port, subject_name="Ada", start_frame=1_554_300) as sink:
        sent = [sink.send(10 + i, row) for i, row in enumerate(frames52)]
        device_id = sink.device_id
    received = [receiver.recvfrom(2048)[0] for _ in frames52]

    assert sent == [len(p) for p in received]
    for i, data in enumerate(received):
        packet = decode(data)
        assert len(data) == 270 + len(device_id.encode()) + len("Ada")
        assert packet.version == 6
        assert packet.subject == "Ada" and packet.device_id == device_id
        assert packet.frame_number == 1_554_300 + 10 + i
        assert packet.subframe == 0.0 and packet.rate == (30, 1)
        # float32 on the wire: the values come back bit for bit, each under its own name
        for k, name in enumerate(("jawForward", "jawRight", "jawLeft", "jawOpen", "mouthClose")):
            assert packet.values[name[0].upper() + name[1:]] == frames32[i, k]
        assert packet.values["MouthLeft"] == frames32[i, 8]
        assert packet.values["NoseSneerRight"] == frames32[i, 31]
        for zero in ("EyeBlinkLeft", "BrowInnerUp", "TongueOut", "HeadYaw", "RightEyeRoll"):
            assert packet.values[zero] == 0.0


def test_sixty_one_values_carry_head_rotations(receiver: socket.socket) -> None:
    values = np.zeros(61, dtype=np.float32)
    values[PACKET_NAMES.index("HeadPitch")] = -0.25
    values[PACKET_NAMES.index("JawOpen")] = 0.5
    with LiveLinkSink("localhost", receiver.getsockname()[1], start_frame=0) as sink:
        sink.send_frames(0, values[None, :])
    packet = decode(receiver.recvfrom(2048)[0])
    assert packet.values["HeadPitch"] == -0.25 and packet.values["JawOpen"] == 0.5
    assert packet.frame_number == 0


def test_the_worked_example_of_the_docs() -> None:
    values = np.zeros(52, dtype=np.float32)
    values[17] = 0.5
    packet = encode_packet("dev", "PMMTalk", 1_554_300, values)
    assert len(packet) == 280
    assert packet[:36].hex(" ") == (
        "06 00 00 00 03 64 65 76 00 00 00 07 50 4d 4d 54 61 6c 6b 00 17 b7 7c "
        "00 00 00 00 00 00 00 1e 00 00 00 01 3d"
    )
    assert packet[104:108] == bytes.fromhex("3f000000")
    assert len(packet) - packet.count(b"\x00") == 20  # 19 in the header, 1 in JawOpen


def test_the_default_device_id_is_stable_per_subject(receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    with LiveLinkSink("127.0.0.1", port, "A") as a, LiveLinkSink("127.0.0.1", port, "A") as b:
        assert a.device_id == b.device_id
        with LiveLinkSink("127.0.0.1", port, "B") as c:
            assert c.device_id != a.device_id


def test_the_timecode_is_the_time_of_day_and_restarts() -> None:
    at = datetime.datetime(2026, 5, 3, 14, 23, 30, 500_000)
    assert time_of_day_frames(30, at) == (14 * 3600 + 23 * 60 + 30) * 30 + 15
    with LiveLinkSink("127.0.0.1", 9, start_frame=100) as sink:
        assert sink.frame_number(5) == 105
        sink.restart_clock()
        assert abs(sink.frame_number(0) - time_of_day_frames(30)) <= 30


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.zeros(32), "52 values .* or 61"),
        (np.full(52, np.nan), "NaN or infinite"),
    ],
)
def test_bad_frames_are_refused(values: np.ndarray, match: str) -> None:
    with LiveLinkSink("127.0.0.1", 9) as sink, pytest.raises(ValueError, match=match):
        sink.send(0, values)


def test_bad_sink_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="subject name must be 1 to 256 bytes"):
        LiveLinkSink("127.0.0.1", subject_name="")
    with pytest.raises(ValueError, match="port must be"):
        LiveLinkSink("127.0.0.1", port=0)
    with pytest.raises(ValueError, match="cannot resolve the Live Link host"):
        LiveLinkSink("no-such-host.invalid")
