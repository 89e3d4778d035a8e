"""``POST /api/parse`` (the people in one image) and ``GET /api/classes`` (the legend).

Example:
    $ curl -F image=@photo.jpg http://127.0.0.1:8080/api/parse
    $ curl -o overlay.png --data-binary @photo.jpg 'http://127.0.0.1:8080/api/parse?format=png'
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from streamer.serve.codec import unpack_meta
from streamer.serve.errors import ApiError
from streamer.serve.http.deps import WRITE, ServiceDep
from streamer.serve.http.middleware import too_large
from streamer.serve.http.schemas import ERRORS, ErrorOut, ParseOut
from streamer.serve.images import color_hex, probe_image
from streamer.serve.service import Service
from streamer.vision.render import PERSON_ONLY, class_name

router: APIRouter = APIRouter(prefix="/api", tags=["parse"])

FORMATS = ("json", "png", "labels")

PARSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
          "description": "JSON, or with format=png the overlay, with format=labels "
                         "the label map (one class id per pixel, grayscale PNG)"},
    **ERRORS,
    413: {"model": ErrorOut, "description": "upload over serve.max_upload_mb, or an "
                                            "image over serve.max_pixels"},
    415: {"model": ErrorOut, "description": "the body is not an image"},
    422: {"model": ErrorOut, "description": "a side under 8 px or a shape past 20:1, "
                                            "or a query parameter out of range"},
    503: {"model": ErrorOut, "description": "all workers busy and the queue full "
                                            "(see Retry-After), or the model not ready"},
}
#: The body: multipart field ``image``, or the raw image bytes.
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["image"],
        "properties": {"image": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}}}


async def read_upload(request: Request, limit: int) -> bytes:
    """The image bytes: multipart field ``image``, or the raw body."""
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=16)
        try:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "the multipart body has no file field named `image`")
            data = await upload.read()
        finally:
            await form.close()
    else:
        data = await request.body()
    if len(data) > limit:
        raise ApiError(413, too_large(limit))
    if not data:
        raise ApiError(400, "empty body: send an image (multipart field `image`, or the raw "
                            "bytes with Content-Type image/...)")
    return data


@router.post(
    "/parse", dependencies=WRITE,
    summary="Parse the people in one image",
    response_model=ParseOut,
    responses=PARSE_RESPONSES,
    openapi_extra=UPLOAD_BODY,
)
async def parse_image(
    request: Request,
    service: ServiceDep,
    fmt: Annotated[str, Query(alias="format", description="json, png or labels",
                              json_schema_extra={"enum": list(FORMATS)})
                   ] = "json",
    boxes: Annotated[bool, Query(description="draw person boxes on the overlay")] = False,
) -> Response:
    status = 500
    try:
        response = await parse_answer(request, service, fmt, boxes)
        status = 200
        return response
    except ApiError as exc:
        status = exc.status
        raise
    except StarletteHTTPException as exc:
        status = exc.status_code
        raise
    except ClientDisconnect:
        status = 499  # as nginx counts a client that closed the request
        raise
    finally:
        service.responses[status] += 1


async def parse_answer(request: Request, service: Service, fmt: str,
                       boxes: bool) -> Response:
    """The answer of ``POST /api/parse``: JSON from the cache entry, or a PNG rendered."""
    settings = service.settings
    if fmt not in FORMATS:
        raise ApiError(400, f"format must be json, png or labels, not {fmt!r}")
    data = await read_upload(request, settings.max_upload_bytes)
    probe_image(data, settings.max_pixels)
    digest = (hashlib.sha256(data).hexdigest() if len(data) < (1 << 20)
              else await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest()))
    entry, cache = await service.parse_entry(data, digest)
    headers = {"X-Cache": cache, "X-Image-SHA256": digest}
    if fmt == "json":
        meta = unpack_meta(entry)
        meta["cache"], meta["sha256"] = cache, digest
        return JSONResponse(meta, headers=headers)
    body = await service.render(data, entry, fmt, boxes)
    return Response(body, media_type="image/png", headers=headers)


@router.get("/classes", summary="Class ids, names and palette colours")
async def classes(service: ServiceDep) -> JSONResponse:
    with contextlib.suppress(ApiError):
        await service.model_key(timeout=10.0)
    names = service.pool.classes or ()
    entries = [{"id": i, "name": name, "color": color_hex(i)}
               for i, name in enumerate(names) if i != 0]
    entries.append({"id": PERSON_ONLY, "name": class_name(PERSON_ONLY, names),
                    "color": color_hex(PERSON_ONLY)})
    return JSONResponse({"classes": entries, "alpha": service.config.render.alpha})
