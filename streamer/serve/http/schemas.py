"""The request and answer models of the OpenAPI spec (``/openapi.json``, ``/docs``).

Example:
    >>> StreamCreate(source="rtsp://127.0.0.1:8554/stream").config
    {}
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from streamer.serve.streams import STREAM_NAME


class StreamCreate(BaseModel):
    """Body of POST /api/streams."""

    source: str = Field(min_length=1,
                        description="a stream URL (rtsp, rtsps, rtmp, rtmps, srt, udp, rtp, "
                                    "http, https), or a video file below serve.media_root "
                                    "(relative to it, or absolute) when the server sets one",
                        examples=["rtsp://127.0.0.1:8554/stream"])
    name: str | None = Field(default=None, pattern=STREAM_NAME.pattern,
                             description="stream id (letters, digits, - and _); default: a "
                                         "random one")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="config overrides, as {'detector.every': 3} or {'detector': {'every': 3}}; "
                    "source (except uri), buffer, detector, parse, render and output.frames "
                    "may be set; parser is the server's (every stream shares its one model)",
        examples=[{"source.realtime": True, "detector.type": "full"}])
    priority: float = Field(default=1.0, gt=0, le=100,
                            description="share of the shared model: the stream whose shown "
                                        "overlay is oldest x priority is parsed next")


class PersonOut(BaseModel):
    id: int
    score: float
    box: list[int] = Field(description="x0, y0, x1, y1 in pixels; x1 and y1 exclusive")
    pixels: int
    classes: dict[str, int] = Field(description="pixels of each class on this person")


class ParseOut(BaseModel):
    width: int
    height: int
    persons: list[PersonOut]
    classes: dict[str, int] = Field(description="pixels of each class present, background too")
    class_ids: dict[str, int]
    class_names: list[str]
    parse_ms: float
    wait_ms: float = Field(default=0.0, description="time this photo waited for its turn on "
                                                    "the shared model (serve.photo_parser)")
    engine: str
    model: str
    cache: str = Field(description="hit, miss, or shared (an identical upload was running)")
    sha256: str


class ErrorOut(BaseModel):
    error: str


#: Answers every write route may give (FastAPI's ``responses=`` type).
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "bad request (the reason says what)"},
    401: {"model": ErrorOut, "description": "serve.token is set and the bearer token is "
                                            "missing or wrong"},
}
