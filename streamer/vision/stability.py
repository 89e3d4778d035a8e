"""Stability between parses (``render.stability``), and the agreement and flicker measures.

:func:`majority_labels` is ``majority``: per pixel, the label most of the last parses agree on.
:func:`blend_votes` is ``blend``: a per-pixel bank of votes decides when a new label takes
over. :func:`agreement` and :func:`flicker` measure the result (tests, temporal_bench.py).

Example:
    >>> a, b = np.array([[1, 2]]), np.array([[3, 2]])
    >>> majority_labels([a, a, b])[0].tolist()
    [[1, 2]]
    >>> agreement(a, b), flicker(a, b)
    (0.5, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["agreement", "blend_votes", "flicker", "majority_labels"]


def majority_labels(maps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the value most of ``maps`` (oldest first) agree on; ties go to the newest.
    Also returns, per pixel, the index of the map whose value was taken.

    Example:
        >>> a, b = np.array([[1, 2]]), np.array([[3, 2]])
        >>> majority_labels([a, a, b])[0].tolist(), majority_labels([a, b])[0].tolist()
        ([[1, 2]], [[3, 2]])
    """
    if not maps:
        raise ValueError("majority of no maps")
    k = len(maps)
    best = np.array(maps[-1], copy=True)
    best_count = np.zeros(best.shape, np.int16)
    which = np.full(best.shape, k - 1, np.int16)
    for i in range(k - 1, -1, -1):  # newest first; only a strictly larger count replaces it
        count = np.zeros(best.shape, np.int16)
        for j in range(k):
            count += maps[j] == maps[i]
        better = count > best_count
        best[better] = maps[i][better]
        which[better] = i
        best_count = np.maximum(best_count, count)
    return best, which


def blend_votes(shown: np.ndarray, new: np.ndarray, votes: np.ndarray,
                depth: int) -> tuple[np.ndarray, np.ndarray]:
    """One parse's worth of blending: ``(labels, votes)`` after ``new`` lands on ``shown``.

    Where they agree the vote bank grows (at most ``depth``); where they disagree it shrinks,
    and the new label takes over (with one vote) once it is empty.

    Example:
        >>> shown, new = np.array([[5, 5]]), np.array([[5, 7]])
        >>> blend_votes(shown, new, np.array([[2, 2]], np.uint8), 3)
        (array([[5, 5]]), array([[3, 1]], dtype=uint8))
        >>> blend_votes(shown, new, np.array([[2, 1]], np.uint8), 3)[0]
        array([[5, 7]])
    """
    v = votes.astype(np.int16)
    agree = shown == new
    v = np.where(agree, np.minimum(v + 1, depth), v - 1)
    switch = v <= 0
    labels = np.where(switch, new, shown)
    v[switch] = 1
    return labels, v.astype(np.uint8)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of person pixels (non-zero in ``a`` or ``b``) where the labels agree; 1.0 when
    neither has any.

    Example:
        >>> agreement(np.array([[0, 1, 2]]), np.array([[0, 1, 3]]))
        0.5
    """
    person = (a != 0) | (b != 0)
    n = int(person.sum())
    return 1.0 if n == 0 else float((a[person] == b[person]).sum()) / n


def flicker(previous: np.ndarray, current: np.ndarray) -> float:
    """Fraction of person pixels whose label changes between two shown frames.

    Example:
        >>> flicker(np.array([[0, 1, 2, 2]]), np.array([[0, 1, 2, 5]]))
        0.3333333333333333
    """
    person = (previous != 0) | (current != 0)
    n = int(person.sum())
    return 0.0 if n == 0 else float((previous[person] != current[person]).sum()) / n
