"""Masked-attention transformer decoder (Mask2Former).

Learnable queries attend, one feature level per layer in round-robin, only to the pixels their
previous mask prediction covers; each layer ends with a class and mask prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from streamer.m2fp.config import DecoderConfig
from streamer.m2fp.position import SinePositionEncoding


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        q = k = x + query_pos
        tgt = tgt + self.self_attn(q, k, value=x)[0]
        return tgt if self.pre_norm else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, pre_norm: bool) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        mask: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        attended = self.multihead_attn(
            x + query_pos, memory + pos, value=memory, attn_mask=mask)[0]
        tgt = tgt + attended
        return tgt if self.pre_norm else self.norm(tgt)


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, pre_norm: bool) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        tgt = tgt + self.linear2(F.relu(self.linear1(x)))
        return tgt if self.pre_norm else self.norm(tgt)


class MLP(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int, num_layers: int) -> None:
        super().__init__()
        dims = [dim_in] + [hidden] * (num_layers - 1)
        outs = [hidden] * (num_layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, outs, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == last else F.relu(layer(x))
        return x


class MaskedTransformerDecoder(nn.Module):
    num_levels = 3

    def __init__(self, cfg: DecoderConfig, in_channels: int) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.num_heads = cfg.nheads
        self.num_layers = cfg.dec_layers
        self.pe_layer = SinePositionEncoding(d // 2)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(d, cfg.nheads, cfg.pre_norm) for _ in range(cfg.dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(d, cfg.nheads, cfg.pre_norm) for _ in range(cfg.dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(d, cfg.dim_feedforward, cfg.pre_norm) for _ in range(cfg.dec_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.query_feat = nn.Embedding(cfg.num_queries, d)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.level_embed = nn.Embedding(self.num_levels, d)
        project = in_channels != d or cfg.enforce_input_project
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, d, 1) if project else nn.Identity()
            for _ in range(self.num_levels)
        )
        self.class_embed = nn.Linear(d, cfg.num_classes + 1)
        self.mask_embed = MLP(d, d, cfg.mask_dim, 3)
        self.reference_order = False

    def forward(
        self, levels: list[torch.Tensor], mask_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(pred_logits (N, Q, C+1), pred_masks (N, Q, H/4, W/4))``."""
        srcs, pos, sizes = [], [], []
        for i, x in enumerate(levels):
            sizes.append((int(x.shape[-2]), int(x.shape[-1])))
            pos.append(self.pe_layer(x).flatten(2).permute(2, 0, 1))
            src = self.input_proj[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]
            srcs.append(src.permute(2, 0, 1))
        n = srcs[0].shape[1]
        query_pos = self.query_embed.weight.unsqueeze(1).expand(-1, n, -1)
        output = self.query_feat.weight.unsqueeze(1).expand(-1, n, -1)
        # Attention masks only need the mask logits at each level's size. Resizing is linear,
        # so resizing the mask features once per level and projecting there equals projecting
        # at full resolution and resizing the masks, at a fraction of the cost. The reference
        # order computes it ModelScope's way, bit for bit.
        small = None if self.reference_order else [
            F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False)
            for size in sizes]
        attn_mask = self._attention_mask(output, mask_features, sizes[0],
                                         None if small is None else small[0])
        for i in range(self.num_layers):
            level = i % self.num_levels
            output = self.transformer_cross_attention_layers[i](
                output, srcs[level], attn_mask, pos[level], query_pos)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            if i + 1 < self.num_layers:
                nxt = (i + 1) % self.num_levels
                attn_mask = self._attention_mask(
                    output, mask_features, sizes[nxt], None if small is None else small[nxt])
        decoded = self.decoder_norm(output).transpose(0, 1)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)
        return self.class_embed(decoded), masks

    def _attention_mask(
        self,
        output: torch.Tensor,
        mask_features: torch.Tensor,
        size: tuple[int, int],
        resized_features: torch.Tensor | None,
    ) -> torch.Tensor:
        """Where each query may attend: where its current mask has probability >= 0.5.

        A query whose mask is empty everywhere attends everywhere instead.
        """
        embed = self.mask_embed(self.decoder_norm(output).transpose(0, 1))
        if resized_features is not None:
            resized = torch.einsum("bqc,bchw->bqhw", embed, resized_features)
        else:
            masks = torch.einsum("bqc,bchw->bqhw", embed, mask_features)
            resized = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        blocked = (resized.sigmoid() < 0.5).flatten(2)
        blocked = blocked & ~blocked.all(-1, keepdim=True)
        n, q, hw = blocked.shape
        return blocked.unsqueeze(1).expand(n, self.num_heads, q, hw).reshape(-1, q, hw)
