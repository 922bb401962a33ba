"""HTTP errors as the protocol's `ErrorBody`, and the handlers that produce them."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.protocol import Error, ErrorBody, ErrorCode

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """Answer with ``status`` and ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code: ErrorCode = code
        self.message = message


def error_response(status: int, code: ErrorCode, message: str) -> JSONResponse:
    body = ErrorBody(error=Error(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        state = getattr(request.app.state, "server", None)
        if state is not None:
            state.metrics.errors.labels("bad_message").inc()
            state.metrics.requests.labels(request.url.path.strip("/"), "rejected").inc()
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        message = f"{where}: {first.get('msg', 'invalid value')}"
        return error_response(422, "bad_message", message)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return error_response(500, "internal", f"internal error: {type(exc).__name__}")

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, "bad_message", str(exc.detail))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
