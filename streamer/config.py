"""One configuration schema for every entry point: dataclasses, validated on load.

A configuration is built from the defaults below, then a YAML file (``--config``), then
``--set section.key=value`` overrides. Any unknown key or bad value is a :class:`ConfigError`
naming the key and what it expects.

Example:
    >>> config = load_config(None, ["parser.engine=torch", "detector.every=3"])
    >>> config.detector.every
    3
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streamer.core.errors import ConfigError
from streamer.io.sinks import check_publish_url, url_scheme
from streamer.io.sources import SourceOptions
from streamer.parsing.engines import ENGINES, PERF_HINTS, PRECISIONS
from streamer.parsing.parser import ParserOptions
from streamer.parsing.scheduler import SchedulerOptions
from streamer.vision.detect import DETECTOR_TYPES, DetectorOptions
from streamer.vision.detector_models import DETECTOR_ENGINES
from streamer.vision.render import OverlayStyle
from streamer.vision.temporal import PROPAGATE_METHODS, STABILITY_MODES


@dataclass
class SourceConfig(SourceOptions):
    """Where frames come from: ``uri`` is a file, folder, image, ``rtsp://`` URL or webcam."""

    uri: str | None = None


@dataclass
class BufferConfig:
    """``auto`` waits for files (nothing dropped) and keeps the latest frame for live sources."""

    policy: str = "auto"
    size: int = 8


@dataclass
class ParseConfig:
    """``every: N`` parses one frame in N and reuses the last result between them.
    ``reuse_threshold``: a tracked person whose crop differs from the crop of their last parse
    by less than this mean absolute grey level (0-255) keeps that parse (0: always parse)."""

    every: int = 1
    reuse_threshold: float = 2.0


@dataclass
class RenderConfig(OverlayStyle):
    """The overlay, and how a parse is carried to the frames after it (streamer.vision.temporal):
    ``propagate`` none | shift | flow, ``stability`` none | majority | blend over
    ``stability_depth`` parses."""

    propagate: str = "shift"
    stability: str = "none"
    stability_depth: int = 3


@dataclass
class OutputConfig:
    path: str | None = None
    show: bool = False
    frames: str = "all"
    codec: str = "libx264"
    crf: int = 23
    preset: str = "veryfast"
    labels_dir: str | None = None
    labels_format: str = "png"
    labels_instances: bool = False
    stats_jsonl: str | None = None
    metrics: str | None = None
    progress: bool = True
    # Live recordings (streamer.io.segments): a new finalised file every segment_seconds in
    # PATH-without-suffix/START-TIME.SUFFIX; the oldest are deleted past keep_segments files
    # or max_disk_mb megabytes. 0 turns each off.
    segment_seconds: float = 0.0
    keep_segments: int = 0
    max_disk_mb: float = 0.0

    def __post_init__(self) -> None:
        # path may be rtsp://HOST:PORT/PATH: the video is published there (no folder to check).
        if self.path and url_scheme(self.path) is not None:
            check_publish_url(self.path)
            if self.segment_seconds:
                raise ConfigError("output.segment_seconds does not apply to an rtsp:// output",
                                  hint="leave segment_seconds at 0, or record to a file")


@dataclass
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    detector: DetectorOptions = field(default_factory=DetectorOptions)
    parser: ParserOptions = field(default_factory=ParserOptions)
    parse: ParseConfig = field(default_factory=ParseConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    scheduler: SchedulerOptions = field(default_factory=SchedulerOptions)

    def __post_init__(self) -> None:
        # The detectors run on the parser's engine: ``detector.engine: auto`` follows a parser
        # on ONNX Runtime there (else it means OpenVINO, ONNX Runtime as the fallback).
        if self.detector.engine == "auto" and self.parser.engine == "onnxruntime":
            self.detector = dataclasses.replace(self.detector, engine="onnxruntime")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "source.transport": ("tcp", "udp"),
    "buffer.policy": ("auto", "wait", "latest"),
    "detector.type": DETECTOR_TYPES,
    "detector.engine": DETECTOR_ENGINES,
    "parser.engine": ENGINES,
    "parser.precision": PRECISIONS,
    "parser.perf_hint": PERF_HINTS,
    "output.frames": ("all", "parsed"),
    "render.propagate": PROPAGATE_METHODS,
    "render.stability": STABILITY_MODES,
    "output.labels_format": ("png", "npz"),
    "output.preset": ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium",
                      "slow", "slower", "veryslow"),
}
# Inclusive lower and upper bounds; None leaves that side open.
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "buffer.size": (1, None),
    "source.start": (0, None),
    "source.max_frames": (1, None),
    "parse.every": (1, None),
    "parse.reuse_threshold": (0, 255),
    "detector.every": (1, None),
    "detector.max_persons": (1, None),
    "detector.pad": (0, 2),
    "detector.min_size": (0, None),
    "detector.score_threshold": (0, 1),
    "detector.threads": (0, 1024),
    "parser.batch_size": (1, 64),
    "parser.threads": (0, 1024),
    "render.alpha": (0, 1),
    "render.stability_depth": (2, 8),
    "output.crf": (0, 51),
    "output.segment_seconds": (0, None),
    "output.keep_segments": (0, None),
    "output.max_disk_mb": (0, None),
}


def _describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (tuple, list):
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the field type ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            if arg is float and isinstance(value, float) and not math.isfinite(value):
                return _coerce(key, value, arg)  # its own error: NaN and inf are no settings
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key} expects {_describe_type(tp)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key} expects a list, got {value!r}")
        for item in value:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"config key {key} expects finite numbers, got {value!r}")
        return tuple(value) if origin is tuple else list(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # NaN passes every range check (all comparisons are false) and inf is no setting.
            if not math.isfinite(value):
                raise ConfigError(f"config key {key} expects a finite number, got {value!r}",
                                  hint="NaN and infinity are not settings")
            return float(value)
    elif tp is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"config key {key} expects {_describe_type(tp)}, got {value!r}")


def _check_value(key: str, value: Any) -> None:
    if key in CHOICES and value is not None and value not in CHOICES[key]:
        raise ConfigError(
            f"config key {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    if key in BOUNDS and isinstance(value, (int, float)):
        low, high = BOUNDS[key]
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"between {low} and {high}"
            raise ConfigError(f"config key {key} must be {span}, got {value!r}")


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})"
    return ConfigError(f"unknown config key {key}{hint}")


def build_section(name: str, cls: type, raw: dict[str, Any]) -> Any:
    """One validated config section (a dataclass) from its raw mapping; errors name the key."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in known:
            raise _unknown(f"{name}.{key}", known)
        full = f"{name}.{key}"
        value = _coerce(full, value, hints[key])
        _check_value(full, value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"config section {name}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config section {name}: {exc}") from None


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` laid over ``base``, section by section (nested mappings merge)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``detector.every=3`` -> ``{"detector": {"every": 3}}``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    path, raw = text.split("=", 1)
    parts = path.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return {parts[0]: {parts[1]: value}}


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
            f"offset {exc.start})", hint="save it as UTF-8 (YAML files are text)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    built: dict[str, Any] = {}
    for name, raw in data.items():
        if name not in sections:
            raise _unknown(str(name), list(sections))
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config section {name} must be a mapping, got {raw!r}")
        built[name] = build_section(name, hints[name], raw)
    return Config(**built)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    for text in overrides or []:
        data = merge(data, parse_override(text))
    return config_from_dict(data)
