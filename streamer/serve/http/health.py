"""``GET /healthz``: liveness and model readiness (503 once the model failed to load).

Example:
    $ curl http://127.0.0.1:8080/healthz
    {"status": "ok", "model_loaded": true, "parse": {...}, "streams": 0, ...}
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from streamer.serve.http.deps import ServiceDep

router: APIRouter = APIRouter(tags=["service"])


@router.get("/healthz", summary="Liveness and model readiness",
            responses={503: {"description": "the model could not be loaded"}})
async def healthz(service: ServiceDep) -> JSONResponse:
    ready = service.pool.ready
    loaded = ready.done() and ready.exception() is None
    body: dict[str, Any] = {
        "status": "ok" if loaded else "loading",
        "model_loaded": loaded,
        "parse": service.pool.stats(),
        "streams": sum(1 for h in service.streams.values() if h.active),
        "cache": {**service.cache.stats(), "reachable": await service.cache.ping()},
        "uptime_s": round(time.time() - service.started, 1),
        "model": service.model_info(),
    }
    if ready.done() and ready.exception() is not None:
        body.update(status="error", error=str(ready.exception()))
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)
