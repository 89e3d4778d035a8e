"""The one contract every sink keeps: a context manager that finalises its output on exit.

A sink writes one :class:`~streamer.core.types.Output` per ``write(item)`` and finalises in
``close()`` (flush the encoder, write the index, the last NPZ chunk, ...). On leaving a
``with`` block, :class:`FinalisingSink` closes the sink; when the block ended with an
exception, a failure to finalise is logged in one line instead of raised, so the caller sees
the original exception (Ctrl-C, a source that failed, a full disk) and the partial output is
still finalised as far as it can be.

Example:
    >>> class Counter(FinalisingSink):
    ...     def __init__(self) -> None:
    ...         self.closed = False
    ...     def close(self) -> None:
    ...         self.closed = True
    >>> with Counter() as sink:
    ...     pass
    >>> sink.closed
    True
"""

from __future__ import annotations

import logging
from fractions import Fraction
from types import TracebackType
from typing import Self

import numpy as np

from streamer.core.errors import SinkError
from streamer.core.types import Output

__all__ = ["FinalisingSink", "video_item"]

log = logging.getLogger("streamer.sinks")


class FinalisingSink:
    """Base of the sinks: ``with`` closes it; an exception in the block wins over a failed close."""

    def close(self) -> None:  # pragma: no cover - every sink defines it
        """Finalise the output. Safe to call twice."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # finalise the partial output, but let the original exception win
            self.close()
        except SinkError as err:
            log.warning("could not finalise the output: %s", err)


def video_item(item: Output | np.ndarray, pts: int | None = None,
               time_base: Fraction | None = None) -> tuple[np.ndarray, int | None,
                                                          Fraction | None]:
    """What a video sink's ``write`` uses: ``(image, pts, time_base)`` of an
    :class:`~streamer.core.types.Output` (its rendered image, its frame's timing), or of an
    image given alone with its own ``pts`` and ``time_base``.

    Example:
        >>> image, pts, tb = video_item(Output(frame, rendered))
        >>> pts == frame.pts
        True
    """
    if isinstance(item, Output):
        return item.image, item.frame.pts, item.frame.time_base
    return item, pts, time_base
