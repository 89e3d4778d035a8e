"""User-facing errors: one line that says what went wrong and how to fix it.

Raise a :class:`StreamerError` subclass wherever the user can act on the problem (a bad path,
a missing camera, a full disk); the CLI prints ``str(error)`` and exits without a traceback.

Example:
    >>> err = SourceError("video file not found: clip.mp4", hint="check the path")
    >>> str(err)
    'video file not found: clip.mp4; check the path'
    >>> isinstance(err, StreamerError)
    True
"""

from __future__ import annotations

__all__ = ["ConfigError", "ModelError", "SinkError", "SourceError", "StreamerError"]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class StreamerError(Exception):
    """Base of every error meant for the user; ``str()`` is always a single line.

    ``message`` says what went wrong; the optional ``hint`` says how to fix it and is appended
    after a semicolon. Newlines and runs of spaces are collapsed.

    Example:
        >>> str(StreamerError("no frames\\nin clip", hint="pick another file"))
        'no frames in clip; pick another file'
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = _one_line(message)
        self.hint = _one_line(hint) if hint else None
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class SourceError(StreamerError):
    """An input cannot be opened or read (missing file, not a video, camera unreachable)."""


class SinkError(StreamerError):
    """An output cannot be written (missing folder, no permission, disk full, no GUI)."""


class ConfigError(StreamerError):
    """A setting is invalid (unknown key, value out of range, conflicting options)."""


class ModelError(StreamerError):
    """The model cannot be loaded or run (missing weights, wrong checkpoint, bad engine)."""
