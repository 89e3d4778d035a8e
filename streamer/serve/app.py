"""The ASGI app: :func:`create_app` only assembles it (routers, error handlers, middleware).

Example:
    >>> config, settings = load_settings(None, ["parser.engine=torch"])
    >>> app = create_app(Service(config, settings))      # served by uvicorn (runner.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

from fastapi import FastAPI

from streamer.serve.errors import ERROR_HANDLERS
from streamer.serve.http import health, metrics, page, parse, streams
from streamer.serve.http.middleware import BodyLimit, BodyLimits, SendBuffer
from streamer.serve.http.openapi import error_shaped_openapi
from streamer.serve.service import Service

ROUTERS = (parse.router, streams.router, metrics.router, health.router, page.router)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Loads the model and starts ``serve.streams`` with the server; stops all at its end."""
    service: Service = app.state.service
    service.start()
    await asyncio.to_thread(service.start_configured_streams)
    try:
        yield
    finally:
        await asyncio.to_thread(service.close)
        await service.cache.close()


def create_app(service: Service) -> FastAPI:
    """The ASGI app over ``service`` (``app.state.service``)."""
    app = FastAPI(
        title="streamer",
        version="0.1.0",
        summary="Live human parsing (M2FP) on a CPU: photos, streams, metrics.",
        lifespan=lifespan,
    )
    app.state.service = service
    settings = service.settings
    app.add_middleware(BodyLimit, limits=BodyLimits(upload_bytes=settings.max_upload_bytes))
    app.add_middleware(SendBuffer, size=settings.mjpeg_sndbuf_kb * 1024)
    for exc_type, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
    app.openapi = functools.partial(error_shaped_openapi, app)  # type: ignore[method-assign]
    for router in ROUTERS:
        app.include_router(router)
    static = page.static_files()
    if static is not None:
        app.mount("/static", static, name="static")
    return app
