"""ASGI middleware: request bodies over their limit get 413 (before or while they are read),
and MJPEG connections get a small kernel send buffer.

Example:
    >>> app.add_middleware(BodyLimit, limits=BodyLimits(upload_bytes=20 << 20))
    >>> app.add_middleware(SendBuffer, size=256 << 10)
"""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import dataclass

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The one path that takes uploads (``serve.max_upload_mb``).
UPLOAD_PATH = "/api/parse"
#: Body limit for everything but uploads (JSON requests).
SMALL_BODY = 1 << 20
#: Room for the multipart envelope around an upload of the maximum size.
MULTIPART_SLACK = 64 << 10


@dataclass(frozen=True)
class BodyLimits:
    """The body limit of each path: uploads to :data:`UPLOAD_PATH`, :data:`SMALL_BODY` else."""

    upload_bytes: int

    def for_path(self, path: str) -> tuple[int, int]:
        """``(bytes allowed, limit to name in the answer)`` for a request to ``path``."""
        if path == UPLOAD_PATH:
            return self.upload_bytes + MULTIPART_SLACK, self.upload_bytes
        return SMALL_BODY, SMALL_BODY


class BodyLimit:
    """Refuses request bodies over a per-path limit with 413, before or while reading them."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, named = self.limits.for_path(scope["path"])
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _send_error(send, 400, "Content-Length is not a number")
                return
            if declared > limit:
                await _send_error(send, 413, too_large(named))
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise StarletteHTTPException(413, too_large(named))
            return message

        await self.app(scope, limited, send)


def too_large(limit: int) -> str:
    """The reason of a 413 for a body over ``limit`` bytes."""
    return (f"the upload is larger than the limit of {limit / (1 << 20):g} MB "
            f"({limit} bytes, serve.max_upload_mb)")


async def _send_error(send: Send, status: int, reason: str) -> None:
    body = json.dumps({"error": reason}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class SendBuffer:
    """Caps the kernel send buffer of MJPEG connections at ``size`` bytes.

    The OS grows a socket's send buffer up to megabytes (``net.ipv4.tcp_wmem``); for a viewer
    that stalls, that would be seconds of stale frames delivered before the live ones. With the
    cap, a stalled viewer holds at most ``size`` bytes in the kernel plus uvicorn's 64 KB write
    buffer, and then skips to the newest frame. The socket is reached through uvicorn's
    ``receive`` (its request cycle holds the transport); on another server this does nothing.
    """

    def __init__(self, app: ASGIApp, size: int) -> None:
        self.app = app
        self.size = size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.size > 0 and scope["type"] == "http" and scope["path"].endswith("/mjpeg"):
            transport = getattr(getattr(receive, "__self__", None), "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.size)
        await self.app(scope, receive, send)
