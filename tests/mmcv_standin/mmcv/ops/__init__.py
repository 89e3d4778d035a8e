"""Test-only stand-in for ``mmcv.ops`` (see ``mmcv/__init__.py``)."""

from .multi_scale_deform_attn import (
    MultiScaleDeformableAttnFunction,
    multi_scale_deformable_attn_pytorch,
)

__all__ = ["MultiScaleDeformableAttnFunction", "multi_scale_deformable_attn_pytorch"]
