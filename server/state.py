"""What the app keeps on ``app.state.server`` for its whole life."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pmmtalk.rigs import RigConfig
from server.engine import InferenceEngine
from server.faces import FaceRegistry
from server.metrics import ServerMetrics
from server.settings import ServerSettings

if TYPE_CHECKING:
    from server.connection import StreamConnection


@dataclass(eq=False)
class ServerState:
    settings: ServerSettings
    engine: InferenceEngine
    faces: FaceRegistry
    metrics: ServerMetrics
    request_slots: asyncio.Semaphore
    sessions: dict[str, StreamConnection] = field(default_factory=dict)
    """Open streams by session id."""
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)
    rigs: RigConfig = field(default_factory=RigConfig.default)
    """Gain, offset and clamp of each rig profile (``model.rig_profiles``)."""
