"""Carrying a parse result to a later frame, so that an overlay follows the people it belongs to.

On live video most frames are shown with the parse of an earlier frame. :func:`shift_persons`
moves each person's labels by how far that person's tracked box has moved since.

Example:
    >>> moved = shift_persons(result, {1: (12, -3)})   # person 1 moved 12 px right, 3 px up
"""

from __future__ import annotations

import numpy as np

from streamer.core.types import Box, ParseResult, Person


def _clip(box: Box, width: int, height: int) -> Box:
    return Box(min(max(box.x0, 0), width), min(max(box.y0, 0), height),
               min(max(box.x1, 0), width), min(max(box.y1, 0), height), box.score)


def shift_persons(result: ParseResult, offsets: dict[int, tuple[int, int]]) -> ParseResult:
    """A copy of ``result`` with each person's pixels moved by ``offsets[id] = (dx, dy)``.

    Needs a person-id map (``result.instances``). Labels that belong to nobody stay where they
    are; people are pasted lowest score first, so the higher score wins where they overlap.
    """
    if result.instances is None or not any(offsets.get(p.id, (0, 0)) != (0, 0)
                                           for p in result.persons):
        return result
    h, w = result.labels.shape
    labels = np.where(result.instances == 0, result.labels, 0).astype(result.labels.dtype)
    instances = np.zeros_like(result.instances)
    persons: list[Person] = []
    for person in sorted(result.persons, key=lambda p: p.score):
        dx, dy = offsets.get(person.id, (0, 0))
        src = _clip(person.box, w, h)
        dst = _clip(Box(src.x0 + dx, src.y0 + dy, src.x1 + dx, src.y1 + dy, person.score), w, h)
        if dst.width <= 0 or dst.height <= 0:
            continue  # carried out of the frame
        # The part of the source box that lands inside the frame.
        sx0, sy0 = dst.x0 - dx, dst.y0 - dy
        sx1, sy1 = sx0 + dst.width, sy0 + dst.height
        mine = result.instances[sy0:sy1, sx0:sx1] == person.id
        labels[dst.y0:dst.y1, dst.x0:dst.x1][mine] = result.labels[sy0:sy1, sx0:sx1][mine]
        instances[dst.y0:dst.y1, dst.x0:dst.x1][mine] = person.id
        persons.append(Person(person.id, person.score, dst))
    persons.sort(key=lambda p: p.id)
    return ParseResult(labels, result.classes, instances, persons)
