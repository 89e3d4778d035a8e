"""The eager PyTorch engine.

Example:
    >>> engine = TorchEngine(net, (512, 384), threads=2)
"""

from __future__ import annotations

import numpy as np
import torch

from streamer.parsing.engines.base import NetSource, materialise


class TorchEngine:
    """Eager PyTorch in ``inference_mode``."""

    name = "torch"

    def __init__(self, net: NetSource, canvas_hw: tuple[int, int], threads: int) -> None:
        self.net = materialise(net).eval()
        self.canvas_hw = canvas_hw
        torch.set_num_threads(threads)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, masks = self.net(torch.from_numpy(batch))
        return logits.numpy(), masks.numpy()
