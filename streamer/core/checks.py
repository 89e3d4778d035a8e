"""Checks of a setting's value that many stages make, each with its one-line ConfigError.

Example:
    >>> check_choice("render.propagate", "shift", ("none", "shift", "flow"))
    >>> check_choice("render.propagate", "warp", ("none", "shift", "flow"))
    Traceback (most recent call last):
    ...
    streamer.core.errors.ConfigError: render.propagate must be one of none, shift, flow, not 'warp'
"""

from __future__ import annotations

from collections.abc import Collection

from streamer.core.errors import ConfigError

__all__ = ["check_choice"]


def check_choice(key: str, value: object, choices: Collection[str]) -> None:
    """Raise ``ConfigError("{key} must be one of a, b, not 'value'")`` unless ``value`` is
    one of ``choices`` (a tuple, or a dict's keys)."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, not {value!r}")
