"""What the commands (cli, eval, batch, serve) share: quoting a ``--set`` value, and the
SIGINT/SIGTERM handler.

Example:
    >>> yaml_quote("clips/0.mp4"), yaml_quote("it's"), yaml_quote(4)
    ("'clips/0.mp4'", "'it''s'", '4')
    >>> stopper = SignalStop(lambda signum: print("stopping"))
    >>> stopper(2, None); stopper.code
    stopping
    130
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

__all__ = ["SIGNALS", "SignalStop", "yaml_quote"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)

Action = Callable[[int], None]


def yaml_quote(value: object) -> str:
    """``value`` as the right-hand side of a ``section.key=value`` override.

    A string is single-quoted, so that YAML keeps ``0``, ``yes`` or ``null`` in a path as text;
    anything else (a number, a bool) is written as ``str(value)`` and read back by YAML as such.
    """
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


class SignalStop:
    """The SIGINT/SIGTERM handler of every command; what each signal does is the command's.

    The n-th signal calls ``actions[n - 1]`` with the signal number; a signal past the last
    action calls the last one again (no actions: the signals are only recorded). Every signal
    is recorded in ``signals``; ``code`` is the exit code of the first one (128 + signum: 130
    for SIGINT, 143 for SIGTERM), ``last_code`` that of the latest. ``install()`` replaces the
    handlers (from the main thread only; elsewhere Python cannot); used as a context manager
    it puts the previous handlers back on leaving.

    Example:
        >>> seen = []
        >>> stopper = SignalStop(lambda s: seen.append("stop"), lambda s: seen.append("abort"))
        >>> for _ in range(3):
        ...     stopper(signal.SIGTERM, None)
        >>> seen, stopper.count, stopper.code
        (['stop', 'abort', 'abort'], 3, 143)
    """

    def __init__(self, *actions: Action) -> None:
        self.actions = actions
        self.signals: list[int] = []
        self._previous: dict[int, Any] = {}

    @property
    def count(self) -> int:
        """How many signals arrived so far."""
        return len(self.signals)

    @property
    def code(self) -> int | None:
        """128 + the first signal received, or None before any."""
        return 128 + self.signals[0] if self.signals else None

    @property
    def last_code(self) -> int | None:
        """128 + the latest signal received, or None before any."""
        return 128 + self.signals[-1] if self.signals else None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)
        if self.actions:
            self.actions[min(len(self.signals), len(self.actions)) - 1](signum)

    def install(self) -> None:
        """Handle SIGINT and SIGTERM here from now on (again after a library replaced us)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for s in SIGNALS:
            previous = signal.signal(s, self)
            if previous is not self:
                self._previous.setdefault(s, previous)

    def restore(self) -> None:
        """Put back the handlers that ``install()`` replaced."""
        if threading.current_thread() is not threading.main_thread():
            return
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def __enter__(self) -> SignalStop:
        self.install()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()
