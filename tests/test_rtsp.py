"""RtspSource against a real GStreamer RTSP server process on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from itertools import islice, pairwise
from pathlib import Path

import pytest
from media_helpers import RtspServer, make_clip, rtsp_unavailable_reason

from streamer.core.errors import SourceError
from streamer.io.buffers import SourceReader
from streamer.io.sources import RtspSource, SourceOptions, open_source

pytestmark = pytest.mark.skipif(
    rtsp_unavailable_reason() is not None, reason=str(rtsp_unavailable_reason())
)

FAST = SourceOptions(open_timeout_s=2, read_timeout_s=2, reconnect_base_s=0.1, reconnect_cap_s=0.4)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("rtsp") / "clip.mp4", frames=50, fps=25)


def test_reads_frames_live(clip: Path) -> None:
    with RtspServer(clip, loop=True) as server:
        with open_source(server.url, FAST) as source:
            assert isinstance(source, RtspSource) and source.is_live
            assert source.info.resolution == (160, 120)
            assert source.info.fps == pytest.approx(25, abs=1)
            started = time.monotonic()
            frames = list(islice(source, 60))  # more than one loop of the file
            elapsed = time.monotonic() - started
    assert [f.index for f in frames] == list(range(60))
    assert frames[0].image.shape == (120, 160, 3)
    stamps = [f.timestamp for f in frames]
    assert all(b > a for a, b in pairwise(stamps))
    assert stamps[-1] == pytest.approx(59 / 25, abs=0.15)
    assert 1.5 < elapsed < 4  # delivered at the live rate, not as fast as possible


def test_looping_stream_keeps_its_spacing_in_an_mkv(tmp_path: Path) -> None:
    """The server loops a one-second clip by seeking back; at each loop the first frame of the
    new round arrives with the last one's timestamp. Frames and the MKV written from them
    must keep rising one frame apart: no duplicate timestamps at the loops."""
    import av

    from streamer.io.sinks import VideoFileSink

    short = make_clip(tmp_path / "short.mp4", frames=25, fps=25)
    with RtspServer(short, loop=True) as server, RtspSource(server.url, FAST) as source:
        frames = list(islice(source, 80))  # three loops
        info = source.info
    step = round(1 / (25 * frames[0].time_base))
    assert [b.pts - a.pts for a, b in pairwise(frames)] == [step] * 79
    out = tmp_path / "live.mkv"
    with VideoFileSink(out, info, preset="ultrafast") as sink:
        for frame in frames:
            sink.write(frame.image, frame.pts, frame.time_base)
    with av.open(str(out)) as container:
        times = [float(f.pts * f.time_base) for f in container.decode(video=0)]
    assert len(times) == 80
    assert [round(b - a, 3) for a, b in pairwise(times)] == [0.04] * 79


def test_reconnects_after_server_restart(clip: Path) -> None:
    with RtspServer(clip, loop=True) as server:
        options = SourceOptions(
            open_timeout_s=2, read_timeout_s=2, reconnect_base_s=0.2, reconnect_cap_s=0.5,
            reconnect_max_attempts=30,
        )  # fmt: skip
        with RtspSource(server.url, options) as source:
            frames, restarted = [], threading.Event()

            def outage() -> None:
                server.kill()
                time.sleep(3)
                server.restart()
                restarted.set()

            for frame in source:
                frames.append(frame)
                if len(frames) == 15:
                    threading.Thread(target=outage, daemon=True).start()
                if restarted.is_set() and source.stats.reconnects and len(frames) >= 40:
                    break
                assert len(frames) < 400
            stats = source.stats
    assert stats.reconnects == 1
    assert stats.gap_seconds >= 2.5
    assert [f.index for f in frames] == list(range(len(frames)))
    stamps = [f.timestamp for f in frames]
    assert all(b > a for a, b in pairwise(stamps))
    jump = max(b - a for a, b in pairwise(stamps))
    assert 2.5 < jump < 6  # the outage shows as a gap in the timeline, not a reset


def test_disconnect_without_reconnect_is_a_clean_end(clip: Path) -> None:
    options = SourceOptions(open_timeout_s=2, read_timeout_s=2, reconnect_max_attempts=0)
    with RtspServer(clip, loop=True) as server, RtspSource(server.url, options) as source:
        count = 0
        started = time.monotonic()
        for _ in source:
            count += 1
            if count == 5:
                server.kill()
        assert time.monotonic() - started < 5
    assert count >= 5 and source.stats.reconnects == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_never_reachable_url_fails_within_bounded_time() -> None:
    url = f"rtsp://127.0.0.1:{_closed_port()}/stream"
    options = SourceOptions(
        open_timeout_s=1, read_timeout_s=1, reconnect_base_s=0.1, reconnect_cap_s=0.2,
        reconnect_max_attempts=3,
    )  # fmt: skip
    started = time.monotonic()
    with pytest.raises(SourceError) as err:
        RtspSource(url, options)
    assert time.monotonic() - started < 3
    text = str(err.value)
    assert url in text and "4 attempt" in text and "\n" not in text


def test_wrong_path_on_live_server_is_a_source_error(clip: Path) -> None:
    options = SourceOptions(open_timeout_s=2, read_timeout_s=2, reconnect_max_attempts=0)
    with RtspServer(clip, loop=True) as server:
        url = server.url.replace("/stream", "/nothing")
        started = time.monotonic()
        with pytest.raises(SourceError) as err:
            RtspSource(url, options)
    assert time.monotonic() - started < 5
    assert url in str(err.value)


def test_latest_reader_over_live_stream(clip: Path) -> None:
    with RtspServer(clip, loop=True) as server, RtspSource(server.url, FAST) as source:
        with SourceReader(source, "latest") as reader:
            got = []
            for _ in range(4):
                frame = reader.get(timeout=5)
                assert frame is not None
                got.append(time.monotonic() - frame.capture_time)
                time.sleep(0.25)
        assert reader.stop(timeout=3)
    assert reader.dropped >= 10
    assert max(got) < 0.5


def test_server_exits_cleanly_on_sigterm(clip: Path) -> None:
    server = RtspServer(clip, loop=False).start()
    assert server.stop() == 0


def test_new_resolution_after_reconnect(clip: Path, tmp_path: Path) -> None:
    bigger = make_clip(tmp_path / "bigger.mp4", frames=50, size=(320, 240), fps=25)
    with RtspServer(clip, loop=True) as server, RtspSource(server.url, FAST) as source:
        sizes = []
        for frame in source:
            sizes.append(frame.image.shape[:2])
            if len(sizes) == 5:
                server.kill()
                server.clip = bigger  # the camera comes back with another resolution
                server.restart()
            if sizes[-1] == (240, 320) or len(sizes) > 200:
                break
        assert source.info.resolution == (320, 240)
        assert source.stats.reconnects == 1
    assert sizes[0] == (120, 160) and sizes[-1] == (240, 320)
