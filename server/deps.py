"""FastAPI dependencies: the server state, and the API-key check for REST endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.auth import key_accepted, presented_key
from server.errors import ApiError
from server.state import ServerState


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


State = Annotated[ServerState, Depends(get_state)]


def require_key(request: Request, state: State) -> None:
    """401 unless the request carries an accepted API key (when keys are configured)."""
    key = presented_key(request.headers, request.query_params)
    if not key_accepted(state.settings.security, key):
        state.metrics.errors.labels("unauthorized").inc()
        state.metrics.requests.labels(request.url.path.strip("/"), "unauthorized").inc()
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong API key; send Authorization: Bearer KEY, X-API-Key: KEY "
            "or ?api_key=KEY",
        )


Authorized = Depends(require_key)
