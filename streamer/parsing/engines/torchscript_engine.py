"""The TorchScript engine: the network traced at the canvas size and cached.

Example:
    >>> engine = TorchScriptEngine(net, (512, 384), 2, checkpoint, default_cache_dir())
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

from streamer.parsing.engines.base import NetSource, log, materialise, notice
from streamer.parsing.engines.cache import building, cache_key, written_through


class TorchScriptEngine:
    """``torch.jit.trace`` at the canvas size, saved to the cache and reloaded next time."""

    name = "torchscript"

    def __init__(
        self, net: NetSource, canvas_hw: tuple[int, int], threads: int, checkpoint: Path,
        cache_dir: Path,
    ) -> None:
        self.canvas_hw = canvas_hw
        torch.set_num_threads(threads)
        path = cache_dir / (cache_key(checkpoint, canvas_hw, self.name) + ".pt")
        # TorchScript is deprecated upstream in favour of torch.export, but it is still the
        # fastest traced path on CPU here; the per-call warnings say nothing to our users.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            traced = None
            if not path.is_file():
                with building(path):
                    if not path.is_file():  # not traced by another worker while this waited
                        traced = self._trace(net, canvas_hw, path)
            self.module = traced or torch.jit.load(str(path), map_location="cpu")
        self.module.eval()

    @staticmethod
    def _trace(net: NetSource, canvas_hw: tuple[int, int], path: Path) -> torch.jit.ScriptModule:
        notice.info("tracing the TorchScript engine at %dx%d (once; later runs load it from the "
                    "cache)...", canvas_hw[1], canvas_hw[0])
        started = time.perf_counter()
        example = torch.zeros(1, 3, *canvas_hw)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(
                torch.jit.trace(materialise(net).eval(), example, check_trace=False))
        with written_through(path) as tmp:
            torch.jit.save(traced, str(tmp))
        log.info("traced M2FP at %s in %.1f s -> %s", canvas_hw,
                 time.perf_counter() - started, path)
        return traced

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, masks = self.module(torch.from_numpy(batch))
        return logits.numpy(), masks.numpy()
