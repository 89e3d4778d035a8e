"""From network outputs to label maps, at quarter resolution.

Everything is computed on the stride-4 mask grid. Only the final per-class scores are resampled,
once, straight to the output size (in row strips, so a 1080p frame never holds a full-resolution
stack of 100 masks as ModelScope's pipeline does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

STRIP_ROWS = 256


def semantic_scores(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Single-person semantics: ``softmax(class logits) . sigmoid(masks)`` per class.

    ``logits`` (N, Q, C+1), ``masks`` (N, Q, h, w) -> (N, C, h, w). The last logit is
    "no object" and is dropped after the softmax.
    """
    probs = logits.softmax(-1)[..., :-1]
    return torch.einsum("nqc,nqhw->nchw", probs, masks.sigmoid())


def resample_argmax(
    scores: torch.Tensor,
    canvas_hw: tuple[int, int],
    box: tuple[int, int, int, int],
    out_hw: tuple[int, int],
) -> np.ndarray:
    """Argmax of ``scores`` (C, h, w), laid over the canvas, sampled inside ``box`` at ``out_hw``.

    Sampling is bilinear with pixel centres aligned (``align_corners=False``), i.e. the same as
    upsampling to the canvas, cropping ``box`` and resizing to ``out_hw``, done in one step.
    """
    ch, cw = canvas_hw
    x0, y0, x1, y1 = box
    oh, ow = out_hw
    xs = x0 + (torch.arange(ow, dtype=torch.float32) + 0.5) * ((x1 - x0) / ow)
    ys = y0 + (torch.arange(oh, dtype=torch.float32) + 0.5) * ((y1 - y0) / oh)
    gx = xs / cw * 2 - 1
    gy = ys / ch * 2 - 1
    src = scores.unsqueeze(0).float()
    out = np.empty((oh, ow), np.uint8)
    for r0 in range(0, oh, STRIP_ROWS):
        r1 = min(oh, r0 + STRIP_ROWS)
        grid = torch.stack(
            (gx[None, :].expand(r1 - r0, ow), gy[r0:r1, None].expand(r1 - r0, ow)), -1)
        sampled = F.grid_sample(src, grid[None], mode="bilinear", padding_mode="border",
                                align_corners=False)
        out[r0:r1] = sampled[0].argmax(0).to(torch.uint8).numpy()
    return out


@dataclass
class InstanceParse:
    """Multi-person output on the quarter-resolution grid."""

    part_scores: torch.Tensor  # (num_parsing, h, w): background and part classes
    human_probs: torch.Tensor  # (K, h, w): score-weighted mask probability of each human
    human_scores: torch.Tensor  # (K,)


def instance_parsing(
    logits: torch.Tensor,
    masks: torch.Tensor,
    num_parsing: int,
    part_score_thr: float,
    human_score_thr: float = 0.1,
    topk: int = 100,
) -> InstanceParse:
    """M2FP's multi-person inference for one image, vectorised.

    The top-k (query, class) pairs become instances; each instance's score is its class
    probability times the mean mask probability inside its mask. Part and background instances
    over ``part_score_thr`` are averaged per class where their weighted probability exceeds 0.5;
    ``Human`` instances over ``human_score_thr`` become people.
    """
    num_classes = logits.shape[-1] - 1
    probs = logits.softmax(-1)[:, :-1]
    scores, flat = probs.flatten().topk(min(topk, probs.numel()), sorted=False)
    labels = flat % num_classes
    queries = torch.div(flat, num_classes, rounding_mode="floor")
    picked = masks[queries]
    sig = picked.sigmoid()
    inside = (picked > 0).float()
    mask_quality = (sig * inside).flatten(1).sum(1) / (inside.flatten(1).sum(1) + 1e-6)
    scores = scores * mask_quality

    part = (labels != num_parsing) & (scores >= part_score_thr)
    weighted = sig[part] * scores[part, None, None]
    counted = weighted > 0.5
    h, w = masks.shape[-2:]
    total = torch.zeros(num_parsing, h, w).index_add_(0, labels[part], weighted * counted)
    count = torch.zeros(num_parsing, h, w).index_add_(0, labels[part], counted.float())
    part_scores = total / count.clamp(min=1)

    human = (labels == num_parsing) & (scores > human_score_thr)
    return InstanceParse(part_scores, sig[human] * scores[human, None, None], scores[human])


def human_instances(
    parse: InstanceParse,
    canvas_hw: tuple[int, int],
    box: tuple[int, int, int, int],
    out_hw: tuple[int, int],
) -> tuple[np.ndarray, list[tuple[int, float, tuple[int, int, int, int]]]]:
    """Person-id map at ``out_hw`` (0 = nobody) and ``(id, score, box)`` for each person.

    A pixel belongs to the human whose weighted probability is highest there, if over 0.5.
    The id map is built on the quarter grid and upsampled by nearest neighbour.
    """
    oh, ow = out_hw
    if parse.human_probs.shape[0] == 0:
        return np.zeros(out_hw, np.uint16), []
    order = parse.human_scores.argsort(descending=True)
    probs = parse.human_probs[order]
    best, idx = probs.max(0)
    ids = torch.where(best > 0.5, idx + 1, torch.zeros_like(idx))
    ch, cw = canvas_hw
    x0, y0, x1, y1 = box
    h, w = ids.shape
    ys = ((y0 + (np.arange(oh) + 0.5) * (y1 - y0) / oh) * h / ch).astype(np.int64).clip(0, h - 1)
    xs = ((x0 + (np.arange(ow) + 0.5) * (x1 - x0) / ow) * w / cw).astype(np.int64).clip(0, w - 1)
    id_map = ids.numpy().astype(np.uint16)[ys[:, None], xs[None, :]]
    persons = []
    for rank in range(probs.shape[0]):
        rows = np.flatnonzero((id_map == rank + 1).any(1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero((id_map == rank + 1).any(0))
        persons.append((rank + 1, float(parse.human_scores[order[rank]]),
                        (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)))
    return id_map, persons
