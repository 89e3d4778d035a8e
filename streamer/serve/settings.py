"""The ``serve:`` section of the config (:class:`ServeConfig`) and a served stream's config.

Example:
    >>> config, serve = load_settings(None, ["serve.queue=4", "parser.engine=torch"])
    >>> serve.queue
    4
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.config import (
    Config,
    build_section,
    config_from_dict,
    merge,
    parse_override,
    read_yaml,
)
from streamer.core.errors import ConfigError

#: What a client may override when it starts a stream; outputs and the model stay the
#: server's (a request must not make the server write files or load other weights, and every
#: stream shares the server's one parser).
STREAM_OVERRIDABLE: dict[str, frozenset[str] | None] = {
    "source": frozenset({"transport", "open_timeout_s", "read_timeout_s", "reconnect_base_s",
                         "reconnect_cap_s", "reconnect_max_attempts", "image_fps", "realtime"}),
    "buffer": None,
    "detector": None,
    "parse": None,
    "render": None,
    "output": frozenset({"frames"}),
}
#: ``serve.photo_parser``: photo uploads parse on the streams' one model, or on their own.
PHOTO_PARSERS = ("shared", "separate")


@dataclass
class ServeConfig:
    """The ``serve:`` section: where to listen and the service's limits.

    Example:
        >>> config, serve = load_settings(None, ["serve.queue=4", "parser.engine=torch"])
        >>> serve.queue, serve.host
        (4, '127.0.0.1')
    """

    host: str = "127.0.0.1"          # --host opens it beyond this machine
    port: int = 8080
    token: str | None = None         # bearer token for POST/DELETE; else $STREAMER_TOKEN
    max_upload_mb: float = 20.0      # larger uploads get 413
    max_pixels: int = 50_000_000     # images declaring more pixels get 413, before decoding
    workers: int = 0                 # parses at once; 0 = one per core
    queue: int = 8                   # parses waiting beyond the workers; more get 503
    cache_mb: float = 128.0          # in-process LRU of parse results
    redis_url: str | None = None     # redis://127.0.0.1:6379/0 shares the cache instead
    cache_ttl_s: int = 86_400        # Redis entries expire after this
    max_streams: int = 4             # streams running at once
    max_viewers: int = 32            # MJPEG viewers per stream
    max_connections: int = 256       # open connections; more get 503 from uvicorn
    jpeg_quality: int = 80           # MJPEG frames
    mjpeg_sndbuf_kb: int = 256       # kernel send buffer of an MJPEG connection (0: the OS's)
    media_root: str | None = None    # callers' streams may open video files below this folder
    allow_files: bool | None = None  # deprecated: files need media_root (false: none at all)
    start_wait_s: float = 15.0       # POST /api/streams waits this long for the first frame
    photo_parser: str = "shared"     # uploads use the streams' one model; separate: one model
    #                                  per serve.workers thread, beside the streams' one
    streams: list[str | dict[str, Any]] = field(default_factory=list)  # started with the
    #                                  server: URLs or
    #                                  {source: URL, name: ID, config: {section.key: value}}

    def __post_init__(self) -> None:
        positive = ("max_upload_mb", "max_pixels", "max_streams", "max_viewers",
                    "max_connections", "cache_ttl_s", "start_wait_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"serve.{name} must be > 0, not {getattr(self, name)!r}")
        for name in ("workers", "queue", "cache_mb", "mjpeg_sndbuf_kb"):
            if getattr(self, name) < 0:
                raise ConfigError(f"serve.{name} must be >= 0, not {getattr(self, name)!r}")
        if not 1 <= self.port <= 65535 and self.port != 0:
            raise ConfigError(f"serve.port must be between 1 and 65535 (or 0), not {self.port}")
        if self.photo_parser not in PHOTO_PARSERS:
            raise ConfigError(f"serve.photo_parser must be one of {', '.join(PHOTO_PARSERS)}, "
                              f"not {self.photo_parser!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"serve.jpeg_quality must be between 1 and 100, not "
                              f"{self.jpeg_quality}")
        if self.token is not None and not str(self.token).strip():
            self.token = None
        if self.allow_files and self.media_root is None:
            raise ConfigError("serve.allow_files no longer opens every local path: set "
                              "serve.media_root to the folder streams may read files from")
        if self.allow_files is False and self.media_root is not None:
            raise ConfigError("serve.allow_files=false contradicts serve.media_root: drop one")
        if self.media_root is not None:
            root = Path(str(self.media_root)).expanduser()
            if not root.is_dir():
                raise ConfigError(f"serve.media_root {str(root)!r} is not an existing folder")
            self.media_root = os.path.realpath(root)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))


def load_settings(path: str | Path | None = None,
                  overrides: list[str] | None = None) -> tuple[Config, ServeConfig]:
    """The pipeline's :class:`Config` and the :class:`ServeConfig`, from one YAML file and
    ``section.key=value`` overrides (``serve.*`` ones go to the latter).

    Example:
        >>> config, serve = load_settings("configs/default.yaml", ["serve.port=9000"])
    """
    data: dict[str, Any] = read_yaml(path) if path else {}
    serve_raw = data.pop("serve", None) or {}
    if not isinstance(serve_raw, dict):
        raise ConfigError(f"config section serve must be a mapping, got {serve_raw!r}")
    for text in overrides or []:
        item = parse_override(text)
        if "serve" in item:
            serve_raw = {**serve_raw, **item["serve"]}
        else:
            data = merge(data, item)
    config = config_from_dict(data)
    settings: ServeConfig = build_section("serve", ServeConfig, serve_raw)
    if settings.token is None and os.environ.get("STREAMER_TOKEN", "").strip():
        settings.token = os.environ["STREAMER_TOKEN"].strip()
    return config, settings


def stream_config(base: Config, raw: dict[str, Any] | None) -> Config:
    """``base`` with a client's overrides (``{"detector.every": 3}`` or ``{"detector":
    {"every": 3}}``), validated like ``--set``; outputs are always off for a served stream.

    Every served stream is a lane of the server's one parse scheduler, so it runs live: a
    file is paced in real time (``source.realtime`` is on, and cannot be turned off), the
    newest frame is parsed (``buffer.policy`` auto or latest) and every frame is shown
    (``output.frames: all``); ``parser`` is the server's.

    Example:
        >>> stream_config(base, {"detector.every": 3}).source.realtime
        True
    """
    nested: dict[str, dict[str, Any]] = {}
    for key, value in (raw or {}).items():
        if "." in key:
            section, name = key.split(".", 1)
            nested.setdefault(section, {})[name] = value
        elif isinstance(value, dict):
            nested.setdefault(key, {}).update(value)
        else:
            raise ConfigError(f"override {key!r} must be section.key or a section mapping")
    for section, values in nested.items():
        if section == "parser":
            raise ConfigError(f"parser.{next(iter(values), 'engine')} cannot be set for a "
                              "stream: every stream shares the server's one model (set parser "
                              "for the server, e.g. --set parser.engine=...)")
        if section not in STREAM_OVERRIDABLE:
            raise ConfigError(f"config section {section} cannot be set for a stream (allowed: "
                              f"{', '.join(STREAM_OVERRIDABLE)})")
        allowed = STREAM_OVERRIDABLE[section]
        for name in values:
            if allowed is not None and name not in allowed:
                raise ConfigError(f"config key {section}.{name} cannot be set for a stream "
                                  f"(allowed in {section}: {', '.join(sorted(allowed))})")
    config = config_from_dict(merge(base.to_dict(), nested))
    if "realtime" in nested.get("source", {}) and not config.source.realtime:
        raise ConfigError("source.realtime cannot be false for a served stream: it is watched "
                          "live, so a file is paced in real time (drop the key)")
    if str(config.buffer.policy).lower() not in ("auto", "latest"):
        raise ConfigError(f"buffer.policy {config.buffer.policy} is not for a served stream: "
                          "it shows the newest frame (use auto or latest, or drop the key)")
    if config.output.frames != "all":
        raise ConfigError(f"output.frames {config.output.frames} is not for a served stream: "
                          "every frame is shown, with the latest parse carried onto it (use "
                          "all, or drop the key)")
    config.source = dataclasses.replace(config.source, realtime=True)
    config.output = dataclasses.replace(
        config.output, path=None, show=False, labels_dir=None, stats_jsonl=None, metrics=None,
        progress=False)
    return config
