"""The app factory: ``create_app(settings)``, and the lifespan that owns the model.

Run it with `pmmtalk serve`, or with uvicorn's factory mode, which reads the settings from
``PMMTALK_*`` environment variables: ``uvicorn --factory server.app:app_from_environment``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from fastapi import FastAPI

from pmmtalk.animate import Animator
from pmmtalk.rigs import RigConfig
from server.engine import InferenceEngine
from server.errors import install_error_handlers
from server.faces import FaceRegistry
from server.metrics import ServerMetrics
from server.routes import animate, health, page, stream
from server.settings import ServerSettings
from server.state import ServerState

if TYPE_CHECKING:
    from server.connection import StreamConnection

logger = logging.getLogger(__name__)

AnimatorFactory = Callable[[ServerSettings], Animator]


def open_animator(settings: ServerSettings) -> Animator:
    """The model the settings name, on their backend and stream window."""
    from export.backends.select import open_backend
    from pmmtalk.animate import DEFAULT_CHECKPOINT_DIR

    model = settings.model
    checkpoint: Path | None = model.checkpoint
    if checkpoint is None and model.export_dir is None:
        checkpoint = DEFAULT_CHECKPOINT_DIR
    backend = open_backend(
        model.backend,
        checkpoint,
        device=model.device,
        cache_dir=model.cache_dir,
        export_dir=model.export_dir,
        window=settings.stream.window(),
        progress=True,  # a first start exports the model (about a minute): show it
    )
    if backend.spec.window != settings.stream.window():
        backend.close()
        raise ValueError(
            f"the export in {model.export_dir} was made for the stream window "
            f"{backend.spec.window}, not the settings' {settings.stream.window()}; set the "
            "stream settings to match it, or export again with those settings"
        )
    return Animator(
        backend,
        face_cache_size=model.face_cache_size,
        silence_gate_dbfs=model.silence_gate_dbfs,
    )


DRAIN_TIMEOUT_S: Final = 2.0
"""How long shutdown waits for each stream's goodbye; a client whose socket is full (a stalled
reader) would otherwise hold it up until the transport gives up on it."""


async def drain(state: ServerState) -> None:
    """Refuse new work and close every stream with a shutting_down message.

    Streams that cannot take the message within `DRAIN_TIMEOUT_S` are left to uvicorn, which
    closes their sockets next."""
    state.shutting_down.set()
    connections = list(state.sessions.values())

    async def bounded(connection: StreamConnection) -> None:
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await connection.shutdown()
        except TimeoutError:
            logger.warning(
                "stream %s did not take the shutdown message within %g s; closing it",
                connection.session_id,
                DRAIN_TIMEOUT_S,
            )

    await asyncio.gather(*(bounded(c) for c in connections), return_exceptions=True)


def create_app(
    settings: ServerSettings, animator_factory: AnimatorFactory = open_animator
) -> FastAPI:
    """A FastAPI app serving ``settings``; the model loads when the app starts (lifespan).

    ``animator_factory`` builds the model from the settings (tests pass small models). A bad
    ``model.rig_profiles`` file raises `pmmtalk.rigs.RigConfigError` here, before any model loads.
    """
    rigs = RigConfig.load(settings.model.rig_profiles)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        animator = await asyncio.to_thread(animator_factory, settings)
        metrics = ServerMetrics()
        engine = InferenceEngine(animator, settings.batch, metrics)
        state = ServerState(
            settings=settings,
            engine=engine,
            faces=FaceRegistry(settings.model.face_cache_size),
            metrics=metrics,
            request_slots=asyncio.Semaphore(settings.limits.max_concurrent_requests),
            rigs=rigs,
        )
        app.state.server = state
        try:
            await engine.start()
            logger.info(
                "ready in %.1f s: model %s on %s (%s)",
                time.perf_counter() - started,
                animator.name,
                animator.backend.name,
                animator.backend.device,
            )
            yield
        finally:
            await drain(state)
            await engine.close()

    app = FastAPI(
        title="PMMTalk Server",
        summary="Speech to 32 ARKit blendshapes at 30 fps, offline and streaming",
        description=(
            "REST: POST /animate, POST /faces. Streaming: WS /stream (messages in "
            "docs/protocol.md). Monitoring: /healthz, /readyz, /metrics, /info."
        ),
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(animate.router)
    app.include_router(health.router)
    app.include_router(stream.router)
    app.include_router(page.build_router())
    return app


def app_from_environment() -> FastAPI:
    """For ``uvicorn --factory``: settings from ``PMMTALK_*`` environment variables."""
    return create_app(ServerSettings())
