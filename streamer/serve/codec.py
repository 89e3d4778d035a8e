"""Parse results as the API answers them (:func:`summarize`) and as the cache stores them
(:func:`pack` / :func:`unpack`: compressed label and person maps plus the JSON answer).

Example:
    >>> entry = pack(result, summarize(result, 640, 480))
    >>> unpack_meta(entry)["width"]
    640
"""

from __future__ import annotations

import io
import json
from typing import TypedDict, cast

import numpy as np

from streamer.core.types import Box, ParseResult, Person
from streamer.vision.render import class_name


class PersonSummary(TypedDict):
    """One person of a parse answer (``PersonOut`` in the OpenAPI spec)."""

    id: int
    score: float
    box: list[int]  # x0, y0, x1, y1 in pixels; x1 and y1 exclusive
    pixels: int
    classes: dict[str, int]  # pixels of each class on this person


class ParseSummary(TypedDict):
    """What :func:`summarize` counts in a parse result."""

    width: int
    height: int
    persons: list[PersonSummary]
    classes: dict[str, int]  # pixels of each class present, background too
    class_ids: dict[str, int]
    class_names: list[str]


class ParseMeta(ParseSummary, total=False):
    """The JSON answer (``ParseOut``): the summary and how it was made (stored in the cache
    entry), then ``cache`` and ``sha256`` (added per answer)."""

    parse_ms: float
    wait_ms: float  # waiting for the shared model's turn (0 with a model of its own)
    engine: str
    model: str
    cache: str
    sha256: str


def summarize(result: ParseResult, width: int, height: int) -> ParseMeta:
    """The JSON answer of a parse: persons with boxes, scores and pixels per class."""
    classes = tuple(result.classes)
    labels = np.ascontiguousarray(result.labels, dtype=np.uint8).ravel()
    counts = np.bincount(labels, minlength=256)
    persons: list[PersonSummary] = []
    per_person: np.ndarray | None = None
    if result.instances is not None and result.persons:
        inst = np.asarray(result.instances).ravel().astype(np.int64)
        top = max(int(inst.max(initial=0)), max(p.id for p in result.persons)) + 1
        per_person = np.bincount(inst * 256 + labels, minlength=top * 256).reshape(top, 256)
    for p in result.persons:
        row = per_person[p.id] if per_person is not None else np.zeros(256, np.int64)
        persons.append({
            "id": int(p.id),
            "score": round(float(p.score), 4),
            "box": [int(p.box.x0), int(p.box.y0), int(p.box.x1), int(p.box.y1)],
            "pixels": int(row[1:].sum()),
            "classes": {class_name(int(k), classes): int(row[k])
                        for k in np.flatnonzero(row) if k != 0},
        })
    return {
        "width": int(width),
        "height": int(height),
        "persons": persons,
        "classes": {class_name(int(k), classes): int(counts[k]) for k in np.flatnonzero(counts)},
        "class_ids": {class_name(int(k), classes): int(k) for k in np.flatnonzero(counts)},
        "class_names": list(classes),
    }


def pack(result: ParseResult, meta: ParseMeta) -> bytes:
    """A cache entry: label and person maps (compressed) and the JSON answer."""
    labels = np.ascontiguousarray(result.labels, dtype=np.uint8)
    encoded = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    if result.instances is None:
        np.savez_compressed(buf, labels=labels, meta=encoded)
    else:
        np.savez_compressed(buf, labels=labels, meta=encoded,
                            instances=np.ascontiguousarray(result.instances))
    return buf.getvalue()


def unpack_meta(entry: bytes) -> ParseMeta:
    """The JSON answer stored in a cache entry, without loading its maps."""
    with np.load(io.BytesIO(entry), allow_pickle=False) as z:
        return cast(ParseMeta, dict(json.loads(z["meta"].tobytes())))


def unpack(entry: bytes) -> tuple[ParseResult, ParseMeta]:
    """The parse result (label and person maps, persons) and the JSON answer of an entry."""
    with np.load(io.BytesIO(entry), allow_pickle=False) as z:
        meta = cast(ParseMeta, dict(json.loads(z["meta"].tobytes())))
        labels = z["labels"]
        instances = z["instances"] if "instances" in z.files else None
    persons = [Person(p["id"], p["score"], Box(*p["box"])) for p in meta["persons"]]
    return ParseResult(labels, tuple(meta["class_names"]), instances, persons), meta
