"""Commands: ``run_stream.py`` (cli) and ``run_stream.py eval``."""
