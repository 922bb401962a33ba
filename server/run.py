"""Running the app under uvicorn, with logging set up and a shutdown that says goodbye.

uvicorn, on SIGINT/SIGTERM, closes every WebSocket with code 1012 before the app's lifespan
ends, so a stream would learn nothing of why. `GracefulServer` first tells each stream
(an ``error`` message with code ``shutting_down``, then close code 1001) and refuses new work.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI

from server.app import create_app, drain, open_animator
from server.settings import ServerSettings

_API_KEY_QUERY = re.compile(r"(api_key=)[^&\s]*")

WS_SIZE_SLACK = 4
"""uvicorn drops a WebSocket message over its own size cap with no explanation; it is set this
many times above ``limits.max_message_bytes`` so that messages just over the limit get the
server's own ``too_large`` error first."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and session_id when set."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        session_id = getattr(record, "session_id", None)
        if session_id is not None:
            entry["session_id"] = session_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _SessionText(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        session_id = getattr(record, "session_id", None)
        return f"{text} [session {session_id}]" if session_id else text


class RedactKeys(logging.Filter):
    """Hide ``api_key=...`` query values in log lines (uvicorn's access log prints paths)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(
                _API_KEY_QUERY.sub(r"\1***", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Root logging for the server process: text or JSON lines on stderr, keys redacted."""
    handler = logging.StreamHandler()
    handler.addFilter(RedactKeys())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_SessionText("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class GracefulServer(uvicorn.Server):
    """A uvicorn server that drains the app's streams before uvicorn closes the sockets."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = getattr(self._app.state, "server", None)
        if state is not None:
            await drain(state)
        await super().shutdown(sockets)


def uvicorn_config(app: FastAPI, settings: ServerSettings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn settings the server runs with (tests pass ``port=0`` and ``log_config``)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "ws_max_size": settings.limits.max_message_bytes * WS_SIZE_SLACK,
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        "timeout_graceful_shutdown": 10,
        "log_config": None,  # keep configure_logging's handlers
        "lifespan": "on",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve(settings: ServerSettings) -> None:
    """Open the model, then serve until stopped (Ctrl+C or SIGTERM).

    The model opens before uvicorn starts, so a bad checkpoint or an unavailable backend raises
    here (`models.checkpoint.CheckpointError`, `export.backends.base.BackendUnavailableError`)
    with its own message instead of failing the app's startup.
    """
    configure_logging(settings.log_format)
    animator = open_animator(settings)
    app = create_app(settings, animator_factory=lambda _: animator)
    GracefulServer(uvicorn_config(app, settings), app).run()
