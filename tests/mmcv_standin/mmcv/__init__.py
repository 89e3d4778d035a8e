"""Minimal, test-only stand-in for the parts of ``mmcv`` that ModelScope's M2FP imports.

ModelScope's ``maskdino/ms_deform_attn.py`` does::

    from mmcv.ops.multi_scale_deform_attn import (
        MultiScaleDeformableAttnFunction, multi_scale_deformable_attn_pytorch)

and calls the compiled ``MultiScaleDeformableAttnFunction.apply`` inside a
``try``/``except Exception`` that falls back to the pure-PyTorch function.
mmcv has no usable wheel here, so this package provides just those two names.
It must only be put on ``sys.path`` by the test harness (tests/modelscope_ref.py).
"""

__version__ = "0.0.0+streamer-test-standin"
