"""Reference harness: ModelScope's own M2FP network and pipeline, offline, random weights.

Test-only. It lets tests prove that ``streamer.m2fp`` computes the same function as ModelScope's
``M2FP`` (``modelscope/models/cv/image_human_parsing``) without downloading anything:

* ``write_config`` writes a ModelScope ``configuration.json`` (LIP single-person or CIHP
  multi-person; full size or tiny).
* ``build_modelscope_model`` instantiates ModelScope's ``M2FP`` class from that file with random
  (seeded) weights, calibrated so the outputs are not degenerate; ``save_checkpoint`` writes
  ``pytorch_model.pt`` as ``{'model': state_dict}`` -- the layout of the real hub checkpoints.
  ``make_reference_model_dir`` does all three; ``load_modelscope_model`` reads a directory back
  through ModelScope's own checkpoint loader.
* ``modelscope_raw`` / ``modelscope_forward`` return the raw network outputs
  (``pred_logits`` (B, Q, C+1), ``pred_masks`` (B, Q, H/4, W/4)).
* ``stock_pipeline`` runs ModelScope's ``ImageHumanParsingPipeline`` unmodified on a local model
  directory; ``stock_label_map`` turns its output into an ``H x W`` map of class ids.

Dependencies (the ``test`` extra in pyproject.toml): ``modelscope`` itself plus ``addict``,
``timm``, ``simplejson``, ``python-dateutil`` and ``sortedcontainers``. Two stand-ins keep the
rest out:

* ``mmcv`` -- ModelScope's ``MSDeformAttn`` imports ``mmcv.ops.multi_scale_deform_attn``; mmcv has
  no usable wheel, so ``tests/mmcv_standin`` (put first on ``sys.path`` here) provides a
  pure-PyTorch ``multi_scale_deformable_attn_pytorch`` and a compiled-op placeholder that raises,
  which sends ModelScope down its own CPU fallback branch.
* ``modelscope.msdatasets`` -- ``modelscope.pipelines.base`` imports ``MsDataset`` only for a type
  hint and an ``isinstance`` check, but importing it pulls in HuggingFace ``datasets`` (pyarrow,
  pandas, ...). If the real module fails to import, a placeholder module with an empty
  ``MsDataset`` class is registered instead; if it imports, the real one is used.

Quirks of the stock code worth knowing when comparing against it:

* Single-person (``single_human: true``): ``M2FP.postprocess`` only stores ``sem_seg`` inside
  ``if not self.sem_seg_postprocess_before_inference:`` (an indentation slip), so the pipeline
  produces a semantic map only with ``sem_seg_postprocess_before_inference: false`` -- which is
  what the LIP configuration uses. With ``true`` the pipeline raises ``NotImplementedError``.
* Multi-person: ``parsing_on: true`` forces ``sem_seg_postprocess_before_inference``; the
  pipeline returns only the part and human *instances* (masks, labels, scores), not the pasted
  semantic map, so ``stock_label_map`` paints instances (see there).
* Single-person preprocessing: PIL bilinear resize to fit the 384 x 512 (w x h) canvas (only if
  larger), centred, padded with 128 (normalised like any pixel), fed as uint8 values.
  Multi-person: torchvision ``T.Resize`` on the PIL image (short side 640, long side <= 1333),
  then ``ToTensor() * 255`` -- float values, not exact integers.
* The batch is zero-padded (after normalisation) to a multiple of 32 by
  ``ImageList.from_tensors``; ``pred_masks`` is at 1/4 of the padded size.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from streamer.testing.make_model import randomise, smooth_random_images  # noqa: F401

STANDIN_DIR = Path(__file__).resolve().parent / "mmcv_standin"
CONFIG_FILE = "configuration.json"
CHECKPOINT_FILE = "pytorch_model.pt"
TASK = "image-segmentation"  # modelscope.utils.constant.Tasks.image_segmentation
PIPELINE_TYPE = "m2fp-image-human-parsing"  # modelscope.metainfo.Pipelines.image_human_parsing

LIP_CLASSES = [
    "Background", "Hat", "Hair", "Gloves", "Sunglasses", "UpperClothes", "Dress", "Coat",
    "Socks", "Pants", "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm",
    "Left-leg", "Right-leg", "Left-shoe", "Right-shoe",
]
CIHP_CLASSES = [
    "Background", "Hat", "Hair", "Gloves", "Sunglasses", "UpperClothes", "Dress", "Coat",
    "Socks", "Pants", "Torso-skin", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm",
    "Left-leg", "Right-leg", "Left-shoe", "Right-shoe", "Human",
]

SKIP_REASON = (
    "ModelScope reference not installed: "
    "pip install -e '.[test]' (modelscope==1.40.2 and a few extras)"
)


# --------------------------------------------------------------------------- availability


def modelscope_available() -> bool:
    """True when ``modelscope`` and the extras its M2FP modules import are installed."""
    try:
        return all(importlib.util.find_spec(name) is not None
                   for name in ("modelscope", "addict", "timm", "simplejson", "dateutil",
                                "sortedcontainers"))
    except (ImportError, ValueError):
        return False


def require_modelscope() -> None:
    """``pytest.skip`` (at module or test level) with a clear reason if ModelScope is missing."""
    if not modelscope_available():
        import pytest

        pytest.skip(SKIP_REASON, allow_module_level=True)


_PREPARED = False


def _prepare_imports() -> None:
    """Put the mmcv stand-in first on ``sys.path``, keep ModelScope's cache out of $HOME."""
    global _PREPARED
    if _PREPARED:
        return
    loaded = sys.modules.get("mmcv")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(
            str(STANDIN_DIR)):
        raise RuntimeError(f"a real mmcv is already imported ({loaded.__file__}); "
                           "the reference must use tests/mmcv_standin")
    if str(STANDIN_DIR) not in sys.path:
        sys.path.insert(0, str(STANDIN_DIR))
    os.environ.setdefault("MODELSCOPE_CACHE", tempfile.mkdtemp(prefix="modelscope-cache-"))
    if "modelscope.msdatasets" not in sys.modules:
        try:
            import modelscope.msdatasets  # noqa: F401  (real one when its deps are installed)
        except ImportError:
            _stub_msdatasets()
    _PREPARED = True


def _stub_msdatasets() -> None:
    """Register a placeholder ``modelscope.msdatasets`` (its real import needs HF ``datasets``)."""
    stub = types.ModuleType("modelscope.msdatasets")
    stub.__doc__ = "Placeholder (tests/modelscope_ref.py): HuggingFace datasets is not installed."

    class MsDataset:  # Pipeline uses it only for isinstance() and a type hint
        pass

    stub.MsDataset = MsDataset
    sys.modules["modelscope.msdatasets"] = stub


def _m2fp_class():
    _prepare_imports()
    from modelscope.models.cv.image_human_parsing.m2fp_net import M2FP

    return M2FP


def _pipeline_class():
    _prepare_imports()
    from modelscope.pipelines.cv.image_human_parsing_pipeline import ImageHumanParsingPipeline

    return ImageHumanParsingPipeline


# --------------------------------------------------------------------------- configuration


def make_config(variant: str, tiny: bool = False) -> dict:
    """The ``configuration.json`` content for ``variant`` ('single' = LIP, 'multi' = CIHP)."""
    if variant not in ("single", "multi"):
        raise ValueError(f"variant must be 'single' or 'multi', not {variant!r}")
    model: dict[str, Any] = {
        "type": "m2fp",
        "backbone": {
            "out_features": ["res2", "res3", "res4", "res5"],
            "depth": 101, "num_groups": 1, "width_per_group": 64, "norm": "BN",
            "stem_out_channels": 128, "res2_out_channels": 256, "stride_in_1x1": False,
            "res4_dilation": 1, "res5_dilation": 1, "res5_multi_grid": [1, 1, 1],
        },
        "encoder": {
            "in_features": ["res2", "res3", "res4", "res5"],
            "transformer_dropout": 0.0, "transformer_nheads": 8,
            "transformer_dim_feedforward": 1024, "transformer_enc_layers": 6,
            "conv_dim": 256, "mask_dim": 256,
            "transformer_in_features": ["res3", "res4", "res5"], "common_stride": 4,
        },
        "decoder": {
            "num_classes": 20, "hidden_dim": 256, "num_queries": 100, "nheads": 8,
            "dim_feedforward": 2048, "dec_layers": 9, "pre_norm": False, "mask_dim": 256,
            "enforce_input_project": False,
        },
        "classes": list(LIP_CLASSES),
        "num_parsing": 20,
        "single_human": True,
        "parsing_on": False,
        "semantic_on": True,
        "sem_seg_postprocess_before_inference": False,
        "parsing_ins_score_thr": 0.5,
        "input_single_human": {"sizes": [[384, 512]]},
        "pretrained": True,
    }
    if variant == "multi":
        model["decoder"]["num_classes"] = 21
        model["classes"] = list(CIHP_CLASSES)
        model["num_parsing"] = 20
        model["single_human"] = False
        model["parsing_on"] = True
        model["semantic_on"] = False
        model["sem_seg_postprocess_before_inference"] = True
        model["parsing_ins_score_thr"] = 0.3
        del model["input_single_human"]
    if tiny:
        # Same modules and code paths, fewer/smaller layers. depth must be 50/101/152 and every
        # GroupNorm(32, .) width a multiple of 32; hidden_dim == conv_dim keeps the decoder's
        # identity input projection; 3 decoder layers still visit all three feature levels.
        model["backbone"].update(depth=50, width_per_group=16, stem_out_channels=32,
                                 res2_out_channels=64)
        model["encoder"].update(transformer_nheads=4, transformer_dim_feedforward=128,
                                transformer_enc_layers=2, conv_dim=64, mask_dim=64)
        model["decoder"].update(hidden_dim=64, num_queries=20, nheads=4, dim_feedforward=128,
                                dec_layers=3, mask_dim=64)
    return {
        "framework": "pytorch",
        "task": "image-segmentation",
        # The registered name is Pipelines.image_human_parsing == 'm2fp-image-human-parsing';
        # 'image-human-parsing' makes modelscope.pipeline() fail with a registry KeyError.
        "pipeline": {"type": PIPELINE_TYPE},
        "model": model,
    }


def write_config(model_dir: str | os.PathLike, variant: str, tiny: bool = False) -> Path:
    """Write ``model_dir/configuration.json``; returns its path."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILE
    path.write_text(json.dumps(make_config(variant, tiny), indent=2))
    return path


def read_model_kwargs(model_dir: str | os.PathLike) -> dict:
    """``configuration.json``'s ``model`` section minus ``type``: what ModelScope passes."""
    cfg = json.loads((Path(model_dir) / CONFIG_FILE).read_text())
    kwargs = copy.deepcopy(cfg["model"])
    kwargs.pop("type", None)
    return kwargs


# --------------------------------------------------------------------------- model


def build_modelscope_model(model_dir: str | os.PathLike, seed: int = 0) -> nn.Module:
    """ModelScope's ``M2FP`` built from ``model_dir/configuration.json``, random weights, eval().

    ``pretrained`` is forced off (no checkpoint is read). Initialisation is ModelScope's own under
    ``torch.manual_seed(seed)``, then, so that every parameter matters and outputs are not
    degenerate: norm affine parameters, zero-initialised biases and the deformable-attention
    offset/weight projections are randomised; the decoder's attention/FFN output projections are
    scaled by 0.3 (a random decoder otherwise collapses all queries onto one); BatchNorm running
    statistics are recalibrated on random images (train mode, ``momentum=None``); the last mask
    and class layers are re-centred and scaled (``streamer.testing.make_model.randomise``).
    Only parameter values change -- the module structure is exactly ModelScope's.
    Deterministic for a given seed.
    """
    M2FP = _m2fp_class()
    model_dir = Path(model_dir)
    kwargs = read_model_kwargs(model_dir)
    kwargs["pretrained"] = False
    torch.manual_seed(seed)
    model = M2FP(str(model_dir), **kwargs)

    def forward(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = modelscope_raw(model, images)
        return out["pred_logits"], out["pred_masks"]

    # The same randomisation as streamer.testing.make_model: parameter names are shared.
    randomise(model, forward, seed)
    return model.eval()


def save_checkpoint(model: nn.Module, model_dir: str | os.PathLike) -> Path:
    """Write ``model_dir/pytorch_model.pt`` as ``{'model': state_dict}``."""
    path = Path(model_dir) / CHECKPOINT_FILE
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save({"model": state}, path)
    return path


def make_reference_model_dir(model_dir: str | os.PathLike, variant: str, tiny: bool = False,
                             seed: int = 0) -> nn.Module:
    """``write_config`` + ``build_modelscope_model`` + ``save_checkpoint``; returns the model."""
    write_config(model_dir, variant, tiny)
    model = build_modelscope_model(model_dir, seed)
    save_checkpoint(model, model_dir)
    return model


def load_modelscope_model(model_dir: str | os.PathLike) -> nn.Module:
    """ModelScope's ``M2FP`` with the checkpoint in ``model_dir`` read by ModelScope's own
    loader (``pretrained: true`` in the configuration), in eval mode."""
    M2FP = _m2fp_class()
    kwargs = read_model_kwargs(model_dir)
    kwargs["pretrained"] = True
    return M2FP(str(model_dir), **kwargs).eval()


# --------------------------------------------------------------------------- raw outputs


@torch.no_grad()
def modelscope_raw(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raw outputs of ModelScope's ``M2FP.forward`` for already-preprocessed images.

    ``images``: (B, 3, H, W) RGB float in 0..255 (exactly what the pipeline feeds). ModelScope
    normalises each image with ``pixel_mean/pixel_std`` and zero-pads the batch to a multiple of
    32 (``ImageList.from_tensors``). Returns ``pred_logits`` (B, Q, C+1) and ``pred_masks``
    (B, Q, Hp/4, Wp/4), Hp/Wp the padded size, plus ``padded_size`` (Hp, Wp).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W), got {tuple(images.shape)}")
    batched = [{"image": img} for img in images.float()]
    out = model.forward({"batched_inputs": batched})
    return {
        "pred_logits": out["outputs"]["pred_logits"],
        "pred_masks": out["outputs"]["pred_masks"],
        "padded_size": tuple(out["images"].tensor.shape[-2:]),
    }


def _preprocessor(model: nn.Module) -> Callable[[np.ndarray], dict]:
    """ModelScope's ``ImageHumanParsingPipeline.preprocess`` bound to ``model`` (no Pipeline
    construction, so no configuration file is needed)."""
    pipeline_cls = _pipeline_class()
    shim = types.SimpleNamespace(model=model)
    shim._get_preprocess_shape = types.MethodType(pipeline_cls._get_preprocess_shape, shim)
    return types.MethodType(pipeline_cls.preprocess, shim)


@torch.no_grad()
def modelscope_forward(model: nn.Module, image_rgb_uint8: np.ndarray) -> dict[str, Any]:
    """ModelScope preprocessing (the pipeline's own ``preprocess``) + raw network outputs.

    Returns ``pred_logits`` (1, Q, C+1), ``pred_masks`` (1, Q, Hp/4, Wp/4), ``input`` (the
    (1, 3, H, W) float 0..255 tensor the network saw, before normalisation/padding),
    ``padded_size``, and for single-person models ``crop_box`` [x0, y0, x1, y1] inside the canvas.
    """
    image = np.ascontiguousarray(image_rgb_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("expected an RGB uint8 array of shape (H, W, 3)")
    sample = _preprocessor(model)(image)["batched_inputs"][0]
    tensor = sample["image"].float()[None]
    out = modelscope_raw(model, tensor)
    out["input"] = tensor
    if "crop_box" in sample:
        out["crop_box"] = [int(v) for v in sample["crop_box"]]
    return out


# --------------------------------------------------------------------------- stock pipeline


def stock_pipeline(model_dir: str | os.PathLike) -> Callable[[np.ndarray], dict]:
    """ModelScope's own pipeline for a local model directory, unmodified, on CPU.

    Built exactly as a user would: ``modelscope.pipelines.pipeline('image-segmentation',
    model=model_dir, device='cpu')``. ModelScope reads ``configuration.json``, picks
    ``ImageHumanParsingPipeline`` from the registry, builds ``M2FP`` with ``pretrained: true``
    and reads ``pytorch_model.pt`` with its own loader. A local directory never reaches the hub
    client, so nothing touches the network. The returned callable takes an RGB uint8 array (or
    anything ``LoadImage`` accepts) and returns the pipeline's dict: ``masks`` (H x W float
    arrays at the input size), ``labels`` (class names) and ``scores``. The pipeline object and
    its model are attached as ``.pipeline`` and ``.model``.
    """
    _pipeline_class()  # imports (and registers) with the stand-ins in place
    from modelscope.pipelines import pipeline

    pipe = pipeline(TASK, model=str(model_dir), device="cpu")

    def run(image):
        if isinstance(image, np.ndarray):
            from PIL import Image

            image = Image.fromarray(np.ascontiguousarray(image))  # RGB, as LoadImage yields
        return pipe(image)

    run.pipeline = pipe  # type: ignore[attr-defined]
    run.model = pipe.model  # type: ignore[attr-defined]
    return run


def stock_label_map(result: dict, classes: list[str], shape: tuple[int, int]) -> np.ndarray:
    """Label map (H, W) of class ids (``int64``) from the stock pipeline's output.

    Single-person results are disjoint per-class masks (the argmax of the semantic map): each
    mask's pixels get that class id. Multi-person results are possibly overlapping part and
    'Human' instances: the 'Human' instances are skipped (they are person masks, not part
    labels), and part masks are painted in ascending score order so the highest-scoring
    instance wins; uncovered pixels are 0 (Background).
    """
    height, width = shape
    label_map = np.zeros((height, width), dtype=np.int64)
    index = {name: i for i, name in enumerate(classes)}
    entries = list(zip(result["masks"], result["labels"], result["scores"], strict=True))
    entries = [e for e in entries if e[1] != "Human"]
    entries.sort(key=lambda e: float(e[2]))  # stable: ties keep the pipeline's order
    for mask, label, _score in entries:
        mask = np.asarray(mask)
        if mask.shape != (height, width):
            raise ValueError(f"mask shape {mask.shape} != requested shape {(height, width)}")
        label_map[mask > 0.5] = index[label]
    return label_map
