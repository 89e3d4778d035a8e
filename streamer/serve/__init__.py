"""``run_stream.py serve``: the web service and its page (``web/``)."""
