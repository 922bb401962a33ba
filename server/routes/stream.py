"""``WS /stream``: real-time streaming (the protocol is in server/protocol.py)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from server.connection import StreamConnection
from server.state import ServerState

router = APIRouter()


@router.websocket("/stream")
async def stream(websocket: WebSocket) -> None:
    state: ServerState = websocket.app.state.server
    await StreamConnection(websocket, state).serve()
