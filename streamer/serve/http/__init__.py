"""The HTTP layer: one ``APIRouter`` module per resource, assembled by ``streamer.serve.app``.

=============  ==============================================================
``parse``      ``POST /api/parse``, ``GET /api/classes``
``streams``    ``/api/streams`` and ``/api/streams/{id}[/mjpeg|/frame.jpg|/metrics]``
``metrics``    ``GET /metrics`` (Prometheus)
``health``     ``GET /healthz``
``page``       ``GET /`` and ``/static`` (``streamer/serve/web``)
``deps``       what routes share: the :class:`~streamer.serve.service.Service`, the token check
``schemas``    the request and answer models of the OpenAPI spec
``middleware`` body limits (413) and the MJPEG send buffer
``openapi``    the spec, with the one error shape in place of FastAPI's 422
=============  ==============================================================
"""
