"""Real media for tests: generated clips and a real RTSP server process.

Nothing here is a mock. :func:`make_clip` encodes an actual H.264 file with PyAV, and
:class:`RtspServer` runs ``tests/rtsp_server.py`` (GStreamer's RTSP server) under Debian's
``/usr/bin/python3``, because ``gi`` only imports there.

Example:
    >>> clip = make_clip(tmp_path / "clip.mp4", frames=50, size=(160, 120), fps=25)
    >>> with RtspServer(clip, loop=True) as server:
    ...     print(server.url)            # rtsp://127.0.0.1:40123/stream
    ...     server.kill()                # the stream dies mid-way
    ...     server.restart()             # same port, a fresh server
"""

from __future__ import annotations

import functools
import math
import os
import selectors
import signal
import socket
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).resolve().parent / "rtsp_server.py"
SHARED_MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
SHARED_VIDEOS = SHARED_MEDIA / "videos"


def shared_video(name: str) -> Path | None:
    """Path of a clip in ``../shared/media/videos``, or ``None`` when it is not there.

    Example:
        >>> path = shared_video("chaplin_bw.mp4")
        >>> if path is None:
        ...     pytest.skip("../shared/media/videos/chaplin_bw.mp4 is absent")
    """
    path = SHARED_VIDEOS / name
    return path if path.is_file() else None


def _draw(index: int, width: int, height: int) -> np.ndarray:
    """One RGB picture of a moving rectangle and a moving disc on a gradient."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (xx * 255 // max(1, width - 1)).astype(np.uint8)
    img[..., 1] = (yy * 255 // max(1, height - 1)).astype(np.uint8)
    img[..., 2] = (index * 7) % 256
    bw, bh = max(4, width // 5), max(4, height // 4)
    x0 = (index * 3) % max(1, width - bw)
    y0 = height // 4
    img[y0 : y0 + bh, x0 : x0 + bw] = (255, 255, 255)
    cx = width / 2 + width / 3 * math.cos(index / 8)
    cy = height / 2 + height / 3 * math.sin(index / 8)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (min(width, height) / 8) ** 2
    img[disc] = (20, 20, 20)
    return img


def make_clip(
    path: Path | str,
    frames: int = 50,
    size: tuple[int, int] = (160, 120),
    fps: int | Fraction = 25,
    audio: bool = False,
    *,
    faststart: bool = False,
    gop: int = 12,
    bframes: int = 2,
    audio_codec: str = "aac",
    video_codec: str = "libx264",
) -> Path:
    """Encode a real H.264 clip of moving shapes with PyAV and return its path.

    ``size`` is ``(width, height)``. The container follows the suffix (``.mp4``, ``.mkv``,
    ``.avi``); ``video_codec`` may be ``mpeg4`` instead of ``libx264``.
    ``audio=True`` adds a mono 44.1 kHz sine tone as long as the video, encoded with
    ``audio_codec`` (``aac``, or ``libmp3lame`` for MP3), priming samples and all.
    ``faststart=True`` writes the MP4 index first, so a file cut short still has decodable frames.
    The encoder uses frame threads (slice threads look like extra frames to an RTSP client)
    and picks keyframes itself (``pict_type`` is reset on every frame).

    Example:
        >>> clip = make_clip(tmp_path / "a.mp4", frames=25, size=(64, 48), audio=True)
        >>> av.open(str(clip)).streams.video[0].frames
        25
    """
    path = Path(path)
    width, height = size
    rate = Fraction(fps)
    options = {"movflags": "+faststart"} if faststart and path.suffix == ".mp4" else {}
    with av.open(str(path), "w", options=options) as out:
        video = out.add_stream(video_codec, rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.thread_type = "FRAME"
        video.codec_context.gop_size = gop
        if video_codec == "libx264":
            video.codec_context.options = {"bf": str(bframes), "preset": "ultrafast", "crf": "20"}
        else:  # mpeg4 and the like
            video.codec_context.max_b_frames = bframes
            video.codec_context.options = {"qscale": "4"}
        sound = None
        if audio:
            sound = out.add_stream(audio_codec, rate=44100, layout="mono")
        samples_done = 0
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(_draw(i, width, height), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            frame.pict_type = av.video.frame.PictureType.NONE
            for packet in video.encode(frame):
                out.mux(packet)
            if sound is not None:
                until = round((i + 1) / rate * 44100)
                while samples_done + 1024 <= until:
                    t = (np.arange(samples_done, samples_done + 1024) / 44100).astype(np.float32)
                    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
                    chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                    chunk.sample_rate, chunk.pts = 44100, samples_done
                    chunk.time_base = Fraction(1, 44100)
                    for packet in sound.encode(chunk):
                        out.mux(packet)
                    samples_done += 1024
        for packet in video.encode(None):
            out.mux(packet)
        if sound is not None:
            for packet in sound.encode(None):
                out.mux(packet)
    return path


@functools.cache
def first_frames(
    src: Path, dst: Path, frames: int, *, width: int | None = None, crf: int = 18,
    preset: str = "ultrafast",
) -> Path:
    """The first ``frames`` frames of ``src`` re-encoded as H.264 at the same rate: at its own
    size rounded down to even numbers, or scaled to ``width``.

    Example:
        >>> first_frames(shared_video("chaplin_bw.mp4"), tmp_path / "c.mp4", 24, width=320)
    """
    import cv2

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        rate = Fraction(stream.average_rate or 25).limit_denominator(1001)
        w, h = stream.codec_context.width, stream.codec_context.height
        size = (w // 2 * 2, h // 2 * 2) if width is None else (width, round(h * width / w / 2) * 2)
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.codec_context.options = {"preset": preset, "crf": str(crf)}
        for i, frame in enumerate(inp.decode(stream)):
            if i == frames:
                break
            image = frame.to_ndarray(format="rgb24")
            if width is None:
                image = np.ascontiguousarray(image[: size[1], : size[0]])
            else:
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            picture = av.VideoFrame.from_ndarray(image, format="rgb24")
            picture.pts, picture.time_base = i, 1 / rate
            for packet in video.encode(picture):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
    return dst


def mp4_atoms(path: Path | str) -> list[tuple[str, int]]:
    """The top-level boxes of an MP4/MOV file as ``(type, size)``, in file order.

    Example:
        >>> [kind for kind, _ in mp4_atoms("fast.mp4")]
        ['ftyp', 'moov', 'free', 'mdat']
    """
    atoms: list[tuple[str, int]] = []
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + 8 <= end:
            f.seek(pos)
            header = f.read(16)
            size, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if size == 1:  # 64-bit size follows
                size = int.from_bytes(header[8:16], "big")
            elif size == 0:  # to the end of the file
                size = end - pos
            if size < 8:
                raise ValueError(f"{path}: bad box size {size} at byte {pos}")
            atoms.append((kind, size))
            pos += size
    return atoms


def is_fast_start(path: Path | str) -> bool:
    """Whether an MP4's index (``moov``) comes before its media data (``mdat``).

    Example:
        >>> is_fast_start(make_clip(tmp_path / "a.mp4", faststart=True))
        True
    """
    kinds = [kind for kind, _ in mp4_atoms(path)]
    return "moov" in kinds and "mdat" in kinds and kinds.index("moov") < kinds.index("mdat")


def rtsp_unavailable_reason() -> str | None:
    """Why the RTSP server cannot run here, or ``None`` when it can.

    Example:
        >>> reason = rtsp_unavailable_reason()
        >>> if reason:
        ...     pytest.skip(reason)
    """
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} is missing; the RTSP test server needs Debian's python3-gi"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "missing = [e for e in ('filesrc', 'qtdemux', 'rtph264pay')"
        " if Gst.ElementFactory.find(e) is None];"
        "assert not missing, missing"
    )
    try:
        result = subprocess.run(
            [SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {SYSTEM_PYTHON}: {exc}"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        return (
            f"{SYSTEM_PYTHON} cannot import gi/GstRtspServer ({last}); install python3-gi "
            "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
        )
    return None


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on ``host:port``.

    Example:
        >>> wait_for_port(8554, timeout=5)
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.02)


class RtspServer:
    """A real GStreamer RTSP server serving one H.264 MP4 on 127.0.0.1, as a context manager
    (or, with ``record=FILE`` and no clip, receiving a published stream into FILE).

    The port is chosen by the server (bound to port 0) on the first start; :meth:`restart`
    reuses it, so a client can reconnect to the same URL.

    Example:
        >>> with RtspServer(make_clip(tmp_path / "c.mp4", frames=250), loop=True) as server:
        ...     source = RtspSource(server.url, SourceOptions())
        ...     server.kill()
        ...     server.restart()
    """

    def __init__(
        self,
        clip: Path | str | None,
        *,
        record: Path | str | None = None,
        loop: bool = True,
        port: int = 0,
        mount: str = "/stream",
        startup_timeout: float = 15.0,
        address: str = "127.0.0.1",
        prefix: list[str] | None = None,
    ) -> None:
        # ``record``: no clip; clients publish to the server, which writes their H.264 there.
        self.clip = Path(clip) if clip is not None else None
        self.record = Path(record) if record is not None else None
        self.loop = loop
        self.port = port
        self.mount = mount
        self.startup_timeout = startup_timeout
        # ``prefix`` runs the server elsewhere, e.g. ``["ip", "netns", "exec", NS]`` with an
        # ``address`` inside that namespace (its port is then not checked from here).
        self.address = address
        self.prefix = list(prefix or [])
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        """``rtsp://127.0.0.1:PORT/stream``; valid once started."""
        return f"rtsp://{self.address}:{self.port}{self.mount}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RtspServer:
        """Start the server and return once its port accepts connections."""
        if self.running:
            return self
        what = [str(self.clip)] if self.record is None else ["--record", str(self.record)]
        cmd = [*self.prefix, SYSTEM_PYTHON, str(SERVER_SCRIPT), *what,
               "--port", str(self.port), "--address", self.address]
        cmd += ["--mount", self.mount] + (["--loop"] if self.loop else [])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        port = self._read_port()
        self.port = port
        if not self.prefix:  # it prints PORT once listening; this checks from outside too
            wait_for_port(port, timeout=self.startup_timeout, host=self.address)
        return self

    def _read_port(self) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=0.1):
                    line = self._proc.stdout.readline()
                    if line.startswith("PORT "):
                        return int(line.split()[1])
                    if not line:
                        break
                if self._proc.poll() is not None:
                    break
        err = self._proc.stderr.read() if self._proc.poll() is not None else ""
        self.kill()
        raise RuntimeError(f"RTSP test server did not start: {err.strip()[-500:]}")

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crashed camera would vanish."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(timeout=10)
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()
        self._proc = None

    def stop(self) -> int:
        """Ask the server to exit with SIGTERM and return its exit status."""
        if self._proc is None:
            return 0
        self._proc.send_signal(signal.SIGTERM)
        code = self._proc.wait(timeout=10)
        self.kill()
        return code

    def restart(self) -> RtspServer:
        """Kill the server if it runs and start a new one on the same port."""
        self.kill()
        return self.start()

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
