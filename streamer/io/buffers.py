"""Buffer policies between a source thread and the consumer, by name.

Two policies, as in Roboflow Inference's ``BufferFillingStrategy``:

* ``wait``: a bounded queue; the producer blocks when it is full and nothing is ever dropped.
  The right choice for files, where every frame matters and the source can wait.
* ``latest``: only the newest frame is kept; a new frame replaces an unread one and every
  replaced frame is counted in ``.dropped``. The right choice for live streams, where latency
  must stay bounded when the consumer is slower than the camera.

A :class:`SourceReader` runs a source in its own thread and fills a buffer; the consumer calls
``get()`` (or iterates). The end of the stream is a ``None`` sentinel and an exception raised
in the source thread is raised again by the consumer's ``get()``.

Example:
    >>> with open_source("clip.mp4") as source, SourceReader(source, "wait") as reader:
    ...     for frame in reader:
    ...         process(frame)
    >>> reader.dropped
    0
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from enum import Enum
from typing import Any, Generic, TypeVar

from streamer.core.errors import ConfigError
from streamer.core.types import Frame

#: What a buffer carries: decoded frames, or what a stage made of them.
T = TypeVar("T")

__all__ = [
    "BufferPolicy",
    "DropOldestBuffer",
    "FrameBuffer",
    "LatestBuffer",
    "SourceReader",
    "WaitBuffer",
    "default_policy",
    "make_buffer",
]


class BufferPolicy(str, Enum):
    """What happens when frames arrive faster than they are consumed.

    Example:
        >>> BufferPolicy("latest") is BufferPolicy.LATEST
        True
        >>> BufferPolicy.parse("WAIT")
        <BufferPolicy.WAIT: 'wait'>
    """

    WAIT = "wait"
    LATEST = "latest"

    @classmethod
    def parse(cls, value: BufferPolicy | str) -> BufferPolicy:
        """The policy named ``value`` (any case), or a :class:`ConfigError` naming the choices."""
        try:
            return cls(str(value.value if isinstance(value, Enum) else value).lower())
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise ConfigError(f"buffer policy must be one of {names}, not {value!r}") from None


def default_policy(is_live: bool) -> BufferPolicy:
    """``latest`` for live sources (hold latency), ``wait`` for files (lose nothing).

    Example:
        >>> default_policy(is_live=True).value
        'latest'
    """
    return BufferPolicy.LATEST if is_live else BufferPolicy.WAIT


class FrameBuffer(Generic[T]):
    """A thread-safe hand-off from one producer to one consumer; see :func:`make_buffer`.

    Producer side: :meth:`put` (``False`` once the buffer is closed) and :meth:`finish`
    (end of stream, optionally with the exception that ended it). Consumer side: :meth:`get`.
    Anyone may :meth:`close` it, which wakes every waiting thread.

    Example:
        >>> buf = make_buffer("wait", maxsize=2)
        >>> buf.put(frame); buf.finish()
        True
        >>> buf.get() is frame, buf.get()
        (True, None)
    """

    policy: BufferPolicy

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ConfigError(f"buffer size must be at least 1, not {maxsize}")
        self.maxsize = maxsize
        self.dropped = 0
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._finished = False
        self._closed = False
        self._refused = False  # fail(): the producers stop, the consumer gets the error
        self._error: BaseException | None = None

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def _shut(self) -> bool:
        """Whether ``put`` refuses items: closed by the consumer, or failed."""
        return self._closed or self._refused

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (the consumer gave up)."""
        return self._closed

    def put(self, item: T) -> bool:  # pragma: no cover - abstract
        """Hand over ``item``; ``False`` if the buffer was closed and the producer should stop."""
        raise NotImplementedError

    def finish(self, error: BaseException | None = None) -> None:
        """Producer: no more items. ``error``, if given, is raised by the consumer's get()
        (the first error wins when several producers finish one buffer)."""
        with self._cond:
            self._finished = True
            self._error = self._error or error
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """A stage beside the producers failed: drop what is queued, refuse further items
        (``put`` returns ``False``, so the producers stop) and raise ``error`` in the
        consumer's next get().

        Example:
            >>> buf = make_buffer("wait", 2)
            >>> buf.put(1), buf.fail(ValueError("parser failed")), buf.put(2)
            (True, None, False)
        """
        with self._cond:
            self._refused = True
            self._items.clear()
        self.finish(error)

    def close(self) -> None:
        """Abandon the buffer: wake a blocked producer (its put returns ``False``) and consumer."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        """The next frame; ``None`` at the end of the stream.

        Raises the producer's exception if the stream ended with one (after any frames still
        buffered), and :class:`TimeoutError` if nothing came within ``timeout`` seconds.
        """
        with self._cond:
            ready = self._cond.wait_for(
                lambda: self._items or self._finished or self._closed, timeout=timeout
            )
            if not ready:
                raise TimeoutError(f"no frame within {timeout} s")
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            if self._error is not None and not self._closed:
                raise self._error
            return None


class WaitBuffer(FrameBuffer[T]):
    """The ``wait`` policy: a bounded FIFO; a full buffer blocks the producer, nothing drops."""

    policy = BufferPolicy.WAIT

    def put(self, item: T) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: len(self._items) < self.maxsize or self._shut)
            if self._shut:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True


class LatestBuffer(FrameBuffer[T]):
    """The ``latest`` policy: holds only the newest frame; each replaced frame counts as dropped."""

    policy = BufferPolicy.LATEST

    def __init__(self, maxsize: int = 1) -> None:
        super().__init__(1)

    def put(self, item: T) -> bool:
        with self._cond:
            if self._shut:
                return False
            if self._items:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify_all()
            return True


class DropOldestBuffer(FrameBuffer[T]):
    """A bounded FIFO that discards its oldest item when full; used for live display.

    Example:
        >>> buffer = DropOldestBuffer(2)
        >>> [buffer.put(n) for n in range(3)], buffer.get(), buffer.dropped
        ([True, True, True], 1, 1)
    """

    policy = BufferPolicy.LATEST

    def put(self, item: T) -> bool:
        with self._cond:
            if self._shut:
                return False
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify_all()
            return True


def make_buffer(policy: BufferPolicy | str, maxsize: int = 8) -> FrameBuffer[Any]:
    """A buffer (of any item type) for the named policy. ``maxsize`` bounds ``wait``;
    ``latest`` always keeps one.

    Example:
        >>> make_buffer("latest").policy, make_buffer(BufferPolicy.WAIT, maxsize=4).maxsize
        (<BufferPolicy.LATEST: 'latest'>, 4)
    """
    policy = BufferPolicy.parse(policy)
    if policy is BufferPolicy.LATEST:
        return LatestBuffer()
    return WaitBuffer(maxsize)


class SourceReader:
    """Reads a source into a :class:`FrameBuffer` from a background thread.

    The consumer calls :meth:`get` (``None`` marks the end) or iterates. An exception in the
    source thread is raised again in the consumer. :meth:`stop` ends the thread promptly even
    when it is blocked on a full ``wait`` buffer; the source is interrupted too, if it can be
    (``source.interrupt()``). Using it as a context manager starts and stops it.

    Example:
        >>> with open_source("rtsp://cam/live") as source:
        ...     with SourceReader(source, default_policy(source.is_live)) as reader:
        ...         while (frame := reader.get(timeout=10)) is not None:
        ...             slow_model(frame)
        ...     print(reader.dropped, "frames dropped to hold latency")
    """

    def __init__(
        self,
        source: Iterable[Frame],
        buffer: FrameBuffer | BufferPolicy | str = BufferPolicy.WAIT,
        *,
        maxsize: int = 8,
        name: str = "source-reader",
    ) -> None:
        self.source = source
        self.buffer = buffer if isinstance(buffer, FrameBuffer) else make_buffer(buffer, maxsize)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def dropped(self) -> int:
        """Frames the buffer dropped so far (always 0 for ``wait``)."""
        return self.buffer.dropped

    @property
    def alive(self) -> bool:
        """Whether the reading thread still runs."""
        return self._thread.is_alive()

    def start(self) -> SourceReader:
        """Start the reading thread (once)."""
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()
        return self

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            for frame in self.source:
                if not self.buffer.put(frame):
                    break
        except BaseException as exc:  # handed to the consumer, which re-raises it
            error = exc
        finally:
            self.buffer.finish(error)

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or ``None`` at the end; see :meth:`FrameBuffer.get`."""
        return self.buffer.get(timeout)

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.get()) is not None:
            yield frame

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop reading and wait up to ``timeout`` s for the thread; ``True`` if it ended."""
        self.buffer.close()
        interrupt = getattr(self.source, "interrupt", None)
        if callable(interrupt):
            interrupt()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> SourceReader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
