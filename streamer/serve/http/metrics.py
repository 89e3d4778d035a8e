"""``GET /metrics``: Prometheus text (see :mod:`streamer.serve.prometheus` for the names).

Example:
    $ curl http://127.0.0.1:8080/metrics | grep streamer_parse_seconds
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from streamer.serve.http.deps import ServiceDep
from streamer.serve.prometheus import metrics_text

router: APIRouter = APIRouter(tags=["service"])


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def prometheus(service: ServiceDep) -> PlainTextResponse:
    text = await asyncio.to_thread(metrics_text, service)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
