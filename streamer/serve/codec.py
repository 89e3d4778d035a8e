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
from typing import Any

import numpy as np

from streamer.core.types import Box, ParseResult, Person
from streamer.vision.render import class_name


def summarize(result: ParseResult, width: int, height: int) -> dict[str, Any]:
    """The JSON answer of a parse: persons with boxes, scores and pixels per class."""
    classes = tuple(result.classes)
    labels = np.ascontiguousarray(result.labels, dtype=np.uint8).ravel()
    counts = np.bincount(labels, minlength=256)
    persons: list[dict[str, Any]] = []
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


def pack(result: ParseResult, meta: dict[str, Any]) -> bytes:
    """A cache entry: label and person maps (compressed) and the JSON answer."""
    arrays: dict[str, np.ndarray] = {
        "labels": np.ascontiguousarray(result.labels, dtype=np.uint8),
        "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
    }
    if result.instances is not None:
        arrays["instances"] = np.ascontiguousarray(result.instances)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def unpack_meta(entry: bytes) -> dict[str, Any]:
    with np.load(io.BytesIO(entry), allow_pickle=False) as z:
        return dict(json.loads(z["meta"].tobytes()))


def unpack(entry: bytes) -> tuple[ParseResult, dict[str, Any]]:
    with np.load(io.BytesIO(entry), allow_pickle=False) as z:
        meta = dict(json.loads(z["meta"].tobytes()))
        labels = z["labels"]
        instances = z["instances"] if "instances" in z.files else None
    persons = [Person(p["id"], p["score"], Box(*p["box"])) for p in meta["persons"]]
    return ParseResult(labels, tuple(meta["class_names"]), instances, persons), meta
