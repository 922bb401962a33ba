"""The wire protocol of ``POST /animate`` and ``WS /stream``: one pydantic model per message.

The server and the Python client (`clients/`) both import this module, so the two cannot drift.
It needs only pydantic and numpy. docs/protocol.md describes every message for client authors.

WebSocket session, client side: one JSON `Start`, then binary audio chunks of any size, `End` to
flush (answered by `Done`), `Interrupt` to cut the utterance short (barge-in). Server side:
`Ready`, then `Frames` as soon as the audio they need has arrived, `Done`, `Interrupted`, and
`Error` (followed by a close with one of the ``CLOSE_*`` codes).
"""

from __future__ import annotations

import struct
from typing import Annotated, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

NUM_BLENDSHAPES: Final = 32

Encoding = Literal["pcm_s16le", "pcm_f32le"]
BYTES_PER_SAMPLE: Final[dict[str, int]] = {"pcm_s16le": 2, "pcm_f32le": 4}
OutputFormat = Literal["json", "binary"]

ErrorCode = Literal[
    "bad_message",  # not JSON, unknown type, missing or invalid fields
    "out_of_order",  # e.g. audio before start, a second start
    "bad_audio",  # undecodable, NaN/inf samples, wrong length for the encoding
    "bad_face",  # unreadable photo, no face found, unknown face_id
    "bad_style",  # style index outside the model's range
    "too_large",  # a message, an upload, an image or the audio duration over its limit
    "unauthorized",  # missing or wrong API key
    "forbidden_origin",  # WebSocket Origin not on the allow-list
    "busy",  # the server is at its session limit
    "timeout",  # no start, or no message for too long
    "shutting_down",  # the server is stopping
    "internal",  # a bug on the server side; the message says what failed
]

# WebSocket close codes (RFC 6455 section 7.4.1, plus the 4000-4999 range for applications).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001  # server shutdown
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_INVALID_PAYLOAD: Final = 1007  # bad audio samples
CLOSE_POLICY_VIOLATION: Final = 1008  # bad or out-of-order messages, auth, origin
CLOSE_MESSAGE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_TRY_AGAIN_LATER: Final = 1013  # at the session limit
CLOSE_IDLE_TIMEOUT: Final = 4408

ERROR_CLOSE_CODES: Final[dict[str, int]] = {
    "bad_message": CLOSE_POLICY_VIOLATION,
    "out_of_order": CLOSE_POLICY_VIOLATION,
    "bad_audio": CLOSE_INVALID_PAYLOAD,
    "bad_face": CLOSE_POLICY_VIOLATION,
    "bad_style": CLOSE_POLICY_VIOLATION,
    "too_large": CLOSE_MESSAGE_TOO_BIG,
    "unauthorized": CLOSE_POLICY_VIOLATION,
    "forbidden_origin": CLOSE_POLICY_VIOLATION,
    "busy": CLOSE_TRY_AGAIN_LATER,
    "timeout": CLOSE_IDLE_TIMEOUT,
    "shutting_down": CLOSE_GOING_AWAY,
    "internal": CLOSE_INTERNAL_ERROR,
}
"""The close code that follows each error on a WebSocket."""


class _Message(BaseModel):
    """A client message: unknown fields are refused, so a typo is an error, not a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _ServerMessage(BaseModel):
    """A server message: clients ignore fields they do not know, so the server may add some."""

    model_config = ConfigDict(extra="ignore", frozen=True)


# --- client -> server -------------------------------------------------------------------------


class Start(_Message):
    """Opens a stream: how the audio is encoded, which face and style, how frames come back."""

    type: Literal["start"] = "start"
    sample_rate: int = Field(16_000, ge=8_000, le=192_000, description="Audio rate in Hz.")
    encoding: Encoding = "pcm_s16le"
    channels: int = Field(1, ge=1, le=8, description="Interleaved channels, mixed to mono.")
    face_id: str | None = Field(None, description="An id from POST /faces.")
    face: str | None = Field(None, description="A face photo, base64-encoded (JPEG, PNG, ...).")
    style: int | None = Field(None, ge=0, description="Training-subject style; none = average.")
    output: OutputFormat = "json"
    profile: str = Field(
        "arkit32",
        max_length=64,
        description="Rig profile of the frames: arkit32, arkit52, livelink61 or visemes15 "
        "(docs/rigs.md); ready.names lists its channels.",
    )


class End(_Message):
    """No more audio for this utterance: flush the tail; answered by `Done`."""

    type: Literal["end"] = "end"


class Interrupt(_Message):
    """Barge-in: drop the audio not yet answered, ease the face to neutral, start over."""

    type: Literal["interrupt"] = "interrupt"


ClientMessage = Annotated[Start | End | Interrupt, Field(discriminator="type")]
_CLIENT_ADAPTER: Final = TypeAdapter(ClientMessage)


class ProtocolError(ValueError):
    """A client message that cannot be parsed; ``code`` is an `ErrorCode`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code


def parse_client_message(text: str) -> Start | End | Interrupt:
    """Parse one JSON text message from a client; raise `ProtocolError` with what was wrong."""
    try:
        return _CLIENT_ADAPTER.validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "message"
        raise ProtocolError(
            "bad_message",
            f"invalid message ({where}: {first.get('msg', 'invalid')}); expected a JSON object "
            "with type start, end or interrupt (see /docs and docs/protocol.md)",
        ) from None


# --- server -> client -------------------------------------------------------------------------


class Ready(_ServerMessage):
    """The stream is open: frames will follow as audio arrives."""

    type: Literal["ready"] = "ready"
    session_id: str
    fps: int
    names: list[str]
    model: str
    lookahead_s: float = Field(description="Audio a frame waits for beyond its own time.")
    hop_s: float = Field(description="Audio per compute step; frames come in groups of this.")


class Frames(_ServerMessage):
    """Consecutive frames; frame ``start_index + i`` sits at ``(start_index + i) / fps`` s."""

    type: Literal["frames"] = "frames"
    start_index: int
    frames: list[list[float]]


class Done(_ServerMessage):
    """Answer to `End`: every frame of the utterance has been sent."""

    type: Literal["done"] = "done"
    frame_count: int


class Interrupted(_ServerMessage):
    """Answer to `Interrupt`: ``frame_count`` frames were sent (the ease to neutral included);
    the next audio starts a new utterance whose frames count from 0 again."""

    type: Literal["interrupted"] = "interrupted"
    frame_count: int


class Error(_ServerMessage):
    """Something the client sent cannot be used; a close with `ERROR_CLOSE_CODES` follows."""

    type: Literal["error"] = "error"
    code: ErrorCode
    message: str


ServerMessage = Annotated[Ready | Frames | Done | Interrupted | Error, Field(discriminator="type")]
_SERVER_ADAPTER: Final = TypeAdapter(ServerMessage)


def parse_server_message(text: str) -> Ready | Frames | Done | Interrupted | Error:
    """Parse one JSON text message from the server (for clients)."""
    return _SERVER_ADAPTER.validate_json(text)


# --- binary frames ----------------------------------------------------------------------------

BINARY_FRAMES_HEADER: Final = struct.Struct("<4sIH")
"""Binary `Frames` (``output: "binary"``): the 4 ASCII bytes ``PMF1`` (format and version), the
first frame's index (uint32) and the frame count (uint16), little-endian, then count x width
float32 little-endian values, frame after frame. The width is not in the message: it is the
number of channels in `Ready.names` (32 for the default profile, arkit32)."""
BINARY_FRAMES_TAG: Final = b"PMF1"


def encode_binary_frames(
    start_index: int, frames: np.ndarray, width: int = NUM_BLENDSHAPES
) -> bytes:
    """frames (n, width) -> one binary message (see `BINARY_FRAMES_HEADER`)."""
    data = np.ascontiguousarray(frames, dtype="<f4")
    if data.ndim != 2 or data.shape[1] != width:
        raise ValueError(f"frames must be (n, {width}), got {data.shape}")
    return BINARY_FRAMES_HEADER.pack(BINARY_FRAMES_TAG, start_index, len(data)) + data.tobytes()


def decode_binary_frames(payload: bytes, width: int = NUM_BLENDSHAPES) -> tuple[int, np.ndarray]:
    """One binary message -> (start_index, frames (n, width) float32); ValueError if malformed.

    ``width`` is ``len(ready.names)``: 32 unless the start message chose another profile.
    """
    size = BINARY_FRAMES_HEADER.size
    if len(payload) < size:
        raise ValueError(f"a binary frames message has at least {size} bytes, got {len(payload)}")
    tag, start, count = BINARY_FRAMES_HEADER.unpack_from(payload)
    if tag != BINARY_FRAMES_TAG:
        raise ValueError(f"unknown binary frames tag {tag!r}; expected {BINARY_FRAMES_TAG!r}")
    body = payload[size:]
    if len(body) != count * width * 4:
        raise ValueError(
            f"{count} frames of {width} values need {count * width * 4} bytes, got {len(body)}"
        )
    return start, np.frombuffer(body, dtype="<f4").reshape(count, width).copy()


# --- REST -------------------------------------------------------------------------------------


class AnimateResponse(_ServerMessage):
    """``POST /animate`` in JSON: the same frames a stream of the same audio gives."""

    fps: int
    names: list[str]
    frames: list[list[float]]
    duration_s: float
    model: str
    compute_ms: float = Field(description="Model time for this request, in milliseconds.")
    frame_count: int


class TalkingHeadAnim(_ServerMessage):
    """TalkingHead's animation template: ``dt`` segment lengths in ms (the first 0, so value
    ``i`` sits at ``i / fps`` s), ``vs`` the values of each morph target, one per frame."""

    name: str
    dt: list[float]
    vs: dict[str, list[float]]


class TalkingHeadResponse(_ServerMessage):
    """``POST /animate`` with ``format=talkinghead``: pass ``anim`` to TalkingHead's
    ``speakAudio({audio, anim})``."""

    anim: TalkingHeadAnim
    fps: int
    names: list[str]
    duration_s: float
    model: str
    compute_ms: float = Field(description="Model time for this request, in milliseconds.")
    frame_count: int


class FaceResponse(_ServerMessage):
    """``POST /faces``: the id to pass as ``face_id`` to /animate or a stream's `Start`."""

    face_id: str
    cached_faces: int


class ErrorBody(_ServerMessage):
    """Every HTTP 4xx/5xx answer: ``{"error": {"type": "error", "code": ..., "message": ...}}``."""

    error: Error
