"""What the routes share, as FastAPI dependencies: the service and the bearer-token check.

Example:
    >>> @router.post("/thing", dependencies=WRITE)
    ... async def make_thing(service: ServiceDep) -> JSONResponse: ...
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from streamer.serve.errors import ApiError
from streamer.serve.service import Service

bearer = HTTPBearer(auto_error=False, description="serve.token, when configured")


def get_service(request: Request) -> Service:
    """The :class:`Service` that ``create_app`` put in ``app.state.service``."""
    service: Service = request.app.state.service
    return service


#: A route's parameter ``service: ServiceDep`` is the app's :class:`Service`.
ServiceDep = Annotated[Service, Depends(get_service)]


async def require_token(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """Refuses with 401 unless the bearer token is ``serve.token`` (when that is set)."""
    token = service.token
    if token is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), str(token).encode()):
        raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer ...)",
                       {"WWW-Authenticate": 'Bearer realm="streamer"'})


#: ``dependencies=WRITE`` on every route that changes something (POST, DELETE).
WRITE = [Depends(require_token)]
