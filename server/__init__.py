"""The FastAPI application: REST and WebSocket endpoints (issue 5)."""
