"""Finding and loading M2FP weights: ModelScope ids, local directories, strict key checks."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from streamer.core.errors import ModelError

if TYPE_CHECKING:  # torch is imported only to read a checkpoint, never to find one
    import torch
    from torch import nn

log = logging.getLogger("streamer.model")

CHECKPOINT_FILE = "pytorch_model.pt"
_MODEL_ID = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
# Entries a training checkpoint may carry that inference never uses. Everything else must match.
_TRAINING_ONLY_PREFIXES = ("criterion.",)
_OPTIONAL_SUFFIXES = (".num_batches_tracked",)


def is_model_id(spec: str) -> bool:
    """``damo/cv_resnet101_image-single-human-parsing`` is an id; ``./models/x`` is a path."""
    return bool(_MODEL_ID.match(spec)) and not Path(spec).exists()


def resolve_model_dir(spec: str, cache_dir: str | None = None) -> Path:
    """Turn ``--model`` into a local directory, downloading a ModelScope id on first use.

    A directory is used as it is. An id is looked up in ModelScope's cache
    (``MODELSCOPE_CACHE``, by default ``~/.cache/modelscope``) and downloaded there with
    ``modelscope.snapshot_download`` when absent; later runs work offline from the cache.
    """
    if not is_model_id(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelError(
                f"model directory {spec} does not exist: pass a directory holding "
                f"configuration.json and {CHECKPOINT_FILE}, or a ModelScope id"
            )
        if not path.is_dir():
            raise ModelError(f"--model {spec} is a file; pass the directory that holds it")
        return path
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise ModelError(
            f"model {spec} needs the modelscope package to download: pip install modelscope, "
            "or pass --model /path/to/model_dir"
        ) from None
    cache = cache_dir or os.environ.get("MODELSCOPE_CACHE") or str(
        Path.home() / ".cache" / "modelscope")
    with _quiet_hub_logs():
        try:
            return Path(snapshot_download(spec, cache_dir=cache, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached yet; fall through to the download
            pass
        log.warning("downloading %s from ModelScope into %s (first use only)", spec, cache)
        try:
            return Path(snapshot_download(spec, cache_dir=cache))
        except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear line
            failure = exc
    reason = str(failure).strip().splitlines()[0][:120] if str(failure).strip() else ""
    raise ModelError(
        f"model {spec} is not in the ModelScope cache ({cache}) and could not be downloaded "
        f"({type(failure).__name__}: {reason}); fetch it where there is network with "
        f"`modelscope download --model {spec}` or pass --model /path/to/model_dir"
    ) from None


@contextlib.contextmanager
def _quiet_hub_logs() -> Iterator[None]:
    """ModelScope logs every retry as a warning; the user gets one line from us instead."""
    loggers = [logging.getLogger(name) for name in ("modelscope", "modelscope_hub")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _describe(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def read_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    path = Path(model_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise ModelError(f"no {CHECKPOINT_FILE} in model directory {model_dir}")
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise ModelError(
            f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}); download it again"
        ) from None
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"checkpoint {path} is not a ModelScope M2FP checkpoint {{'model': ...}}")
    return state


def load_weights(model: nn.Module, model_dir: str | Path) -> None:
    """Load a ModelScope checkpoint with strict key and shape checks.

    Unlike ModelScope's loader, which skips mismatched keys at INFO level, any missing, extra or
    mis-shaped key is an error that names it.
    """
    state = read_state_dict(model_dir)
    state = {k: v for k, v in state.items() if not k.startswith(_TRAINING_ONLY_PREFIXES)}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
    extra = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    where = Path(model_dir) / CHECKPOINT_FILE
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_describe(missing)}")
        if extra:
            parts.append(f"unexpected keys: {_describe(extra)}")
        if shapes:
            parts.append(f"shape mismatch: {_describe(shapes, 3)}")
        raise ModelError(
            f"checkpoint {where} does not match configuration.json ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False)
