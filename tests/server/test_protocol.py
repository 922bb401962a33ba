"""The wire protocol: client messages parse or fail with a useful bad_message, server messages
round-trip, binary frames round-trip and refuse malformed payloads."""

from __future__ import annotations

import json
from typing import get_args

import numpy as np
import pytest

from server.protocol import (
    BINARY_FRAMES_HEADER,
    BINARY_FRAMES_TAG,
    ERROR_CLOSE_CODES,
    NUM_BLENDSHAPES,
    Done,
    End,
    Error,
    ErrorBody,
    ErrorCode,
    Frames,
    Interrupt,
    Interrupted,
    ProtocolError,
    Ready,
    Start,
    decode_binary_frames,
    encode_binary_frames,
    parse_client_message,
    parse_server_message,
)


def test_the_issues_start_message_parses() -> None:
    text = (
        '{"type":"start","sample_rate":16000,"encoding":"pcm_s16le","channels":1,'
        '"style":0,"output":"json"}'
    )
    assert parse_client_message(text) == Start(
        sample_rate=16000, encoding="pcm_s16le", channels=1, style=0, output="json"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"start"}', Start()),
        (
            '{"type":"start","sample_rate":48000,"encoding":"pcm_f32le","channels":2,'
            '"face_id":"abc","output":"binary"}',
            Start(
                sample_rate=48000,
                encoding="pcm_f32le",
                channels=2,
                face_id="abc",
                output="binary",
            ),
        ),
        ('{"type":"start","face":"aGVsbG8="}', Start(face="aGVsbG8=")),
        ('{"type":"end"}', End()),
        ('{"type":"interrupt"}', Interrupt()),
    ],
)
def test_every_client_message_parses(text: str, expected: Start | End | Interrupt) -> None:
    assert parse_client_message(text) == expected


def test_start_defaults_are_the_documented_ones() -> None:
    start = parse_client_message('{"type":"start"}')
    assert isinstance(start, Start)
    assert (start.sample_rate, start.encoding, start.channels) == (16000, "pcm_s16le", 1)
    assert (start.style, start.face_id, start.face, start.output) == (None, None, None, "json")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json at all", "invalid json"),
        ("[1, 2]", "should be an object"),
        ('"start"', "should be an object"),
        ("{}", "discriminator 'type'"),
        ('{"sample_rate": 16000}', "discriminator 'type'"),
        ('{"type":"stop"}', "'stop'"),
        ('{"type":"start","sample_rate":16000,"volume":3}', "start.volume: extra"),
        ('{"type":"end","now":true}', "end.now: extra"),
        ('{"type":"start","sample_rate":"fast"}', "start.sample_rate"),
        ('{"type":"start","sample_rate":100}', "start.sample_rate: input should be greater"),
        ('{"type":"start","encoding":"pcm_u8"}', "start.encoding"),
        ('{"type":"start","channels":0}', "start.channels"),
        ('{"type":"start","style":-1}', "start.style"),
        ('{"type":"start","style":"happy"}', "start.style"),
        ('{"type":"start","output":"xml"}', "start.output"),
        ('{"type":"start","face_id":7}', "start.face_id: input should be a valid string"),
    ],
)
def test_bad_client_messages_are_bad_message_saying_what(text: str, says: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(text)
    assert caught.value.code == "bad_message"
    message = str(caught.value)
    assert says in message.lower(), message
    # The message also tells a client author what a valid message is.
    assert "start, end or interrupt" in message


def test_protocol_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid message"):
        parse_client_message("{}")


SERVER_MESSAGES = [
    Ready(
        session_id="s-1",
        fps=30,
        names=[f"shape{i}" for i in range(NUM_BLENDSHAPES)],
        model="pmmtalk-lite",
        lookahead_s=0.3,
        hop_s=0.4,
    ),
    Frames(start_index=12, frames=[[0.25] * NUM_BLENDSHAPES, [0.5] * NUM_BLENDSHAPES]),
    Frames(start_index=0, frames=[]),
    Done(frame_count=180),
    Interrupted(frame_count=7),
    Error(code="bad_audio", message="the audio holds NaN samples"),
]


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=lambda m: type(m).__name__)
def test_server_messages_round_trip(message: Ready | Frames | Done | Interrupted | Error) -> None:
    parsed = parse_server_message(message.model_dump_json())
    assert type(parsed) is type(message)
    assert parsed == message


def test_server_messages_have_the_issues_json_shapes() -> None:
    frames = json.loads(Frames(start_index=3, frames=[[0.0] * 32]).model_dump_json())
    assert frames == {"type": "frames", "start_index": 3, "frames": [[0.0] * 32]}
    assert json.loads(Done(frame_count=5).model_dump_json()) == {"type": "done", "frame_count": 5}
    error = json.loads(Error(code="busy", message="full").model_dump_json())
    assert error == {"type": "error", "code": "busy", "message": "full"}
    ready = json.loads(SERVER_MESSAGES[0].model_dump_json())
    assert ready["type"] == "ready"
    assert {"session_id", "fps", "names"} <= set(ready)


def test_error_body_wraps_one_error() -> None:
    body = ErrorBody(error=Error(code="too_large", message="over 10 bytes"))
    assert body.model_dump() == {
        "error": {"type": "error", "code": "too_large", "message": "over 10 bytes"}
    }


def test_an_unknown_error_code_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_server_message('{"type":"error","code":"oops","message":"x"}')


def test_every_error_code_has_a_close_code() -> None:
    assert set(ERROR_CLOSE_CODES) == set(get_args(ErrorCode))
    for code, close in ERROR_CLOSE_CODES.items():
        # An error never closes as "normal", and only RFC 6455 or application codes are used.
        assert close != 1000, code
        assert 1001 <= close <= 1014 or 4000 <= close <= 4999, (code, close)
    assert ERROR_CLOSE_CODES["busy"] == 1013  # the issue fixes this one


@pytest.mark.parametrize(
    ("start_index", "count"), [(0, 0), (0, 1), (17, 12), (2**32 - 1, 3), (5, 2**16 - 1)]
)
def test_binary_frames_round_trip(start_index: int, count: int) -> None:
    rng = np.random.default_rng(count)
    frames = rng.random((count, NUM_BLENDSHAPES), dtype=np.float32)
    payload = encode_binary_frames(start_index, frames)
    assert payload[:4] == BINARY_FRAMES_TAG
    assert len(payload) == BINARY_FRAMES_HEADER.size + count * NUM_BLENDSHAPES * 4
    decoded_index, decoded = decode_binary_frames(payload)
    assert decoded_index == start_index
    assert decoded.dtype == np.float32
    assert decoded.shape == (count, NUM_BLENDSHAPES)
    np.testing.assert_array_equal(decoded, frames)


def test_binary_frames_are_little_endian_float32_after_the_header() -> None:
    frames = np.arange(2 * NUM_BLENDSHAPES, dtype=np.float64).reshape(2, NUM_BLENDSHAPES) / 64
    payload = encode_binary_frames(9, frames)
    tag, start, count = BINARY_FRAMES_HEADER.unpack_from(payload)
    assert (tag, start, count) == (b"PMF1", 9, 2)
    body = np.frombuffer(payload[BINARY_FRAMES_HEADER.size :], dtype="<f4")
    np.testing.assert_array_equal(body, frames.ravel().astype(np.float32))


@pytest.mark.parametrize("shape", [(NUM_BLENDSHAPES,), (3, 31), (3, 33), (2, 3, 32)])
def test_encoding_frames_of_the_wrong_shape_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="frames must be"):
        encode_binary_frames(0, np.zeros(shape, dtype=np.float32))


def _valid_payload(count: int = 2) -> bytes:
    return encode_binary_frames(4, np.ones((count, NUM_BLENDSHAPES), dtype=np.float32))


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "at least"),
        (b"PMF1\x00\x00", "at least"),
        (_valid_payload()[: BINARY_FRAMES_HEADER.size - 1], "at least"),
        (b"PMF2" + _valid_payload()[4:], "tag"),
        (b"JSON" + _valid_payload()[4:], "tag"),
        (_valid_payload()[:-1], "bytes"),
        (_valid_payload()[:-128], "bytes"),
        (_valid_payload() + b"\x00", "bytes"),
        (_valid_payload(0) + b"\x00" * 4, "bytes"),
    ],
)
def test_malformed_binary_frames_raise_value_error(payload: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_binary_frames(payload)
