"""From network outputs to label maps, at quarter resolution.

Instances are chosen and scored on the stride-4 mask grid. Mask logits are resampled only where
the output needs them (inside the crop's box, or straight to the frame's size), in row strips,
so a 1080p frame never holds a full-resolution stack of 100 masks as ModelScope's pipeline does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from streamer.m2fp.postprocess_numpy import STRIP_ELEMENTS


def semantic_labels(
    logits: torch.Tensor,
    masks: torch.Tensor,
    canvas_hw: tuple[int, int],
    box: tuple[int, int, int, int],
    out_hw: tuple[int, int],
) -> np.ndarray:
    """Single-person label map: argmax over classes of ``softmax(logits) . sigmoid(masks)``.

    ``logits`` (Q, C+1) and ``masks`` (Q, h, w) are one image's outputs on the stride-4 grid;
    the last logit is "no object" and is dropped after the softmax. Mask logits are resampled
    bilinearly to canvas pixels, but only inside ``box`` (where the crop sits), before the
    sigmoid, as the published model's own post-processing does; the class scores are then
    resized to ``out_hw`` if the crop was shrunk onto the canvas.
    """
    probs = logits.softmax(-1)[:, :-1]
    x0, y0, x1, y1 = box
    bh, bw = y1 - y0, x1 - x0
    q = masks.shape[0]
    scores = torch.empty(probs.shape[1], bh, bw)
    rows = max(1, STRIP_ELEMENTS // max(1, q * bw))
    for r0, r1, sampled in _sample_strips(masks, canvas_hw, box, (bh, bw), rows):
        scores[:, r0:r1] = torch.einsum("qc,qhw->chw", probs, sampled.sigmoid_())
    if (bh, bw) != tuple(out_hw):
        scores = F.interpolate(scores[None], size=out_hw, mode="bilinear",
                               align_corners=False)[0]
    return scores.argmax(0).to(torch.uint8).numpy()


@dataclass
class Instances:
    """Instances on the quarter-resolution grid, highest score first."""

    labels: torch.Tensor  # (K,) class ids
    scores: torch.Tensor  # (K,)
    masks: torch.Tensor  # (K, h, w) mask logits

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, keep: torch.Tensor) -> Instances:
        return Instances(self.labels[keep], self.scores[keep], self.masks[keep])


def select_instances(
    logits: torch.Tensor,
    masks: torch.Tensor,
    num_parsing: int,
    min_score: float = 0.1,
    topk: int = 100,
) -> tuple[Instances, Instances]:
    """M2FP's multi-person inference for one image: ``(parts, humans)``.

    The top-k (query, class) pairs become instances, scored by class probability times the
    mean mask probability inside the mask. Parts (neither background nor ``Human``) scoring at
    least ``min_score`` and humans scoring over it are kept, highest score first.
    """
    num_classes = logits.shape[-1] - 1
    probs = logits.softmax(-1)[:, :-1]
    scores, flat = probs.flatten().topk(min(topk, probs.numel()), sorted=False)
    labels = flat % num_classes
    picked = masks[torch.div(flat, num_classes, rounding_mode="floor")]
    inside = (picked > 0).float()
    quality = (picked.sigmoid() * inside).flatten(1).sum(1) / (inside.flatten(1).sum(1) + 1e-6)
    scores = scores * quality
    order = scores.argsort(descending=True)
    ranked = Instances(labels[order], scores[order], picked[order])
    parts = (ranked.labels != 0) & (ranked.labels != num_parsing) & (ranked.scores >= min_score)
    humans = (ranked.labels == num_parsing) & (ranked.scores > min_score)
    return ranked.subset(parts), ranked.subset(humans)


def paint_instances(
    instances: Instances,
    values: torch.Tensor,
    canvas_hw: tuple[int, int],
    box: tuple[int, int, int, int],
    out_hw: tuple[int, int],
    dtype: type = np.uint8,
) -> np.ndarray:
    """Each output pixel takes ``values[k]`` of the highest-scoring instance whose (bilinearly
    resampled) mask logit is positive there, else 0. ``instances`` must be sorted by score.

    Only the instances' masks are resampled, in row strips, straight to ``out_hw``.
    """
    oh, ow = out_hw
    out: np.ndarray = np.zeros((oh, ow), dtype)
    if len(instances) == 0:
        return out
    # Descending weights: argmax over k of (mask > 0) * weight picks the first positive one.
    weights = torch.arange(len(instances), 0, -1, dtype=torch.float32)[:, None, None]
    lookup: np.ndarray = torch.cat([torch.zeros(1, dtype=values.dtype),
                                    values]).numpy().astype(dtype)
    rows = max(1, STRIP_ELEMENTS // max(1, len(instances) * ow))
    for r0, r1, sampled in _sample_strips(instances.masks, canvas_hw, box, out_hw, rows):
        hit = (sampled > 0).float() * weights
        best, idx = hit.max(0)
        out[r0:r1] = lookup[torch.where(best > 0, idx + 1, 0).numpy()]
    return out


def _sample_strips(
    maps: torch.Tensor,
    canvas_hw: tuple[int, int],
    box: tuple[int, int, int, int],
    out_hw: tuple[int, int],
    rows: int,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Bilinear samples of ``maps`` (K, h, w) at ``out_hw`` pixels spread over ``box``, as
    ``(first_row, end_row, (K, rows, W))`` strips, so memory stays bounded."""
    oh, ow = out_hw
    gx, gy = _sampling_grid(canvas_hw, box, out_hw)
    src = maps.unsqueeze(0).float()
    for r0 in range(0, oh, rows):
        r1 = min(oh, r0 + rows)
        grid = torch.stack(
            (gx[None, :].expand(r1 - r0, ow), gy[r0:r1, None].expand(r1 - r0, ow)), -1)
        yield r0, r1, F.grid_sample(src, grid[None], mode="bilinear", padding_mode="border",
                                    align_corners=False)[0]


def _sampling_grid(
    canvas_hw: tuple[int, int], box: tuple[int, int, int, int], out_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``grid_sample`` coordinates of the centres of ``out_hw`` pixels spread over ``box``."""
    ch, cw = canvas_hw
    x0, y0, x1, y1 = box
    oh, ow = out_hw
    xs = x0 + (torch.arange(ow, dtype=torch.float32) + 0.5) * ((x1 - x0) / ow)
    ys = y0 + (torch.arange(oh, dtype=torch.float32) + 0.5) * ((y1 - y0) / oh)
    return xs / cw * 2 - 1, ys / ch * 2 - 1


def person_boxes(id_map: np.ndarray, scores: list[float]) -> list[tuple[int, float, tuple]]:
    """``(id, score, (x0, y0, x1, y1))`` for every id present in ``id_map`` (ids from 1)."""
    persons = []
    for pid, score in enumerate(scores, start=1):
        present = id_map == pid
        rows = np.flatnonzero(present.any(1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(present.any(0))
        persons.append((pid, score, (int(cols[0]), int(rows[0]), int(cols[-1]) + 1,
                                     int(rows[-1]) + 1)))
    return persons
