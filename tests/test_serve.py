"""The web service over real HTTP on 127.0.0.1: the real app under uvicorn, a real (tiny,
random-weight) M2FP, real clips streamed live, a real redis-server. Every request is bounded in
count and time."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from media_helpers import make_clip, wait_for_port
from PIL import Image

from streamer.core.metrics import RunMetrics
from streamer.serve.cache import MemoryCache
from streamer.serve.runner import BackgroundServer, main
from streamer.serve.service import Service
from streamer.serve.settings import ServeConfig, load_settings
from streamer.vision.render import PALETTE

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"
UPLOAD_LIMIT = int(0.5 * (1 << 20))
MAX_PIXELS = 1_000_000
TIMEOUT = 60


# --------------------------------------------------------------------------- helpers
class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return self.json()["error"]


def call(server: BackgroundServer | Any, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, token: str | None = TOKEN) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def post_json(server: BackgroundServer, path: str, payload: dict, token: str | None = TOKEN
              ) -> Reply:
    return call(server, "POST", path, json.dumps(payload).encode(),
                {"Content-Type": "application/json"}, token=token)


def multipart(data: bytes, field: str = "image", filename: str = "photo.png",
              ctype: str = "image/png") -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {ctype}\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def picture(seed: int, size: tuple[int, int] = (96, 128), fmt: str = "PNG") -> bytes:
    """A smooth random picture (``size`` is width, height), different for every seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (a decompression bomb)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


class Mjpeg:
    """Reads parts of a multipart/x-mixed-replace response from a raw socket."""

    def __init__(self, port: int, path: str, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        self.buf = b""
        head = self._until(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, v in
                        (line.split(":", 1) for line in lines[1:] if ":" in line)}
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        self.body = b""

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            more = self.sock.recv(65536)
            if not more:
                raise EOFError("connection closed")
            self.buf += more
        head, self.buf = self.buf.split(marker, 1)
        return head

    def _fill(self, n: int) -> None:
        """Grow the de-chunked body to at least ``n`` bytes."""
        while len(self.body) < n:
            if not self.chunked:
                more = self.buf or self.sock.recv(65536)
                self.buf = b""
                if not more:
                    raise EOFError("connection closed")
                self.body += more
                continue
            size = int(self._until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                raise EOFError("stream ended")
            while len(self.buf) < size + 2:
                more = self.sock.recv(65536)
                if not more:
                    raise EOFError("connection closed")
                self.buf += more
            self.body += self.buf[:size]
            self.buf = self.buf[size + 2:]

    def part(self) -> tuple[dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.body:
            self._fill(len(self.body) + 1)
        head, self.body = self.body.split(b"\r\n\r\n", 1)
        lines = head.decode().strip().split("\r\n")
        assert lines[0] == "--frame", lines[0]
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        n = int(headers["content-length"])
        self._fill(n + 2)
        data, self.body = self.body[:n], self.body[n + 2:]
        return headers, data

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- fixtures
def settings_for(model: Path, *extra: str):
    return load_settings(None, [f"parser.model='{model}'", "parser.engine=torch",
                                "output.progress=false", *extra])


@pytest.fixture(scope="module")
def server(tiny_single_model, clip) -> Iterator[BackgroundServer]:
    config, settings = settings_for(
        tiny_single_model, f"serve.token={TOKEN}", "serve.max_upload_mb=0.5",
        f"serve.max_pixels={MAX_PIXELS}", "serve.workers=1", "serve.queue=1",
        "serve.max_streams=2", "serve.cache_mb=16", "serve.mjpeg_sndbuf_kb=16",
        "serve.max_viewers=2", f"serve.media_root='{clip.parent}'")
    with BackgroundServer(Service(config, settings)) as srv:
        yield srv


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    # 12 s at 25 fps: long enough to outlive every test that watches it.
    return make_clip(tmp_path_factory.mktemp("serve") / "clip.mp4", frames=300,
                     size=(320, 240), fps=25)


def start_stream(server: BackgroundServer, clip: Path, **config) -> dict:
    reply = post_json(server, "/api/streams", {
        "source": str(clip), "config": {"source.realtime": True, "detector.type": "full",
                                        **config}})
    assert reply.status == 201, reply.body
    return reply.json()


def stream_summary(server: BackgroundServer, sid: str) -> dict:
    reply = call(server, "GET", f"/api/streams/{sid}/metrics")
    assert reply.status == 200, reply.body
    return reply.json()


# --------------------------------------------------------------------------- service
def test_healthz_openapi_page_and_classes(server):
    health = call(server, "GET", "/healthz", token=None)
    assert health.status == 200
    assert health.json()["status"] == "ok" and health.json()["model_loaded"] is True

    spec = call(server, "GET", "/openapi.json", token=None).json()
    for path in ("/api/parse", "/api/classes", "/api/streams", "/api/streams/{sid}",
                 "/api/streams/{sid}/mjpeg", "/api/streams/{sid}/metrics",
                 "/api/streams/{sid}/frame.jpg", "/metrics", "/healthz"):
        assert path in spec["paths"], path
    parse = spec["paths"]["/api/parse"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(parse["requestBody"]["content"])
    assert {"413", "415", "503"} <= set(parse["responses"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert {"post"} <= set(spec["paths"]["/api/streams"])
    assert {"delete", "get"} <= set(spec["paths"]["/api/streams/{sid}"])

    page = call(server, "GET", "/", token=None)
    assert page.status == 200 and b'id="drop"' in page.body
    assert call(server, "GET", "/static/app.js", token=None).status == 200

    classes = call(server, "GET", "/api/classes", token=None).json()["classes"]
    by_id = {c["id"]: c for c in classes}
    assert by_id[2]["name"] == "Hair"
    assert by_id[2]["color"] == "#" + bytes(PALETTE[2].tolist()).hex()


def test_defaults_bind_loopback_and_serve_keys_are_checked(monkeypatch):
    assert ServeConfig().host == "127.0.0.1"
    monkeypatch.setenv("STREAMER_TOKEN", "from-env")
    assert load_settings(None, [])[1].token == "from-env"
    assert load_settings(None, ["serve.token=given"])[1].token == "given"
    monkeypatch.delenv("STREAMER_TOKEN")
    config, settings = load_settings(None, ["serve.host='0.0.0.0'", "serve.queue=3",
                                            "detector.every=2"])
    assert settings.host == "0.0.0.0" and settings.queue == 3 and config.detector.every == 2
    from streamer.core.errors import ConfigError

    with pytest.raises(ConfigError, match="serve.qeueu"):
        load_settings(None, ["serve.qeueu=3"])
    with pytest.raises(ConfigError, match="max_upload_mb"):
        load_settings(None, ["serve.max_upload_mb=0"])


# --------------------------------------------------------------------------- parsing
def test_parse_multipart_json_then_cache_hit(server):
    data = picture(1)
    body, headers = multipart(data)
    first = call(server, "POST", "/api/parse", body, headers)
    assert first.status == 200, first.body
    assert first.headers["x-cache"] == "miss"
    result = first.json()
    assert (result["width"], result["height"]) == (96, 128)
    assert sum(result["classes"].values()) == 96 * 128
    assert result["persons"], "a photo with nobody detected is parsed whole, as one person"
    for person in result["persons"]:
        x0, y0, x1, y1 = person["box"]
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 128
        assert 0.0 <= person["score"] <= 1.0
        assert person["pixels"] == sum(person["classes"].values())
    assert result["sha256"] == first.headers["x-image-sha256"]

    again = call(server, "POST", "/api/parse", body, headers)
    assert again.status == 200 and again.headers["x-cache"] == "hit"
    assert {**again.json(), "cache": "miss"} == result
    metrics = call(server, "GET", "/metrics", token=None).body.decode()
    assert re.search(r"^streamer_parse_cache_hits_total [1-9]", metrics, re.M)


def test_parse_raw_body_png_overlay_and_label_map(server):
    data = picture(2)
    summary = call(server, "POST", "/api/parse", data, {"Content-Type": "image/png"}).json()
    overlay = call(server, "POST", "/api/parse?format=png", data, {"Content-Type": "image/png"})
    assert overlay.status == 200 and overlay.headers["content-type"] == "image/png"
    assert overlay.headers["x-cache"] == "hit"
    original, drawn = decode(data), decode(overlay.body)
    assert drawn.shape == original.shape
    labels = decode(call(server, "POST", "/api/parse?format=labels", data).body)
    assert labels.shape == original.shape[:2] and labels.dtype == np.uint8
    counts = np.bincount(labels.ravel(), minlength=256)
    assert {name: int(counts[i]) for name, i in summary["class_ids"].items()} == \
        summary["classes"]
    foreground = labels != 0
    assert foreground.any()
    assert np.array_equal(drawn[~foreground], original[~foreground])
    assert (drawn[foreground] != original[foreground]).any()

    bad = call(server, "POST", "/api/parse?format=gif", data)
    assert bad.status == 400 and "format" in bad.error


def test_parse_real_photo(server, media):
    photo = media / "images" / "ultralytics_zidane.jpg"
    body, headers = multipart(photo.read_bytes(), filename=photo.name, ctype="image/jpeg")
    reply = call(server, "POST", "/api/parse", body, headers)
    assert reply.status == 200, reply.body
    result = reply.json()
    assert (result["width"], result["height"]) == Image.open(photo).size
    assert result["persons"] and all(p["pixels"] > 0 for p in result["persons"])


def test_identical_uploads_at_once_are_parsed_once(server):
    data = picture(3, size=(160, 200))
    before = server.service.counters["cache_misses"]
    replies: list[Reply] = []

    def send() -> None:
        replies.append(call(server, "POST", "/api/parse", data, {"Content-Type": "image/png"}))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert [r.status for r in replies] == [200, 200]
    kinds = sorted(r.headers["x-cache"] for r in replies)
    assert "miss" in kinds and set(kinds) - {"miss"} <= {"hit", "shared"}, kinds
    assert server.service.counters["cache_misses"] == before + 1


# --------------------------------------------------------------------------- refusals
def test_upload_over_the_limit_is_413_from_content_length(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.putrequest("POST", "/api/parse")
        conn.putheader("Authorization", f"Bearer {TOKEN}")
        conn.putheader("Content-Type", "image/png")
        conn.putheader("Content-Length", str(10 * UPLOAD_LIMIT))
        conn.endheaders()  # nothing sent: refused on the header alone
        resp = conn.getresponse()
        assert resp.status == 413
        assert "limit" in json.loads(resp.read())["error"]
    finally:
        conn.close()


def test_upload_over_the_limit_is_413_while_streaming_chunks(server):
    # No Content-Length: chunks are sent until just past the limit (upload + multipart room),
    # then the client stops sending and reads the answer.
    chunk = b"\0" * (64 << 10)
    limit = UPLOAD_LIMIT + (64 << 10)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /api/parse HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                     b"Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        while sent <= limit:
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_multipart_file_over_the_limit_is_413(server):
    body, headers = multipart(b"\x89PNG" + b"\0" * (UPLOAD_LIMIT + 1000))
    reply = call(server, "POST", "/api/parse", body, headers)
    assert reply.status == 413 and "limit" in reply.error


@pytest.mark.parametrize("case", ["text", "empty", "no-image-field", "truncated", "pdf"])
def test_bad_bodies_get_415_or_400_with_the_reason(server, case):
    if case == "text":
        reply = call(server, "POST", "/api/parse", b"hello, not a picture",
                     {"Content-Type": "text/plain"})
        assert reply.status == 415 and "not an image" in reply.error
    elif case == "pdf":
        body, headers = multipart(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", filename="a.pdf",
                                  ctype="application/pdf")
        reply = call(server, "POST", "/api/parse", body, headers)
        assert reply.status == 415
    elif case == "empty":
        reply = call(server, "POST", "/api/parse", b"", {"Content-Type": "image/png"})
        assert reply.status == 400 and "empty" in reply.error
    elif case == "no-image-field":
        body, headers = multipart(picture(4), field="photo")
        reply = call(server, "POST", "/api/parse", body, headers)
        assert reply.status == 400 and "`image`" in reply.error
    else:
        jpeg = picture(5, size=(200, 160), fmt="JPEG")
        reply = call(server, "POST", "/api/parse", jpeg[: len(jpeg) // 2],
                     {"Content-Type": "image/jpeg"})
        assert reply.status == 400 and "truncated or corrupt" in reply.error


def test_decompression_bomb_is_refused_before_decoding(server):
    bomb = png_claiming(100_000, 100_000)  # 10 G pixels declared in a 100-byte file
    assert len(bomb) < 200
    reply = call(server, "POST", "/api/parse", bomb, {"Content-Type": "image/png"})
    assert reply.status == 413 and "before decoding" in reply.error

    just_over = picture(6, size=(1100, 1000), fmt="JPEG")  # 1.1 MP > serve.max_pixels
    assert len(just_over) < UPLOAD_LIMIT
    reply = call(server, "POST", "/api/parse", just_over, {"Content-Type": "image/jpeg"})
    assert reply.status == 413 and "serve.max_pixels" in reply.error


@pytest.mark.parametrize("size", [(1, 40000), (40000, 1), (2, 4000), (3, 3)])
def test_extreme_or_tiny_images_get_a_json_4xx(server, size):
    """Issue 14 item 7: a 1x40000 PNG crashed the detector's resize into a plain-text 500."""
    width, height = size
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buf, "PNG")
    for fmt in ("json", "png"):
        reply = call(server, "POST", f"/api/parse?format={fmt}", buf.getvalue(),
                     {"Content-Type": "image/png"})
        assert reply.status == 422, reply.body
        assert reply.headers["content-type"] == "application/json"
        assert f"{width}x{height}" in reply.error and "at least" in reply.error, reply.error
    # The limits themselves are fine: 8 px and 20:1.
    buf = io.BytesIO()
    Image.fromarray(np.full((160, 8, 3), 128, np.uint8)).save(buf, "PNG")
    assert call(server, "POST", "/api/parse", buf.getvalue(), {"Content-Type": "image/png"}
                ).status == 200


def test_saturated_pool_answers_503_with_retry_after(server):
    pool = server.service.pool
    gate = threading.Event()
    held = [pool.try_submit(lambda worker: gate.wait(TIMEOUT)) for _ in range(pool.capacity)]
    try:
        assert all(f is not None for f in held)
        reply = call(server, "POST", "/api/parse", picture(7), {"Content-Type": "image/png"})
        assert reply.status == 503
        assert int(reply.headers["retry-after"]) >= 1
        assert "busy" in reply.error
    finally:
        gate.set()
        for future in held:
            future.result(timeout=TIMEOUT)
    reply = call(server, "POST", "/api/parse", picture(7), {"Content-Type": "image/png"})
    assert reply.status == 200
    metrics = call(server, "GET", "/metrics", token=None).body.decode()
    assert re.search(r"^streamer_parse_rejected_total [1-9]", metrics, re.M)


def test_write_endpoints_need_the_bearer_token(server, clip):
    data = picture(8)
    for token in (None, "wrong"):
        reply = call(server, "POST", "/api/parse", data, {"Content-Type": "image/png"},
                     token=token)
        assert reply.status == 401 and reply.headers["www-authenticate"].startswith("Bearer")
        assert post_json(server, "/api/streams", {"source": str(clip)},
                         token=token).status == 401
        assert call(server, "DELETE", "/api/streams/anything", token=token).status == 401
    # Reading needs no token.
    for path in ("/healthz", "/metrics", "/api/streams", "/api/classes", "/openapi.json"):
        assert call(server, "GET", path, token=None).status == 200, path


# --------------------------------------------------------------------------- streams
def test_stream_lifecycle_mjpeg_and_metrics(server, clip):
    info = start_stream(server, clip)
    sid = info["id"]
    assert info["state"] == "running" and info["policy"] == "latest"
    listed = call(server, "GET", "/api/streams", token=None).json()["streams"]
    assert sid in [s["id"] for s in listed]
    assert call(server, "GET", f"/api/streams/{sid}", token=None).json()["source"] == str(clip)

    viewer = Mjpeg(server.port, f"/api/streams/{sid}/mjpeg")
    try:
        assert viewer.status == 200
        assert viewer.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
        indices = []
        for _ in range(4):
            headers, jpeg = viewer.part()
            assert headers["content-type"] == "image/jpeg"
            assert decode(jpeg).shape == (240, 320, 3)
            indices.append(int(headers["x-frame-index"]))
        assert indices == sorted(set(indices)), indices
        second = Mjpeg(server.port, f"/api/streams/{sid}/mjpeg")
        try:
            second.part()  # both viewers are now counted
            third = call(server, "GET", f"/api/streams/{sid}/mjpeg", token=None)
            assert third.status == 503 and "serve.max_viewers" in third.error
            assert "retry-after" in third.headers
        finally:
            second.close()
    finally:
        viewer.close()

    snapshot = call(server, "GET", f"/api/streams/{sid}/frame.jpg", token=None)
    assert snapshot.status == 200 and decode(snapshot.body).shape == (240, 320, 3)

    summary = stream_summary(server, sid)
    assert set(RunMetrics().summary()) <= set(summary)
    assert summary["frames_read"] >= 4 and summary["frames_written"] >= 4
    assert summary["state"] == "running"

    metrics = call(server, "GET", "/metrics", token=None)
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.body.decode()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r'[a-z_]+(\{[^}]*\})? -?[0-9.e+-]+', line), line
    for name in ("streamer_stream_fps", "streamer_stream_frames_dropped_total",
                 "streamer_stream_reconnects_total"):
        assert re.search(rf'^{name}{{stream="{sid}"}} ', text, re.M), name
    for q in ("0.5", "0.95"):
        assert f'streamer_stream_latency_seconds{{stream="{sid}",quantile="{q}"}}' in text

    stopped = call(server, "DELETE", f"/api/streams/{sid}")
    assert stopped.status == 200
    assert stopped.json()["state"] == "stopped"
    assert stopped.json()["summary"]["frames_read"] >= summary["frames_read"]
    for method, path in (("GET", f"/api/streams/{sid}"), ("GET", f"/api/streams/{sid}/metrics"),
                         ("GET", f"/api/streams/{sid}/mjpeg"), ("DELETE", f"/api/streams/{sid}")):
        assert call(server, method, path).status == 404, path


def test_slow_viewer_never_slows_the_pipeline(server, clip):
    sid = start_stream(server, clip)["id"]
    slow = Mjpeg(server.port, f"/api/streams/{sid}/mjpeg", rcvbuf=4096)
    try:
        _, _ = slow.part()
        headers, _ = slow.part()
        last_seen = int(headers["x-frame-index"])
        before = stream_summary(server, sid)
        time.sleep(2.0)  # the viewer reads nothing; the pipeline must go on
        during = stream_summary(server, sid)
        assert call(server, "GET", f"/api/streams/{sid}", token=None).json()["viewers"] == 1
        assert during["frames_written"] - before["frames_written"] >= 10
        produced = during["frames_read"] - 1  # index of the newest frame decoded
        # Catch up: a viewer skips to the newest frame instead of receiving a backlog.
        parts = 0
        index = last_seen
        while index < produced:
            headers, _ = slow.part()
            new = int(headers["x-frame-index"])
            assert new > index
            index = new
            parts += 1
        assert parts < produced - last_seen, (parts, produced, last_seen)
    finally:
        slow.close()
        call(server, "DELETE", f"/api/streams/{sid}")


def test_stream_refusals(server, clip):
    unknown = post_json(server, "/api/streams", {"source": str(clip),
                                                 "config": {"detector.evry": 3}})
    assert unknown.status == 400 and "detector.evry" in unknown.error
    forbidden = post_json(server, "/api/streams", {"source": str(clip),
                                                   "config": {"output.path": "/tmp/x.mp4"}})
    assert forbidden.status == 400 and "output.path" in forbidden.error
    missing = post_json(server, "/api/streams", {"source": str(clip.with_name("nope.mp4"))})
    assert missing.status == 422 and "no readable video" in missing.error
    assert post_json(server, "/api/streams", {"config": {}}).status == 422

    named = post_json(server, "/api/streams", {"source": str(clip), "name": "cam-a",
                                               "config": {"source.realtime": True}})
    assert named.status == 201 and named.json()["id"] == "cam-a"
    started = ["cam-a"]
    try:
        dup = post_json(server, "/api/streams", {"source": str(clip), "name": "cam-a"})
        assert dup.status == 409 and "cam-a" in dup.error
        bad_name = post_json(server, "/api/streams", {"source": str(clip), "name": "a b"})
        assert bad_name.status == 422 and "body.name" in bad_name.error
        started.append(start_stream(server, clip)["id"])
        over = post_json(server, "/api/streams", {"source": str(clip)})
        assert over.status == 429 and "serve.max_streams" in over.error
    finally:
        for sid in started:
            assert call(server, "DELETE", f"/api/streams/{sid}").status == 200


def test_configured_streams_start_with_the_server(tiny_single_model, clip):
    spec = (f"serve.streams=[{{source: '{clip}', name: cfg, config: {{source.realtime: true, "
            "detector.type: full}}]")
    config, settings = settings_for(tiny_single_model, spec, "serve.workers=1")
    with BackgroundServer(Service(config, settings)) as srv:
        streams = call(srv, "GET", "/api/streams").json()["streams"]
        assert [s["id"] for s in streams] == ["cfg"]
        assert streams[0]["state"] in ("starting", "running")
        assert call(srv, "DELETE", "/api/streams/cfg").status == 200


def test_no_local_files_unless_media_root_is_set(tiny_single_model, clip, tmp_path):
    """Issue 14 item 11: by default a caller opens no local file at all (not even with
    ``file://``), no webcam, and cannot tell a missing path from an existing one."""
    secret = tmp_path / "id_ed25519"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    config, settings = settings_for(tiny_single_model, "serve.workers=1")
    assert settings.media_root is None and settings.host == "127.0.0.1"
    with BackgroundServer(Service(config, settings)) as srv:
        answers = {}
        for source in (str(clip), str(secret), str(tmp_path / "missing.mp4"), "/etc/hostname",
                       f"file://{clip}", f"file://{secret}", "0", "/dev/video0",
                       "concat:" + str(clip)):
            reply = post_json(srv, "/api/streams", {"source": source}, token=None)
            assert reply.status == 400, (source, reply.body)
            answers[source] = reply.error.replace(source, "SOURCE")
        assert "serve.media_root" in answers[str(clip)]
        # One answer for a video, a key file and a missing path: nothing to tell them apart.
        assert answers[str(clip)] == answers[str(secret)] == answers[str(tmp_path / "missing.mp4")]
        assert call(srv, "GET", "/api/streams", token=None).json()["streams"] == []


def test_media_root_confines_files_and_answers_alike(tiny_single_model, clip, tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    shutil.copy(clip, root / "sub" / "inside.mp4")
    (root / "notes.mp4").write_text("not a video\n")
    (root / "escape.mp4").symlink_to(clip)           # a real video, but outside the root
    (root / "sub" / "alias.mp4").symlink_to(root / "sub" / "inside.mp4")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(clip, outside / "video.mp4")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    config, settings = settings_for(tiny_single_model, "serve.workers=1", "serve.max_streams=4",
                                    f"serve.media_root='{root}'")
    with BackgroundServer(Service(config, settings)) as srv:
        started = []
        for source in ("sub/inside.mp4", str(root / "sub" / "inside.mp4"), "sub/alias.mp4"):
            reply = post_json(srv, "/api/streams", {"source": source, "config": {
                "source.realtime": True, "detector.type": "full"}}, token=None)
            assert reply.status == 201, (source, reply.body)
            started.append(reply.json()["id"])
        for sid in started:
            assert call(srv, "DELETE", f"/api/streams/{sid}").status == 200
        refused = {}
        for source in ("missing.mp4", "notes.mp4", "escape.mp4", "linkdir/video.mp4",
                       "../outside/video.mp4", str(outside / "video.mp4"), str(clip), "sub",
                       "/etc/hostname", f"file://{root}/sub/inside.mp4", "1"):
            reply = post_json(srv, "/api/streams", {"source": source}, token=None)
            assert reply.status in (400, 422), (source, reply.body)
            refused[source] = (reply.status, reply.error.replace(source, "SOURCE"))
        local = [refused[s] for s in ("missing.mp4", "notes.mp4", "escape.mp4",
                                      "linkdir/video.mp4", "../outside/video.mp4",
                                      str(outside / "video.mp4"), str(clip), "sub",
                                      "/etc/hostname")]
        assert len(set(local)) == 1, refused  # missing, not a video, outside: one answer
        assert local[0][0] == 422 and "serve.media_root" in local[0][1]
        assert refused["1"][0] == 400 and "webcam" in refused["1"][1]
        assert refused[f"file://{root}/sub/inside.mp4"][0] == 400


def test_allow_files_and_media_root_settings(tiny_single_model, tmp_path, capsys):
    from streamer.core.errors import ConfigError

    with pytest.raises(ConfigError, match="serve.media_root"):
        load_settings(None, ["serve.allow_files=true"])
    with pytest.raises(ConfigError, match="serve.media_root"):
        load_settings(None, [f"serve.media_root='{tmp_path / 'nope'}'"])
    with pytest.raises(ConfigError, match="allow_files"):
        load_settings(None, ["serve.allow_files=false", f"serve.media_root='{tmp_path}'"])
    assert load_settings(None, ["serve.allow_files=false"])[1].media_root is None
    both = load_settings(None, ["serve.allow_files=true", f"serve.media_root='{tmp_path}'"])[1]
    assert both.media_root == str(tmp_path.resolve())
    assert main(["--set", "serve.allow_files=true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "serve.media_root" in err, err


# --------------------------------------------------------------------------- caches
def test_memory_cache_is_a_bounded_lru():
    import asyncio

    async def scenario() -> dict:
        cache = MemoryCache(max_bytes=1000)
        for i in range(3):
            await cache.put(f"k{i}", bytes(300))
        assert await cache.get("k0") is not None  # k0 is now the most recent
        await cache.put("k3", bytes(300))  # evicts k1, the least recent
        await cache.put("huge", bytes(5000))  # larger than the whole cache: not stored
        assert await cache.get("k1") is None and await cache.get("huge") is None
        assert await cache.get("k0") is not None and await cache.get("k3") is not None
        return cache.stats()

    stats = asyncio.run(scenario())
    assert stats["entries"] == 3 and stats["bytes"] <= 1000 and stats["evictions"] == 1


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=15)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_cache_answers_repeats_and_survives_a_restart(tiny_single_model, redis_url):
    import redis

    data = picture(9)
    config, settings = settings_for(tiny_single_model, f"serve.redis_url='{redis_url}'",
                                    "serve.workers=1")
    with BackgroundServer(Service(config, settings)) as srv:
        assert call(srv, "GET", "/healthz").json()["cache"]["kind"] == "redis"
        first = call(srv, "POST", "/api/parse", data, {"Content-Type": "image/png"})
        assert first.status == 200 and first.headers["x-cache"] == "miss"
        second = call(srv, "POST", "/api/parse", data, {"Content-Type": "image/png"})
        assert second.headers["x-cache"] == "hit"
    client = redis.Redis.from_url(redis_url)
    keys = client.keys("streamer:parse:*")
    assert len(keys) == 1 and client.ttl(keys[0]) > 0
    client.close()
    # A new server process state, the same Redis: the first upload is already a hit.
    config, settings = settings_for(tiny_single_model, f"serve.redis_url='{redis_url}'",
                                    "serve.workers=1")
    with BackgroundServer(Service(config, settings)) as srv:
        again = call(srv, "POST", "/api/parse?format=png", data, {"Content-Type": "image/png"})
        assert again.status == 200 and again.headers["x-cache"] == "hit"


# --------------------------------------------------------------------------- the command
def test_serve_command_config_and_port_errors(capsys):
    assert main(["--set", "serve.bogus=1"]) == 2
    assert "unknown config key serve.bogus" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port)]) == 1
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


@contextlib.contextmanager
def serve_command(model: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``run_stream.py serve`` on a free port, as a real process: ``(process, port)`` once it
    says it is serving; killed at the end if still running."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_stream.py"), "serve", "--port", "0", "--model",
         str(model), "--set", "parser.engine=torch", "--set", "serve.workers=1", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield proc, int(match.group(1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def test_serve_command_runs_and_stops_on_sigterm(tiny_single_model):
    with serve_command(tiny_single_model) as (proc, port):
        assert call(SimpleNamespace(port=port), "GET", "/healthz", token=None).status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM


# --------------------------------------------------------------------------- real clients
def test_validation_errors_have_the_one_error_shape(server):
    """Issue 14 item 12: FastAPI's own 422s are ``{"error": ...}`` like every other answer,
    and the spec says so."""
    for payload in ({"config": {}}, {"source": "x", "name": True, "config": -1}, {"source": ""}):
        reply = post_json(server, "/api/streams", payload)
        assert reply.status == 422, reply.body
        assert set(reply.json()) == {"error"} and reply.error.startswith("invalid request: ")
    assert "body.source" in post_json(server, "/api/streams", {"config": {}}).error
    bad_fps = call(server, "GET", "/api/streams/none/mjpeg?fps=-1", token=None)
    assert bad_fps.status == 422 and "query.fps" in bad_fps.error
    spec = call(server, "GET", "/openapi.json", token=None).json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            answer = operation["responses"].get("422")
            if answer is not None:
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_metrics_pass_promtool_and_prometheus_parser(server, clip):
    """Issue 14 item 14: the exposition is what Prometheus' own tools accept."""
    from prometheus_client.parser import text_string_to_metric_families

    assert call(server, "POST", "/api/parse", picture(30), {"Content-Type": "image/png"}
                ).status == 200
    sid = start_stream(server, clip)["id"]
    try:
        deadline = time.monotonic() + TIMEOUT
        while stream_summary(server, sid)["frames_written"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        text = call(server, "GET", "/metrics", token=None).body.decode()
    finally:
        call(server, "DELETE", f"/api/streams/{sid}")

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("streamer_parse_seconds", "streamer_stream_latency_seconds"):
        family = families[name]
        assert family.type == "summary", (name, family.type)
        kinds = {s.name for s in family.samples}
        assert {name, f"{name}_sum", f"{name}_count"} <= kinds, kinds
        count = [s.value for s in family.samples if s.name == f"{name}_count"]
        assert count and all(c >= 1 for c in count), family.samples
        quantiles = {s.labels.get("quantile") for s in family.samples if s.name == name}
        assert quantiles == {"0.5", "0.95"}

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus); the exposition "
                    "passed prometheus_client's parser only")
    checked = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                             capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_client_dropping_mid_upload_logs_one_line_at_most(tiny_single_model):
    """Issue 14 item 13: a real socket sends half a multipart upload and closes; the server
    (the real command, its real logging) logs no traceback, and goes on serving."""
    with serve_command(tiny_single_model, "--log-level", "INFO") as (proc, port):
        body, headers = multipart(picture(40, size=(400, 300)))
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
                sock.sendall(f"POST /api/parse HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             f"Content-Type: {headers['Content-Type']}\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode()
                             + body[: len(body) // 2])
                time.sleep(0.3)  # the server is reading the body when the client goes
        time.sleep(0.5)
        ok = call(SimpleNamespace(port=port), "POST", "/api/parse", picture(41),
                  {"Content-Type": "image/png"}, token=None)
        assert ok.status == 200, ok.body
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log = proc.stderr.read()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log
    dropped = [line for line in log.splitlines() if "disconnect" in line.lower()
               or "went away" in line.lower()]
    assert len(dropped) <= 2, log  # one line per dropped client at most
