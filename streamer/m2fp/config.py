"""M2FP architecture settings, read from a ModelScope ``configuration.json``.

ModelScope ships each M2FP model as a directory holding ``configuration.json`` and
``pytorch_model.pt``. The ``model`` section of the JSON carries the keyword arguments of the
network; :func:`load_model_config` turns it into small frozen dataclasses and names any key that
is missing or has the wrong type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from streamer.core.errors import ModelError
from streamer.core.labels import CIHP_CLASSES, LIP_CLASSES

SINGLE_HUMAN_ID = "damo/cv_resnet101_image-single-human-parsing"
MULTI_HUMAN_ID = "damo/cv_resnet101_image-multiple-human-parsing"


@dataclass(frozen=True)
class BackboneConfig:
    depth: int = 101
    stem_out_channels: int = 128
    res2_out_channels: int = 256
    stride_in_1x1: bool = False
    res4_dilation: int = 1
    res5_dilation: int = 1
    res5_multi_grid: tuple[int, ...] = (1, 1, 1)
    out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5")
    num_groups: int = 1
    width_per_group: int = 64


@dataclass(frozen=True)
class EncoderConfig:
    transformer_enc_layers: int = 6
    transformer_dim_feedforward: int = 1024
    transformer_nheads: int = 8
    conv_dim: int = 256
    mask_dim: int = 256
    transformer_in_features: tuple[str, ...] = ("res3", "res4", "res5")
    common_stride: int = 4
    in_features: tuple[str, ...] = ("res2", "res3", "res4", "res5")


@dataclass(frozen=True)
class DecoderConfig:
    num_classes: int = 20
    hidden_dim: int = 256
    num_queries: int = 100
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 9
    pre_norm: bool = False
    mask_dim: int = 256
    enforce_input_project: bool = False


@dataclass(frozen=True)
class M2FPConfig:
    """Everything needed to build the network and turn its output into label maps."""

    backbone: BackboneConfig
    encoder: EncoderConfig
    decoder: DecoderConfig
    classes: tuple[str, ...]
    num_parsing: int
    single_human: bool
    parsing_on: bool
    semantic_on: bool
    parsing_ins_score_thr: float
    # (height, width) of the single-person canvas; ModelScope stores it as [[width, height]].
    canvas_hw: tuple[int, int] | None

    @property
    def single_canvas_hw(self) -> tuple[int, int]:
        """``canvas_hw`` of a single-person model (a multi-person one has none)."""
        if self.canvas_hw is None:
            raise ModelError("a multi-person model has no single-person canvas")
        return self.canvas_hw

    @property
    def variant(self) -> str:
        return "single" if self.single_human else "multi"


_REQUIRED = {
    "backbone": ("depth", "stem_out_channels", "res2_out_channels", "stride_in_1x1",
                 "res4_dilation", "res5_dilation", "res5_multi_grid", "out_features"),
    "encoder": ("transformer_enc_layers", "transformer_dim_feedforward", "conv_dim", "mask_dim",
                "transformer_in_features", "common_stride"),
    "decoder": ("num_classes", "hidden_dim", "num_queries", "nheads", "dim_feedforward",
                "dec_layers", "pre_norm", "mask_dim", "enforce_input_project"),
    "model": ("classes", "num_parsing", "single_human", "parsing_on", "semantic_on",
              "parsing_ins_score_thr"),
}


def _section(cls: type, raw: dict[str, Any], where: str) -> Any:
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        value = raw[f.name]
        expected = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if "tuple" in expected:
            if not isinstance(value, (list, tuple)):
                raise ModelError(f"{where}.{f.name} should be a list, got {value!r}")
            value = tuple(value)
        elif expected == "bool":
            if not isinstance(value, bool):
                raise ModelError(f"{where}.{f.name} should be true or false, got {value!r}")
        elif expected == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ModelError(f"{where}.{f.name} should be an integer, got {value!r}")
        kwargs[f.name] = value
    return cls(**kwargs)


def parse_model_config(data: dict[str, Any], source: str = "configuration.json") -> M2FPConfig:
    """Build an :class:`M2FPConfig` from the parsed JSON of a ModelScope model directory."""
    model = data.get("model")
    if not isinstance(model, dict):
        raise ModelError(f"{source} has no 'model' section; is this an M2FP model directory?")
    for section, keys in _REQUIRED.items():
        raw = model if section == "model" else model.get(section)
        if not isinstance(raw, dict):
            raise ModelError(f"{source}: model.{section} is missing")
        missing = [k for k in keys if k not in raw]
        if missing:
            raise ModelError(f"{source}: model.{section} lacks key(s) {', '.join(missing)}")
    where = f"{source}: model"
    backbone = _section(BackboneConfig, model["backbone"], where + ".backbone")
    encoder = _section(EncoderConfig, model["encoder"], where + ".encoder")
    decoder = _section(DecoderConfig, model["decoder"], where + ".decoder")
    classes = tuple(str(c) for c in model["classes"])
    if len(classes) != decoder.num_classes:
        raise ModelError(
            f"{source}: model.classes has {len(classes)} names but "
            f"model.decoder.num_classes is {decoder.num_classes}"
        )
    canvas = None
    if model["single_human"]:
        sizes = (model.get("input_single_human") or {}).get("sizes")
        if not sizes or len(sizes[0]) != 2:
            raise ModelError(f"{source}: model.input_single_human.sizes is missing")
        canvas = (int(sizes[0][1]), int(sizes[0][0]))
    return M2FPConfig(
        backbone=backbone,
        encoder=encoder,
        decoder=decoder,
        classes=classes,
        num_parsing=int(model["num_parsing"]),
        single_human=bool(model["single_human"]),
        parsing_on=bool(model["parsing_on"]),
        semantic_on=bool(model["semantic_on"]),
        parsing_ins_score_thr=float(model["parsing_ins_score_thr"]),
        canvas_hw=canvas,
    )


def load_model_config(model_dir: str | Path) -> M2FPConfig:
    path = Path(model_dir) / "configuration.json"
    if not path.is_file():
        raise ModelError(f"no configuration.json in model directory {model_dir}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    return parse_model_config(data, str(path))


def modelscope_configuration(variant: str, *, tiny: bool = False) -> dict[str, Any]:
    """The ``configuration.json`` content that ModelScope ships for each M2FP model.

    ``tiny`` shrinks depth and widths for fast tests; it keeps every structural feature, so a
    tiny model goes through exactly the same code path.
    """
    if variant not in ("single", "multi"):
        raise ValueError(f"variant must be 'single' or 'multi', not {variant!r}")
    single = variant == "single"
    width = 32 if tiny else 256
    model: dict[str, Any] = {
        "type": "m2fp",
        "backbone": {
            "out_features": ["res2", "res3", "res4", "res5"],
            "depth": 50 if tiny else 101,
            "num_groups": 1,
            "width_per_group": 16 if tiny else 64,
            "norm": "BN",
            "stem_out_channels": 32 if tiny else 128,
            "res2_out_channels": 64 if tiny else 256,
            "stride_in_1x1": False,
            "res4_dilation": 1,
            "res5_dilation": 1,
            "res5_multi_grid": [1, 1, 1],
        },
        "encoder": {
            "in_features": ["res2", "res3", "res4", "res5"],
            "transformer_dropout": 0.0,
            "transformer_nheads": 8,
            "transformer_dim_feedforward": 64 if tiny else 1024,
            "transformer_enc_layers": 2 if tiny else 6,
            "conv_dim": width,
            "mask_dim": width,
            "transformer_in_features": ["res3", "res4", "res5"],
            "common_stride": 4,
        },
        "decoder": {
            "num_classes": 20 if single else 21,
            "hidden_dim": width,
            "num_queries": 20 if tiny else 100,
            "nheads": 8,
            "dim_feedforward": 64 if tiny else 2048,
            "dec_layers": 3 if tiny else 9,
            "pre_norm": False,
            "mask_dim": width,
            "enforce_input_project": False,
        },
        "classes": list(LIP_CLASSES if single else CIHP_CLASSES),
        "num_parsing": 20,
        "single_human": single,
        "parsing_on": not single,
        "semantic_on": single,
        "sem_seg_postprocess_before_inference": not single,
        "parsing_ins_score_thr": 0.5 if single else 0.3,
        "pretrained": True,
    }
    if single:
        model["input_single_human"] = {"sizes": [[384, 512]]}
    return {
        "framework": "pytorch",
        "task": "image-segmentation",
        "pipeline": {"type": "m2fp-image-human-parsing"},
        "model": model,
    }
