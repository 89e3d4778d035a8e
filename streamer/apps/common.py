"""What the commands (cli, eval, fetch, batch, serve) share: the shape of a command's ``main``
(:func:`run_command`: argparse, logging, one-line errors and their exit codes), the options
they all take, quoting a ``--set`` value, and the SIGINT/SIGTERM handler.

Example:
    >>> yaml_quote("clips/0.mp4"), yaml_quote("it's"), yaml_quote(4)
    ("'clips/0.mp4'", "'it''s'", '4')
    >>> stopper = SignalStop(lambda signum: print("stopping"))
    >>> stopper(2, None); stopper.code
    stopping
    130
    >>> p = argparse.ArgumentParser(prog="demo")
    >>> add_log_level(p)
    >>> run_command(p, ["--log-level", "ERROR"], lambda args: 0)
    0
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType
from typing import Any

from streamer.core.errors import ConfigError, StreamerError

__all__ = [
    "ENGINE_CHOICES",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "LOG_FORMAT",
    "SIGNALS",
    "ErrorExit",
    "SignalStop",
    "add_log_level",
    "add_model_options",
    "model_overrides",
    "run_command",
    "yaml_quote",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
# streamer.parsing.engines.ENGINES, written out so that --help imports no torch (a test checks
# that the two agree).
ENGINE_CHOICES = ("torch", "torchscript", "onnxruntime", "openvino")

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


# ------------------------------------------------------------------------ a command's main
class ErrorExit:
    """Around a command's work: the user's errors become one line on stderr and an exit code.

    ``ConfigError``: ``error: ...``, exit 2 (a usage or configuration problem). Any other
    ``StreamerError``: ``error: {failed}...``, exit 1, or the exit code of the first signal
    when ``signals`` caught one (the error came from stopping). ``KeyboardInterrupt``: no
    line, that signal's code or 130. Anything else is a bug and goes on up (a traceback).
    ``code`` is None when the block ended normally.

    Example:
        >>> with ErrorExit() as errors:
        ...     raise ConfigError("parse.every must be at least 1")
        >>> errors.code
        2
    """

    def __init__(self, signals: SignalStop | None = None, *, failed: str = "") -> None:
        self.signals = signals
        self.failed = failed
        self.code: int | None = None

    def __enter__(self) -> ErrorExit:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        signalled = self.signals.code if self.signals is not None else None
        if isinstance(exc, ConfigError):
            print(f"error: {exc}", file=sys.stderr)
            self.code = EXIT_USAGE
        elif isinstance(exc, StreamerError):
            print(f"error: {self.failed}{exc}", file=sys.stderr)
            self.code = signalled or EXIT_FAILED
        elif isinstance(exc, KeyboardInterrupt):
            self.code = signalled or 130
        return self.code is not None


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                body: Callable[[argparse.Namespace], int], *,
                signals: SignalStop | None = None, log_level: str | int | None = None,
                failed: str = "") -> int:
    """A command's ``main``: parse ``argv``, set up logging, run ``body(args)`` under
    :class:`ErrorExit` and return the exit code.

    ``--help`` returns 0 and a usage error 2 (argparse has printed them). Logging goes to
    stderr at ``log_level``, or at the command's ``--log-level`` when None. ``signals`` and
    ``failed`` are :class:`ErrorExit`'s.

    Example:
        >>> def body(args: argparse.Namespace) -> int:
        ...     raise ConfigError(f"no such folder: {args.images}")
        >>> p = argparse.ArgumentParser(prog="demo")
        >>> _ = p.add_argument("--images")
        >>> run_command(p, ["--images", "nowhere"], body, log_level="WARNING")
        2
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error
        return int(exc.code or 0)
    logging.basicConfig(level=args.log_level if log_level is None else log_level,
                        format=LOG_FORMAT)
    with ErrorExit(signals, failed=failed) as errors:
        return body(args)
    assert errors.code is not None  # only an error reported by ErrorExit gets here
    return errors.code


def add_model_options(parser: argparse.ArgumentParser, *, config_help: str, set_help: str,
                      engine: bool = True, detector_help: str | None = None) -> None:
    """The options of the commands that run the model: ``--model`` (``parser.model``),
    ``--engine`` (``parser.engine``; unless ``engine`` is False), ``--config FILE``, the
    repeatable ``--set KEY=VALUE`` (into ``args.overrides``) and, given its help text,
    ``--detector`` (``detector.type``).

    Example:
        >>> p = argparse.ArgumentParser(prog="demo")
        >>> add_model_options(p, config_help="YAML config", set_help="override a key")
        >>> p.parse_args(["--engine", "torch", "--set", "parse.every=2"]).overrides
        ['parse.every=2']
    """
    parser.add_argument("--model", help="M2FP model directory or ModelScope id (parser.model)")
    if engine:
        parser.add_argument("--engine", choices=ENGINE_CHOICES,
                            help="inference engine (parser.engine)")
    parser.add_argument("--config", help=config_help)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help=set_help)
    if detector_help is not None:
        from streamer.vision.detect import DETECTOR_TYPES

        parser.add_argument("--detector", choices=DETECTOR_TYPES, help=detector_help)


def model_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides of ``args``, then those of the :func:`add_model_options` options
    given (``--model``, ``--engine``, ``--detector``), as ``section.key=value`` lines.

    Example:
        >>> model_overrides(argparse.Namespace(overrides=["parse.every=2"], model="m/x",
        ...                                    engine=None))
        ['parse.every=2', "parser.model='m/x'"]
    """
    out = list(args.overrides)
    for key, option in (("parser.model", "model"), ("parser.engine", "engine"),
                        ("detector.type", "detector")):
        value = getattr(args, option, None)
        if value is not None:
            out.append(f"{key}={yaml_quote(value)}")
    return out


def add_log_level(parser: argparse.ArgumentParser) -> None:
    """``--log-level``, default WARNING (what :func:`run_command` sets logging to)."""
    parser.add_argument("--log-level", default="WARNING",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default WARNING")
