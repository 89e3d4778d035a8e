"""The M2FP network: backbone, pixel decoder and masked-attention transformer decoder."""

from __future__ import annotations

import torch
from torch import nn

from streamer.m2fp.backbone import DeepLabResNet
from streamer.m2fp.config import M2FPConfig
from streamer.m2fp.deform_attn import MSDeformAttn
from streamer.m2fp.pixel_decoder import MSDeformAttnPixelDecoder
from streamer.m2fp.preprocess import PIXEL_MEAN, PIXEL_STD
from streamer.m2fp.transformer_decoder import MaskedTransformerDecoder


class ParsingHead(nn.Module):
    def __init__(self, pixel_decoder: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor


class M2FP(nn.Module):
    """Maps RGB images ``(N, 3, H, W)`` in 0..255 to ``(pred_logits, pred_masks)``.

    ``H`` and ``W`` must be multiples of 32; normalisation happens inside, so a traced or
    exported graph takes raw pixel values.

    Example:
        >>> cfg = load_model_config("models/single")
        >>> net = M2FP(cfg).eval()
        >>> logits, masks = net(torch.zeros(1, 3, 512, 384))
        >>> masks.shape
        torch.Size([1, 100, 128, 96])
    """

    pixel_mean: torch.Tensor  # buffers, registered in __init__
    pixel_std: torch.Tensor

    def __init__(self, cfg: M2FPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), False)
        self.backbone = DeepLabResNet(cfg.backbone)
        in_features = tuple(cfg.encoder.in_features)
        pixel_decoder = MSDeformAttnPixelDecoder(
            cfg.encoder,
            {k: self.backbone.channels[k] for k in in_features},
            {k: self.backbone.strides[k] for k in in_features},
        )
        predictor = MaskedTransformerDecoder(cfg.decoder, cfg.encoder.conv_dim)
        self.sem_seg_head = ParsingHead(pixel_decoder, predictor)

    def use_reference_order(self, enabled: bool = True) -> M2FP:
        """Compute in ModelScope's operation order (bitwise-equal results, slower).

        The masked attention thresholds intermediate mask logits, so a rounding difference of
        1e-7 upstream can flip an attention-mask bit and move some outputs by 1e-3. The faster
        default order is checked against this one on label maps instead.
        """
        for module in self.modules():
            if isinstance(module, (MSDeformAttn, MaskedTransformerDecoder)):
                module.reference_order = enabled
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images - self.pixel_mean) / self.pixel_std
        features = self.backbone(x)
        mask_features, levels = self.sem_seg_head.pixel_decoder(features)
        return self.sem_seg_head.predictor(levels, mask_features)
