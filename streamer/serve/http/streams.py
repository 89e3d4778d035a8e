"""``/api/streams``: start, list, watch (MJPEG, latest frame) and stop live streams.

Example:
    $ curl -H 'Content-Type: application/json' -d '{"source": "rtsp://127.0.0.1:8554/s"}' \
        http://127.0.0.1:8080/api/streams
    $ curl -N http://127.0.0.1:8080/api/streams/<id>/mjpeg
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from starlette.responses import StreamingResponse

from streamer.serve.errors import ApiError
from streamer.serve.http.deps import WRITE, ServiceDep
from streamer.serve.http.schemas import ERRORS, ErrorOut, StreamCreate
from streamer.serve.streams import BOUNDARY

router: APIRouter = APIRouter(prefix="/api/streams", tags=["streams"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut}}


@router.get("", summary="The streams, their state and live metrics, and the shared model")
async def list_streams(service: ServiceDep) -> JSONResponse:
    infos = await asyncio.to_thread(lambda: [h.info() for h in list(service.streams.values())])
    return JSONResponse({"streams": infos, "model": service.model_info()})


@router.post(
    "", dependencies=WRITE, status_code=201,
    summary="Start a stream from a source URL",
    responses={**ERRORS, 202: {"description": "started, no frame yet"},
               404: {"model": ErrorOut}, 409: {"model": ErrorOut},
               422: {"model": ErrorOut, "description": "the source could not be opened, or "
                                                       "the body does not match this spec"},
               429: {"model": ErrorOut, "description": "serve.max_streams are running"}},
)
async def create_stream(body: StreamCreate, service: ServiceDep) -> JSONResponse:
    handle = await asyncio.to_thread(service.add_stream, body.source, body.name,
                                     body.config, False, body.priority)
    deadline = time.monotonic() + service.settings.start_wait_s
    while not handle.first_frame.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if handle.state == "failed":
        service.streams.pop(handle.id, None)
        raise ApiError(422, f"cannot start the stream: {handle.error}")
    status = 201 if handle.state in ("running", "finished") else 202
    return JSONResponse(handle.info(), status_code=status,
                        headers={"Location": f"/api/streams/{handle.id}"})


@router.get("/{sid}", summary="One stream", responses=NOT_FOUND)
async def get_stream(sid: str, service: ServiceDep) -> JSONResponse:
    return JSONResponse(service.get_stream(sid).info())


@router.delete("/{sid}", dependencies=WRITE,
               summary="Stop a stream; returns its final summary",
               responses={**ERRORS, **NOT_FOUND})
async def delete_stream(sid: str, service: ServiceDep) -> JSONResponse:
    return JSONResponse(await service.remove_stream(sid))


@router.get("/{sid}/metrics",
            summary="The run summary, as the CLI prints it (RunMetrics.summary())",
            responses=NOT_FOUND)
async def stream_metrics(sid: str, service: ServiceDep) -> JSONResponse:
    handle = service.get_stream(sid)
    summary = handle.summary()
    summary.update(stream=handle.id, state=handle.state,
                   current_fps=round(handle.pipeline.metrics.current_fps(), 3))
    return JSONResponse(summary)


@router.get(
    "/{sid}/mjpeg",
    summary="Live annotated stream (multipart/x-mixed-replace JPEG)",
    response_class=StreamingResponse,
    responses={200: {"content": {f"multipart/x-mixed-replace; boundary={BOUNDARY}": {}}},
               **NOT_FOUND,
               503: {"model": ErrorOut, "description": "serve.max_viewers reached"}},
)
async def mjpeg(
    sid: str,
    service: ServiceDep,
    fps: Annotated[float | None, Query(gt=0, le=60, description="cap frames per second "
                                                                "for this viewer")] = None,
) -> StreamingResponse:
    handle = service.get_stream(sid)
    if handle.viewers >= service.settings.max_viewers:
        raise ApiError(503, f"stream {sid} has {handle.viewers} viewers, the limit "
                            "(serve.max_viewers)", {"Retry-After": "10"})
    return StreamingResponse(
        service.mjpeg(handle, fps),
        media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/{sid}/frame.jpg", summary="The latest annotated frame", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}, **NOT_FOUND})
async def frame_jpg(sid: str, service: ServiceDep) -> Response:
    handle = service.get_stream(sid)
    frame = await asyncio.get_running_loop().run_in_executor(service.encode_pool,
                                                             handle.slot.jpeg)
    if frame is None:
        raise ApiError(404, f"stream {sid} has no frame yet")
    return Response(frame[3], media_type="image/jpeg",
                    headers={"Cache-Control": "no-store", "X-Frame-Index": str(frame[1])})
