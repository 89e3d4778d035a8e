"""Buffer policies with real sources and threads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from media_helpers import make_clip

from streamer.core.errors import ConfigError, SourceError
from streamer.core.types import Frame
from streamer.io.buffers import (
    BufferPolicy,
    DropOldestBuffer,
    LatestBuffer,
    SourceReader,
    WaitBuffer,
    default_policy,
    make_buffer,
)
from streamer.io.sources import FileSource, SourceOptions


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("buf") / "clip.mp4", frames=50, fps=25)


def test_policy_names() -> None:
    assert BufferPolicy.parse("Latest") is BufferPolicy.LATEST
    assert isinstance(make_buffer("wait", 3), WaitBuffer)
    assert isinstance(make_buffer(BufferPolicy.LATEST), LatestBuffer)
    assert default_policy(True) is BufferPolicy.LATEST
    assert default_policy(False) is BufferPolicy.WAIT
    with pytest.raises(ConfigError, match="wait, latest"):
        make_buffer("drop_some")
    with pytest.raises(ConfigError):
        make_buffer("wait", 0)


def test_latest_drops_and_holds_latency(clip: Path) -> None:
    """A 25 fps live-paced source and a consumer taking 0.2 s per frame."""
    latencies = []
    with FileSource(clip, SourceOptions(realtime=True)) as source:
        with SourceReader(source, "latest") as reader:
            while (frame := reader.get(timeout=5)) is not None:
                latencies.append(time.monotonic() - frame.capture_time)
                time.sleep(0.2)
    assert reader.dropped > 20
    assert len(latencies) + reader.dropped == 50
    assert max(latencies) < 0.5


def test_wait_delivers_every_frame_in_order(clip: Path) -> None:
    with FileSource(clip) as source, SourceReader(source, "wait", maxsize=2) as reader:
        indices = []
        for frame in reader:
            indices.append(frame.index)
            if frame.index < 5:
                time.sleep(0.02)  # a slow consumer makes the producer block
    assert indices == list(range(50))
    assert reader.dropped == 0


def _fails_after(source: FileSource, n: int) -> Iterator[Frame]:
    for frame in source:
        if frame.index == n:
            raise SourceError("camera unplugged")
        yield frame


def test_source_exception_reaches_consumer(clip: Path) -> None:
    with FileSource(clip) as source, SourceReader(_fails_after(source, 3), "wait") as reader:
        got = []
        with pytest.raises(SourceError, match="camera unplugged"):
            while (frame := reader.get(timeout=5)) is not None:
                got.append(frame.index)
    assert got == [0, 1, 2]


def test_stop_with_full_queue_returns_promptly(clip: Path) -> None:
    with FileSource(clip) as source:
        reader = SourceReader(source, "wait", maxsize=2).start()
        deadline = time.monotonic() + 5
        while len(reader.buffer) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(reader.buffer) == 2 and reader.alive  # producer blocked on a full queue
        started = time.monotonic()
        assert reader.stop(timeout=2)
        assert time.monotonic() - started < 0.5
        assert reader.get(timeout=0.1) is None


def test_stop_interrupts_a_paced_source(clip: Path) -> None:
    with FileSource(clip, SourceOptions(realtime=True)) as source:
        reader = SourceReader(source, "latest").start()
        assert reader.get(timeout=5) is not None
        started = time.monotonic()
        assert reader.stop(timeout=2)
        assert time.monotonic() - started < 0.5


def test_get_times_out() -> None:
    with pytest.raises(TimeoutError):
        make_buffer("latest").get(timeout=0.05)


def test_drop_oldest_keeps_the_newest_items_in_order() -> None:
    buffer = DropOldestBuffer(3)
    assert buffer.policy is BufferPolicy.LATEST
    assert all(buffer.put(n) for n in range(5))
    buffer.finish()
    assert [buffer.get(timeout=1), buffer.get(timeout=1), buffer.get(timeout=1)] == [2, 3, 4]
    assert buffer.get(timeout=1) is None and buffer.dropped == 2
    buffer.close()
    assert buffer.put(5) is False
