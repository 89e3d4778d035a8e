"""The OpenAPI spec (``/openapi.json``) with the one error shape in every 422 answer.

FastAPI documents its own ``{"detail": [...]}`` for validation errors; this server answers
``{"error": reason}`` there too (see :func:`~streamer.serve.errors.validation_reason`), so the
spec says that instead.

Example:
    >>> app.openapi = functools.partial(error_shaped_openapi, app)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


def error_shaped_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's spec of ``app``, with its 422 replaced by ``ErrorOut``; built once."""
    if app.openapi_schema is None:
        spec = get_openapi(title=app.title, version=app.version, summary=app.summary,
                           routes=app.routes)
        for path in spec.get("paths", {}).values():
            for operation in path.values():
                answer = operation.get("responses", {}).get("422")
                if answer is None:
                    continue
                answer["content"] = {"application/json": {"schema": {
                    "$ref": "#/components/schemas/ErrorOut"}}}
                if answer.get("description") == "Validation Error":
                    answer["description"] = "the request does not match this spec (the " \
                                            "reason names the field)"
        schemas = spec.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = spec
    return app.openapi_schema
