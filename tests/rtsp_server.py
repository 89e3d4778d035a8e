#!/usr/bin/python3
"""A tiny RTSP server for tests: serves one H.264 MP4 as-is on 127.0.0.1, or receives one.

Run it with Debian's Python (``gi`` imports only there), not the project's venv::

    /usr/bin/python3 tests/rtsp_server.py clip.mp4 --port 0 --loop
    /usr/bin/python3 tests/rtsp_server.py --record got.h264 --mount /out --port 0

``--record FILE`` turns it into a server that clients publish to (ANNOUNCE/RECORD, RTP over
TCP): the H.264 it receives is depayloaded and written to FILE as an Annex B byte stream
(``av.open(FILE, format="h264")`` reads it), one file for the server's life.

It prints ``PORT <n>`` on stdout once listening (``--port 0`` lets the kernel choose; pass the
same port again to restart on it). ``--loop`` plays the file forever by seeking back to the
start at its end (timestamps keep rising). SIGTERM or SIGINT end it at once with status 0, and
it exits by itself if its parent process goes away.

Needs: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
gstreamer1.0-plugins-good (Debian packages).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def _quit(*_args: object) -> bool:
    # Exiting at once is clean; a slow shutdown of a streaming server once crashed (NOTES).
    sys.stdout.flush()
    os._exit(0)


def _make_looping(media: GstRtspServer.RTSPMedia) -> None:
    """Turn the end of the file into a seek back to its start, so the stream never ends.

    Once the media is prepared, a flushing segment seek to 0 makes the demuxer post
    SEGMENT_DONE instead of sending end-of-stream; each SEGMENT_DONE gets a non-flushing
    segment seek to 0, so running time (and the RTP timestamps) keeps rising and about one
    frame is lost per loop. The flush clears the payloader's segment, and the server crashes
    (gst_rtsp_media_get_rates) if a client's request reads it before the new one arrives, so
    the callback returns only once the new segment has reached the payloader.
    """
    bin_ = media.get_element()
    demux = bin_.get_by_name("demux")
    pay_src = bin_.get_by_name("pay0").get_static_pad("src")
    bus = bin_.get_parent().get_bus()

    def rewind(flush: bool) -> bool:
        flags = Gst.SeekFlags.SEGMENT | (Gst.SeekFlags.FLUSH if flush else Gst.SeekFlags.NONE)
        demux.seek(1.0, Gst.Format.TIME, flags, Gst.SeekType.SET, 0, Gst.SeekType.NONE, -1)
        return False

    def on_sync(_bus: Gst.Bus, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.SEGMENT_DONE:
            GLib.idle_add(rewind, False)

    def on_prepared(_media: GstRtspServer.RTSPMedia) -> None:
        rewind(True)
        deadline = time.monotonic() + 5
        while pay_src.get_sticky_event(Gst.EventType.SEGMENT, 0) is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.002)

    bus.enable_sync_message_emission()
    bus.connect("sync-message", on_sync)
    media.connect("prepared", on_prepared)


def _quoted(path: str) -> str:
    """``path`` escaped for a double-quoted property in a launch line."""
    return path.replace("\\", "\\\\").replace('"', '\\"')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", nargs="?", help="an H.264 MP4 file to serve as-is")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--address", default="127.0.0.1", help="address to listen on (tests "
                        "use 127.0.0.1, or an address inside a network namespace they made)")
    parser.add_argument("--mount", default="/stream", help="path part of the URL")
    parser.add_argument("--loop", action="store_true", help="play the file forever")
    parser.add_argument("--record", metavar="FILE", help="receive a published stream "
                        "(ANNOUNCE/RECORD) and write its H.264 to FILE instead of serving")
    args = parser.parse_args(argv)
    if args.record is None and (args.clip is None or not os.path.isfile(args.clip)):
        print(f"rtsp_server: no such file: {args.clip}", file=sys.stderr)
        return 2

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    if args.record is not None:
        factory.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
        factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
        factory.set_launch(
            f'( rtph264depay name=depay0 ! video/x-h264,stream-format=byte-stream,alignment=au '
            f'! filesink buffer-mode=unbuffered location="{_quoted(args.record)}" )'
        )
    else:
        factory.set_launch(
            f'( filesrc location="{_quoted(args.clip)}" ! qtdemux name=demux '
            "demux.video_0 ! queue ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
        factory.set_shared(True)
    if args.loop and args.record is None:
        factory.connect("media-configure", lambda _f, media: _make_looping(media))
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"rtsp_server: cannot listen on {args.address}:{args.port}", file=sys.stderr)
        return 1

    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, _quit)
    parent = os.getppid()

    def orphaned() -> bool:
        if os.getppid() != parent:
            _quit()
        return True

    GLib.timeout_add(500, orphaned)
    print(f"PORT {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
