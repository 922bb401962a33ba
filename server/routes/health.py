"""``GET /healthz``, ``/readyz``, ``/metrics`` and ``/info``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pmmtalk.rigs import PROFILES
from server.deps import Authorized, State

router = APIRouter()


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The model is loaded and warmed up", responses={503: {}})
async def readyz(state: State) -> JSONResponse:
    if state.shutting_down.is_set():
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    if not state.engine.ready:
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse({"status": "ready", "model": state.engine.animator.name})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,  # Prometheus' text format, not JSON
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(state: State) -> Response:
    state.metrics.active_sessions.set(len(state.sessions))
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/info", summary="Model, backend, window and limits", dependencies=[Authorized])
async def info(state: State) -> dict[str, Any]:
    engine = state.engine
    spec = engine.animator.backend.spec
    settings = state.settings
    return {
        "model": spec.name,
        "preset": spec.config.preset,
        "backend": engine.animator.backend.name,
        "device": engine.animator.backend.device,
        "fps": spec.config.fps,
        "sample_rate_hz": spec.config.sample_rate_hz,
        "names": list(spec.config.blendshape_names),
        "profiles": {name: len(profile.names) for name, profile in PROFILES.items()},
        "styles": int(spec.style_table.shape[0]),
        "silence_gate_dbfs": engine.animator.silence_gate_dbfs,
        "window": engine.window.to_dict(),
        "batching": settings.batch.model_dump(),
        "stream": settings.stream.model_dump(),
        "limits": settings.limits.model_dump(),
        "api_keys_required": bool(settings.security.api_keys),
        "active_sessions": len(state.sessions),
    }
