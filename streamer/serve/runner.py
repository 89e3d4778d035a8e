"""``run_stream.py serve``: the command, and the app served by uvicorn in the foreground
(:func:`main`) or in a thread (:class:`BackgroundServer`, for tests and benchmarks).

Example:
    $ python run_stream.py serve --model DIR --set parser.engine=torch
    streamer: serving on http://127.0.0.1:8080 (web page /, API /docs, metrics /metrics)
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time

import uvicorn
from fastapi import FastAPI

from streamer.apps.common import (
    SignalStop,
    add_log_level,
    add_model_options,
    model_overrides,
    run_command,
    yaml_quote,
)
from streamer.core.heap import return_large_buffers
from streamer.serve.app import create_app
from streamer.serve.service import Service
from streamer.serve.settings import ServeConfig, load_settings


class _Server(uvicorn.Server):
    """uvicorn, ending the endless MJPEG responses first so that shutdown does not wait."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.service.close_viewers()
        await super().shutdown(sockets)


def _uvicorn_config(app: FastAPI, settings: ServeConfig, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app, log_level=log_level.lower(), access_log=log_level.upper() == "DEBUG",
        limit_concurrency=settings.max_connections, timeout_graceful_shutdown=5,
        lifespan="on", server_header=False)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=512)
    sock.set_inheritable(True)
    return sock


class BackgroundServer:
    """The app served by uvicorn in a thread, on ``host`` and a free port (tests, benchmarks).

    Example:
        >>> config, settings = load_settings(None, ["parser.engine=torch"])
        >>> with BackgroundServer(Service(config, settings)) as server:
        ...     urllib.request.urlopen(server.url + "/healthz")
    """

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning") -> None:
        self.service = service
        self.app = create_app(service)
        self.host = host
        self._sock = bind(host, port)
        self.port = int(self._sock.getsockname()[1])
        self._server = _Server(_uvicorn_config(self.app, service.settings, log_level), service)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="streamer-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        """Starts serving and returns once the model is loaded (its error is raised)."""
        self._thread.start()
        deadline = time.monotonic() + 120
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        try:
            self.service.pool.ready.result(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_stream.py serve",
        description="Serve the parser over HTTP: REST API, live MJPEG of streams, Prometheus "
        "metrics and a web page.",
        epilog="Settings of the service are the serve section of --config (or --set "
        "serve.key=value): token, max_upload_mb, max_pixels, workers, queue, cache_mb, "
        "redis_url, max_streams, photo_parser (shared: uploads use the streams' one model; "
        "separate), media_root (the folder requests may open video files from; "
        "none by default), ... See streamer/serve/settings.py (ServeConfig).",
    )
    p.add_argument("--host", help="address to listen on (serve.host, default 127.0.0.1; "
                   "0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, help="port (serve.port, default 8080; 0 picks a free "
                   "one)")
    add_model_options(p, engine=False, config_help="YAML config file; its serve section "
                      "configures the service", set_help="override any config key, e.g. "
                      "serve.workers=1 or parser.engine=torch")
    add_log_level(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``run_stream.py serve``: 0 on a clean stop, 1 on a run-time problem, 2 on bad
    configuration, 130 / 143 when stopped by SIGINT / SIGTERM (after a graceful shutdown)."""
    return_large_buffers()
    return run_command(build_arg_parser(), argv, _serve)


def _serve(args: argparse.Namespace) -> int:
    overrides = model_overrides(args)
    if args.host is not None:
        overrides.append(f"serve.host={yaml_quote(args.host)}")
    if args.port is not None:
        overrides.append(f"serve.port={args.port}")
    config, settings = load_settings(args.config, overrides)
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        print(f"error: cannot listen on {settings.host}:{settings.port} ({exc.strerror or exc})",
              file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]
    service = Service(config, settings)
    service.start()
    try:
        service.pool.ready.result()
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        sock.close()
        service.close()
        return 1
    if settings.token is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {settings.host} without serve.token: anyone who reaches "
              "this port can parse images and start streams", file=sys.stderr)
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"streamer: serving on http://{shown}:{port} (web page /, API /docs, metrics "
          "/metrics)", flush=True)
    server = _Server(_uvicorn_config(create_app(service), settings, args.log_level), service)
    # Records SIGINT/SIGTERM that uvicorn re-raises after its graceful shutdown.
    with SignalStop() as signals:
        server.run(sockets=[sock])
    return signals.last_code or 0


if __name__ == "__main__":
    sys.exit(main())
