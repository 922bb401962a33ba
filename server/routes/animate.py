"""``POST /animate`` (a whole clip) and ``POST /faces`` (register a reference photo)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final, Literal

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from pmmtalk.animate import Animation
from pmmtalk.audio import decode_audio
from pmmtalk.errors import InputError
from pmmtalk.outputs import write_csv
from pmmtalk.rigs import DEFAULT_PROFILE
from pmmtalk.rigs.formats import livelink_csv_text, mapped_animation, profile_for_format
from pmmtalk.rigs.talkinghead import talkinghead_anim
from server.deps import Authorized, State
from server.errors import ApiError
from server.faces import UnknownFaceError
from server.inputs import identity_for, input_error_code, style_vector
from server.protocol import (
    AnimateResponse,
    ErrorBody,
    FaceResponse,
    TalkingHeadAnim,
    TalkingHeadResponse,
)
from server.state import ServerState

logger = logging.getLogger(__name__)

router = APIRouter(dependencies=[Authorized])


@contextlib.asynccontextmanager
async def request_slot(state: ServerState, endpoint: str) -> AsyncIterator[None]:
    """Hold one of ``max_concurrent_requests`` slots, or answer 503 at once when none is free;
    count the outcome."""
    if state.shutting_down.is_set():
        state.metrics.requests.labels(endpoint, "shutting_down").inc()
        state.metrics.errors.labels("shutting_down").inc()
        raise ApiError(503, "shutting_down", "the server is shutting down; retry on another")
    if state.request_slots.locked():
        state.metrics.requests.labels(endpoint, "busy").inc()
        state.metrics.errors.labels("busy").inc()
        raise ApiError(
            503,
            "busy",
            f"{state.settings.limits.max_concurrent_requests} requests are already running; "
            "retry shortly",
        )
    async with state.request_slots:
        try:
            yield
        except ApiError as exc:
            state.metrics.requests.labels(endpoint, "rejected").inc()
            state.metrics.errors.labels(exc.code).inc()
            raise
        except Exception:
            state.metrics.requests.labels(endpoint, "failed").inc()
            raise
        state.metrics.requests.labels(endpoint, "ok").inc()


def input_error(exc: InputError) -> ApiError:
    """The 4xx answer for a user's bad input."""
    code = input_error_code(exc)
    status = 413 if code == "too_large" else 404 if isinstance(exc, UnknownFaceError) else 400
    return ApiError(status, code, str(exc))


async def read_upload(upload: UploadFile, what: str, limit: int) -> bytes:
    """An upload's bytes; 413 past ``limit`` (read one byte over to know)."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too_large", f"the {what} upload is over the {limit}-byte limit")
    return data


def csv_body(animation: Animation) -> str:
    out = io.StringIO()
    write_csv(animation, out)
    return out.getvalue()


ERROR_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": ErrorBody} for status in (400, 401, 404, 413, 422, 503)
}
"""Every 4xx/5xx answer of these routes carries the protocol's `ErrorBody`."""


@router.post(
    "/animate",
    # JSON is an AnimateResponse, or a TalkingHeadResponse for format=talkinghead; the two
    # CSV formats answer text/csv.
    response_model=AnimateResponse | TalkingHeadResponse,
    summary="Animate a whole clip",
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        **ERROR_RESPONSES,
    },
)
async def animate(
    state: State,
    audio: Annotated[UploadFile, File(description="Speech: WAV, FLAC, OGG, ... any rate.")],
    face: Annotated[UploadFile | None, File(description="A reference face photo.")] = None,
    face_id: Annotated[str | None, Form(description="An id from POST /faces.")] = None,
    style: Annotated[int | None, Form(ge=0, description="Style index; none = average.")] = None,
    format: Annotated[
        Literal["json", "csv", "livelink_csv", "talkinghead"],
        Form(
            description="json, csv (frame, time_s, one column per channel), livelink_csv (a "
            "Live Link Face CSV take) or talkinghead (TalkingHead's anim object)."
        ),
    ] = "json",
    profile: Annotated[
        str,
        Form(description="Rig profile: arkit32, arkit52, livelink61 or visemes15 (docs/rigs.md)."),
    ] = DEFAULT_PROFILE,
) -> Response:
    """Speech in, 32 ARKit blendshape weights per frame at 30 fps out (or another rig
    profile's channels): ``ceil(n * 30 / rate)`` frames for ``n`` samples at ``rate`` Hz,
    frame ``i`` at ``i / 30`` s."""
    limits = state.settings.limits
    async with request_slot(state, "animate"):
        try:  # before any compute: an unknown profile costs the model nothing
            rig = state.rigs.mapper(profile_for_format(format, profile))
        except InputError as exc:
            raise input_error(exc) from None
        audio_bytes = await read_upload(audio, "audio", limits.max_upload_bytes)
        photo = await read_upload(face, "face", limits.max_upload_bytes) if face else None
        try:
            decoded = await asyncio.to_thread(
                decode_audio, audio_bytes, max_seconds=limits.max_audio_s
            )
            vector = style_vector(state, style)
            identity, _ = await identity_for(state, face_id, photo)
        except InputError as exc:
            raise input_error(exc) from None
        animation, seconds = await state.engine.animate(
            decoded.samples, identity, vector, decoded.num_frames
        )
        # The viseme profile solves a small least-squares problem per frame: off the loop.
        animation = await asyncio.to_thread(mapped_animation, animation, rig)
    if format == "csv":
        return Response(csv_body(animation), media_type="text/csv")
    if format == "livelink_csv":
        return Response(livelink_csv_text(animation), media_type="text/csv")
    if format == "talkinghead":
        anim = talkinghead_anim(animation.names, animation.frames, animation.fps)
        talkinghead = TalkingHeadResponse(
            anim=TalkingHeadAnim.model_validate(anim),
            fps=animation.fps,
            names=list(animation.names),
            duration_s=decoded.duration_s,
            model=animation.model,
            compute_ms=round(seconds * 1000, 3),
            frame_count=len(animation.frames),
        )
        return Response(talkinghead.model_dump_json(), media_type="application/json")
    body = AnimateResponse(
        fps=animation.fps,
        names=list(animation.names),
        frames=animation.frames.astype(np.float64).round(6).tolist(),
        duration_s=decoded.duration_s,
        model=animation.model,
        compute_ms=round(seconds * 1000, 3),
        frame_count=len(animation.frames),
    )
    return Response(body.model_dump_json(), media_type="application/json")


@router.post(
    "/faces",
    response_model=FaceResponse,
    summary="Register a reference face photo",
    responses={status: ERROR_RESPONSES[status] for status in (400, 401, 413, 422, 503)},
)
async def faces(
    state: State,
    face: Annotated[UploadFile, File(description="A photo with one clear frontal face.")],
) -> FaceResponse:
    """Encode the face once; pass the returned ``face_id`` to /animate or a stream's start."""
    async with request_slot(state, "faces"):
        photo = await read_upload(face, "face", state.settings.limits.max_upload_bytes)
        try:
            _, face_id = await identity_for(state, None, photo)
        except InputError as exc:
            raise input_error(exc) from None
    assert face_id is not None
    return FaceResponse(face_id=face_id, cached_faces=len(state.faces))
