"""Issue 16 items 2, 3 and 5 in ``run_stream.py serve``: every stream added through the API and
the photo uploads share one model (one ParseScheduler), streams come and go at run time
without touching the others, one stream's bad config is that request's error alone, and every
stream's honest overlay age and parse rate are in /api/streams and /metrics.

Real server (uvicorn on 127.0.0.1), real RTSP servers (tests/rtsp_server.py), the tiny
random-weight model, counted by what the process constructed (``HumanParser.built``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from media_helpers import RtspServer, make_clip, rtsp_unavailable_reason
from test_serve import call, picture, post_json, settings_for

from streamer.core.errors import ConfigError
from streamer.parsing.parser import HumanParser
from streamer.serve.model import PHOTO_LANE
from streamer.serve.runner import BackgroundServer
from streamer.serve.service import Service
from streamer.serve.settings import load_settings

needs_rtsp = pytest.mark.skipif(rtsp_unavailable_reason() is not None,
                                reason=str(rtsp_unavailable_reason()))
FAST = {"detector.type": "full", "source.open_timeout_s": 2, "source.read_timeout_s": 2}


@pytest.fixture(scope="module")
def rtsp_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("serve-streams") / "clip.mp4", frames=50,
                     size=(160, 120), fps=25)


@pytest.fixture
def cameras(rtsp_clip: Path) -> Iterator[list[RtspServer]]:
    servers = [RtspServer(rtsp_clip, loop=True).start() for _ in range(3)]
    try:
        yield servers
    finally:
        for server in servers:
            server.kill()


def add(server: BackgroundServer, name: str, url: str, **config: object) -> dict:
    reply = post_json(server, "/api/streams", {"source": url, "name": name,
                                               "config": {**FAST, **config}}, token=None)
    assert reply.status == 201, reply.body
    return reply.json()


def listed(server: BackgroundServer) -> dict:
    reply = call(server, "GET", "/api/streams", token=None)
    assert reply.status == 200
    return reply.json()


def written(server: BackgroundServer, name: str) -> int:
    return call(server, "GET", f"/api/streams/{name}/metrics", token=None).json()[
        "frames_written"]


def lanes(server: BackgroundServer) -> set[str]:
    return {lane.name for lane in server.service.model.scheduler().lanes}


def wait_until(condition, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@needs_rtsp
def test_api_streams_and_photos_share_one_model_and_come_and_go_alone(tiny_single_model,
                                                                       cameras):
    from prometheus_client.parser import text_string_to_metric_families

    built, engines = HumanParser.built, HumanParser.engines_built
    config, settings = settings_for(tiny_single_model, "serve.workers=2", "serve.max_streams=3")
    with BackgroundServer(Service(config, settings)) as server:
        add(server, "a", cameras[0].url)
        reply = post_json(server, "/api/streams", {"source": cameras[1].url, "name": "b",
                                                   "config": FAST, "priority": 2}, token=None)
        assert reply.status == 201 and reply.json()["priority"] == 2, reply.body
        photo = call(server, "POST", "/api/parse", picture(3), {"Content-Type": "image/png"},
                     token=None)
        assert photo.status == 200 and photo.json()["wait_ms"] >= 0
        # What was constructed, not a flag: one parser, one compiled network, for two
        # streams and a pool of two photo workers.
        assert HumanParser.built - built == 1 and HumanParser.engines_built - engines == 1
        model = server.service.model.ready.result()
        assert [h.pipeline.parser for h in server.service.streams.values()] == [model, model]
        assert lanes(server) == {"a", "b", PHOTO_LANE}
        shared = listed(server)["model"]
        assert shared["parsers_built"] == HumanParser.built and shared["photo_parser"] == "shared"
        # The photo was parsed on the scheduler's thread, between the streams' parses.
        assert shared["lanes"][PHOTO_LANE]["parses"] >= 1

        # One stream's bad config is that request's error alone, in the one error shape.
        bad = [post_json(server, "/api/streams", {"source": "rtsp://127.0.0.1:1/none",
                                                  "name": "dead", "config": {
                                                      **FAST, "source.reconnect_max_attempts": 1,
                                                      "source.open_timeout_s": 1}}, token=None),
               post_json(server, "/api/streams", {"source": cameras[2].url,
                                                  "config": {"parser.engine": "openvino"}},
                         token=None),
               post_json(server, "/api/streams", {"source": cameras[2].url,
                                                  "config": {"buffer.policy": "wait"}},
                         token=None)]
        assert [r.status for r in bad] == [422, 400, 400], [r.body for r in bad]
        assert all(set(r.json()) == {"error"} for r in bad)
        assert "one model" in bad[1].error and "buffer.policy" in bad[2].error
        assert lanes(server) == {"a", "b", PHOTO_LANE}

        # Added and removed while a and b run: their lanes and frames go on untouched.
        add(server, "c", cameras[2].url)
        wait_until(lambda: listed(server)["model"]["lanes"].get("c", {}).get("parses", 0) >= 2,
                   what="c to be parsed")
        before = {n: written(server, n) for n in ("a", "b")}
        removed = call(server, "DELETE", "/api/streams/c", token=None)
        assert removed.status == 200 and removed.json()["summary"]["frames_parsed"] >= 2
        assert lanes(server) == {"a", "b", PHOTO_LANE}
        time.sleep(1.2)
        for name, count in before.items():
            assert written(server, name) - count >= 15, name  # still about 25 fps

        streams = {s["id"]: s for s in listed(server)["streams"]}
        text = call(server, "GET", "/metrics", token=None).body.decode()
    assert HumanParser.built - built == 1  # nothing more was built for c

    for name in ("a", "b"):
        row = streams[name]
        assert row["state"] == "running" and row["parse_fps"] > 0
        assert row["overlay_age_ms"]["p95"] >= row["overlay_age_ms"]["p50"] > 0
        assert {"fps", "frames_dropped", "reconnects"} <= set(row)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ages = families["streamer_stream_overlay_age_seconds"]
    assert ages.type == "summary"
    for name in ("a", "b"):
        quantiles = {s.labels.get("quantile"): s.value for s in ages.samples
                     if s.name == ages.name and s.labels["stream"] == name}
        assert set(quantiles) == {"0.5", "0.95"} and quantiles["0.5"] > 0, quantiles
        fps = [s.value for s in families["streamer_stream_parse_fps"].samples
               if s.labels["stream"] == name]
        assert fps and fps[0] > 0
    assert families["streamer_model_parsers_built"].samples[0].value == HumanParser.built


def test_separate_photo_parser_is_a_model_of_its_own(tiny_single_model, tmp_path):
    """``serve.photo_parser: separate``: the pool's model is its own, the streams' is loaded
    for the first stream; a bad value is a one-line config error."""
    with pytest.raises(ConfigError, match="serve.photo_parser must be one of shared, separate"):
        load_settings(None, ["serve.photo_parser=both"])
    clip = make_clip(tmp_path / "clip.mp4", frames=300, size=(160, 120), fps=25)  # 12 s
    built = HumanParser.built
    config, settings = settings_for(tiny_single_model, "serve.workers=1",
                                    "serve.photo_parser=separate",
                                    f"serve.media_root='{tmp_path}'")
    with BackgroundServer(Service(config, settings)) as server:
        assert HumanParser.built - built == 1  # the photo worker's
        assert PHOTO_LANE not in listed(server)["model"]["lanes"]
        add(server, "file", clip.name)
        assert lanes(server) == {"file"}
        assert HumanParser.built - built == 2  # and the streams' one
        assert call(server, "POST", "/api/parse", picture(4), {"Content-Type": "image/png"},
                    token=None).json()["wait_ms"] == 0
        assert call(server, "DELETE", "/api/streams/file", token=None).status == 200
        assert lanes(server) == set()
