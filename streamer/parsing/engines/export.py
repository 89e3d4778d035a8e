"""Export of the network (or its encoder/decoder halves) to ONNX, with torch.

Example:
    >>> export_onnx(net, (512, 384), Path("m2fp.onnx"))
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import torch

from streamer.m2fp.model import M2FP
from streamer.parsing.engines.base import ONNX_OPSET, NetSource, materialise
from streamer.parsing.engines.cache import written_through

#: torch.onnx.export keeps process-wide state: two exports at once in one process fail.
_EXPORT_LOCK = threading.Lock()


class _Encoder(torch.nn.Module):
    """The backbone and pixel decoder: images -> (mask features, *levels)."""

    def __init__(self, net: M2FP) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        net = self.net
        features = net.backbone((images - net.pixel_mean) / net.pixel_std)
        mask_features, levels = net.sem_seg_head.pixel_decoder(features)
        return (mask_features, *levels)


class _Decoder(torch.nn.Module):
    """The masked-attention transformer decoder: (mask features, *levels) -> its predictions."""

    def __init__(self, net: M2FP) -> None:
        super().__init__()
        self.net = net

    def forward(self, mask_features: torch.Tensor, *levels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.sem_seg_head.predictor(list(levels), mask_features)


#: The parts ``export_onnx`` can write: the whole network, or it cut in two where the pixel
#: decoder hands its feature levels to the transformer decoder.
ONNX_PARTS = ("whole", "encoder", "decoder")


def export_onnx(net: NetSource, canvas_hw: tuple[int, int], path: Path,
                part: str = "whole") -> None:
    """Export ``part`` of the network with a dynamic batch axis (TorchScript-based exporter)."""
    if part not in ONNX_PARTS:
        raise ValueError(f"part must be one of {', '.join(ONNX_PARTS)}, not {part!r}")
    network = materialise(net).eval()
    images = torch.zeros(1, 3, *canvas_hw)
    if part == "whole":
        module: torch.nn.Module = network
        example: tuple[torch.Tensor, ...] = (images,)
        inputs, outputs = ["images"], ["pred_logits", "pred_masks"]
    else:
        with torch.no_grad():
            encoded = _Encoder(network)(images)
        levels = [f"level{i}" for i in range(len(encoded) - 1)]
        if part == "encoder":
            module, example = _Encoder(network), (images,)
            inputs, outputs = ["images"], ["mask_features", *levels]
        else:
            module, example = _Decoder(network), encoded
            inputs, outputs = ["mask_features", *levels], ["pred_logits", "pred_masks"]
    with (written_through(path, ".tmp.onnx") as tmp, _EXPORT_LOCK, torch.no_grad(),
          warnings.catch_warnings()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(tmp), opset_version=ONNX_OPSET, dynamo=False,
            input_names=inputs, output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
        )
