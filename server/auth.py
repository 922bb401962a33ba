"""API keys and the WebSocket Origin allow-list."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from server.settings import SecuritySettings


def presented_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The key a client sent: ``Authorization: Bearer K``, ``X-API-Key: K`` or ``?api_key=K``."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key") or query.get("api_key") or None


def key_accepted(security: SecuritySettings, key: str | None) -> bool:
    """True when no keys are configured, or ``key`` is one of them (constant-time compare)."""
    if not security.api_keys:
        return True
    if key is None:
        return False
    return any(hmac.compare_digest(key.encode(), allowed.encode()) for allowed in security.api_keys)


def origin_allowed(security: SecuritySettings, origin: str | None) -> bool:
    """True for no allow-list, for clients that send no Origin, and for listed origins."""
    if not security.allowed_origins or origin is None:
        return True
    return origin.rstrip("/") in {allowed.rstrip("/") for allowed in security.allowed_origins}
