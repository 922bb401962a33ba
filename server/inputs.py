"""Turning request inputs (uploads, form fields, start messages) into model inputs.

Everything here runs off the event loop (decoding is CPU work) and raises the errors of
`pmmtalk.errors`, which the routes turn into 4xx answers or WebSocket error messages.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from export.backends.base import Identity
from pmmtalk.errors import AudioError, FaceError, InputError, TooLargeError
from server.faces import decode_photo, face_id_of
from server.protocol import ErrorCode
from server.state import ServerState


class StyleError(InputError):
    """A style index outside the model's table."""


def input_error_code(exc: InputError) -> ErrorCode:
    """The protocol error code for a user's bad input (HTTP and WebSocket alike)."""
    if isinstance(exc, TooLargeError):
        return "too_large"
    if isinstance(exc, AudioError):
        return "bad_audio"
    if isinstance(exc, FaceError):
        return "bad_face"
    if isinstance(exc, StyleError):
        return "bad_style"
    return "bad_message"


def style_vector(state: ServerState, style: int | None) -> np.ndarray:
    """(style_dim,) float32 for a style index or None (average); StyleError when out of range."""
    try:
        return state.engine.animator.style_vector(style)
    except ValueError as exc:
        raise StyleError(str(exc)) from None


async def identity_for(
    state: ServerState, face_id: str | None, photo: bytes | None
) -> tuple[Identity, str | None]:
    """The identity for a registered ``face_id``, an uploaded photo, or the default face.

    Returns the identity and the face id (a photo is registered on the way). Raises FaceError.
    """
    if face_id is not None and photo is not None:
        raise FaceError("send either face or face_id, not both")
    if face_id is not None:
        return state.faces.get(face_id), face_id
    if photo is None:
        return await state.engine.identity(None), None
    limits = state.settings.limits
    if len(photo) > limits.max_upload_bytes:
        raise TooLargeError(
            f"the face photo is {len(photo)} bytes; the limit is {limits.max_upload_bytes}"
        )
    rgb = await state.engine.run(decode_photo, photo, limits.max_image_pixels)
    identity = await state.engine.identity(rgb)
    new_id = face_id_of(rgb)
    state.faces.put(new_id, identity)
    return identity, new_id


def decode_base64_photo(text: str) -> bytes:
    """A start message's inline ``face`` -> bytes; FaceError if it is not base64."""
    if text.startswith("data:"):  # data: URLs too
        _, comma, payload = text.partition(",")
        if not comma:
            raise FaceError(
                "face is a data: URL without its base64 part (data:image/...;base64,<data>); "
                "send the photo file's bytes base64-encoded"
            )
    else:
        payload = text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise FaceError(
            "face is not valid base64; send the photo file's bytes base64-encoded"
        ) from None
