"""The inputs of a run: ``--source`` files, folders, patterns and URLs, and a config file's
``sources:`` list, each with its own configuration. ``run_stream.py batch`` (many jobs) and
``run_stream.py --config cams.yaml --output-dir DIR`` (many live streams, one model) read them.

Example:
    >>> base, specs = load_sources(None, ["detector.type=full"], ["clips/*.mp4"])
    >>> [(s.uri, stream_name(s.uri)) for s in specs]
    [('/abs/clips/a.mp4', 'a'), ('/abs/clips/b.mp4', 'b')]
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.config import Config, config_from_dict, merge, parse_override, read_yaml
from streamer.core.errors import ConfigError
from streamer.io.sources import is_stream_uri

__all__ = ["INPUT_SUFFIXES", "SourceSpec", "expand_patterns", "is_stream_uri", "load_sources",
           "stream_name", "absolute_uri"]

# What a folder given as --source contributes (the folder itself is not searched deeper).
INPUT_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".m4v", ".avi", ".webm", ".ts", ".mts",
                            ".mpg", ".mpeg", ".wmv", ".flv"})


@dataclass
class SourceSpec:
    """One input: a file or stream URI, an optional name, and its own configuration.
    ``priority`` weighs a live stream's share of parses in one process
    (streamer.parsing.scheduler)."""

    uri: str
    config: Config
    name: str | None = None
    priority: float = 1.0


def load_sources(config_path: str | None, overrides: list[str],
                 patterns: list[str]) -> tuple[Config, list[SourceSpec]]:
    """The batch's base configuration and its inputs, from ``--config``, ``--set`` and ``--source``.

    ``--source`` takes files, folders (their video files), glob patterns (``'videos/*.mp4'``,
    ``**`` for subfolders) and stream URIs. The config file may add a ``sources:`` list; each
    item is a URI or a mapping with ``uri``, an optional ``name`` and any config sections for
    that source alone. ``--set`` overrides apply to every source, last.

    Example:
        >>> base, specs = load_sources(None, ["detector.type=full"], ["clips/*.mp4"])
        >>> [s.uri for s in specs]
        ['/abs/clips/a.mp4', '/abs/clips/b.mp4']
    """
    data = read_yaml(config_path) if config_path else {}
    raw_sources = data.pop("sources", None)
    override_data: dict[str, Any] = {}
    for text in overrides:
        override_data = merge(override_data, parse_override(text))
    base = config_from_dict(merge(data, override_data))
    specs: list[SourceSpec] = []
    for uri in expand_patterns(patterns):
        specs.append(SourceSpec(uri, base))
    if raw_sources is not None:
        if not isinstance(raw_sources, list):
            raise ConfigError(f"config key sources must be a list, got {raw_sources!r}")
        for i, item in enumerate(raw_sources):
            specs.append(_source_item(i, item, data, override_data))
    if not specs and base.source.uri:
        specs.append(SourceSpec(absolute_uri(str(base.source.uri)), base))
    if not specs:
        raise ConfigError("no inputs: pass --source FILES|PATTERN|URL, or list sources: in "
                          "--config")
    seen: set[str] = set()
    unique = []
    for spec in specs:
        if spec.uri not in seen:
            seen.add(spec.uri)
            unique.append(spec)
    return base, unique


def _source_item(i: int, item: Any, data: dict[str, Any],
                 override_data: dict[str, Any]) -> SourceSpec:
    where = f"sources[{i}]"
    if isinstance(item, str):
        item = {"uri": item}
    if not isinstance(item, dict) or not isinstance(item.get("uri"), str) or not item["uri"]:
        raise ConfigError(f"{where} must be a URI or a mapping with uri:, got {item!r}")
    overlay = dict(item)
    uri, name = overlay.pop("uri"), overlay.pop("name", None)
    priority = overlay.pop("priority", 1.0)
    if isinstance(priority, bool) or not isinstance(priority, (int, float)) or not priority > 0:
        raise ConfigError(f"{where}.priority must be a number above 0, got {priority!r}")
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name)):
        raise ConfigError(f"{where}.name must be letters, digits, '.', '-' or '_', got {name!r}")
    if "parser" in overlay:
        raise ConfigError(f"{where} sets parser: every worker holds one model, so parser "
                          "settings apply to all sources; set them at the top level")
    try:
        config = config_from_dict(merge(merge(data, overlay), override_data))
    except ConfigError as exc:
        raise ConfigError(f"{where} ({uri}): {exc}") from None
    if not is_stream_uri(uri):
        uri = absolute_uri(uri)
    return SourceSpec(uri, config, name, float(priority))


def absolute_uri(uri: str) -> str:
    if "://" in uri or uri.strip().isdigit() or uri.startswith("/dev/video"):
        return uri
    return os.path.abspath(os.path.expanduser(uri))  # also folds "..", unlike Path.absolute


def expand_patterns(patterns: list[str]) -> list[str]:
    """Files, folders and glob patterns to sorted absolute paths; stream URIs kept as they are.

    Example:
        >>> expand_patterns(["videos/*.mp4", "rtsp://cam/live"])
        ['/abs/videos/a.mp4', '/abs/videos/b.mp4', 'rtsp://cam/live']
    """
    out: list[str] = []
    for pattern in patterns:
        if is_stream_uri(pattern) or "://" in pattern:  # URLs are never globbed
            out.append(pattern)
            continue
        path = Path(pattern).expanduser()
        if glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not found:
                raise ConfigError(f"no files match {pattern!r}",
                                  hint="check the pattern; quote it so the shell does not "
                                       "expand it first")
            out += [absolute_uri(p) for p in found]
        elif path.is_dir():
            in_folder = sorted(p for p in path.iterdir()
                               if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
            if not in_folder:
                raise ConfigError(f"no video files in folder {pattern}",
                                  hint=f"it holds none of {', '.join(sorted(INPUT_SUFFIXES))}")
            out += [absolute_uri(str(p)) for p in in_folder]
        else:
            out.append(absolute_uri(pattern))  # a missing file becomes a failed row, not an abort
    return out


def stream_name(uri: str) -> str:
    """A file name for a stream: ``rtsp://user:pw@cam1:8554/live`` -> ``cam1_8554_live``."""
    text = uri.strip()
    if text.isdigit():
        return f"webcam{text}"
    if "://" in text:
        text = text.split("://", 1)[1]
        text = text.rsplit("@", 1)[-1]  # never put credentials in a file name
    elif "/" in text or "." in text:
        text = Path(text).stem
    return re.sub(r"[^\w.-]+", "_", text).strip("_.") or "stream"
