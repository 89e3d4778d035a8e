"""``run_stream.py serve``: the web service and its page (``web/``).

Lowest first: ``settings`` (the ``serve:`` section), ``errors``, ``images``, ``codec``,
``cache``, ``model`` (the one shared model and its parse scheduler), ``pool`` (the photo parse
pool), ``jobs``, ``streams`` (live streams), ``service``
(:class:`~streamer.serve.service.Service`, all of it together), ``prometheus``, ``http/`` (one
router per resource), ``app`` (``create_app``) and ``runner`` (the command and uvicorn).
"""
