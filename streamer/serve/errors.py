"""The one error shape of every answer other than 200: ``{"error": reason}``.

:class:`ApiError` is raised by the service and the routes; :data:`ERROR_HANDLERS` turns it and
every exception FastAPI or Starlette raise (validation, unknown path, a client that left, a
bug) into that shape.

Example:
    >>> error_response(404, "no stream 'x'").status_code
    404
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger("streamer.serve")


class ApiError(Exception):
    """An answer other than 200 with a one-line reason: ``{"error": reason}``."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def validation_reason(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line from FastAPI's validation errors: ``body.name: String should match ...``.

    Example:
        >>> validation_reason([{"loc": ("body", "source"), "msg": "Field required"}])
        'invalid request: body.source: Field required'
    """
    parts = []
    for error in list(errors)[:3]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "invalid request: " + "; ".join(parts) + more


async def api_error(request: Request, exc: ApiError) -> Response:
    return error_response(exc.status, exc.reason, exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    # A bug, not a user mistake: the client gets the one error shape instead of a
    # plain-text 500; Starlette re-raises it afterwards, so uvicorn logs the traceback.
    return error_response(500, f"internal error ({type(exc).__name__}); the server log "
                               "has the details")


async def client_left(request: Request, exc: ClientDisconnect) -> Response:
    # Normal on the web (a closed tab, a lost connection): one line, no traceback; the
    # answer goes nowhere.
    client = request.client.host if request.client else "a client"
    log.info("%s disconnected during %s %s", client, request.method, request.url.path)
    return error_response(400, "the client disconnected before the request was read")


async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
    return error_response(422, validation_reason(exc.errors()))


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    return error_response(exc.status_code, str(exc.detail),
                          dict(exc.headers) if exc.headers else None)


#: ``handler(request, exc)``, exc of the type it is registered for.
ErrorHandler = Callable[[Request, Any], Awaitable[Response]]

#: What ``create_app`` registers: each exception type and its answer.
ERROR_HANDLERS: dict[type[Exception], ErrorHandler] = {
    ApiError: api_error,
    Exception: internal_error,
    ClientDisconnect: client_left,
    RequestValidationError: invalid_request,
    StarletteHTTPException: http_error,
}
