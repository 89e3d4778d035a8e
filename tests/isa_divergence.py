"""Where streamer's M2FP and ModelScope's first differ: layer-by-layer outputs of both networks.

Test-only diagnostic (not collected by pytest). Both networks load one checkpoint, so their
module names are shared: every hooked module's output is recorded by name and call number in
each network, then compared in ours' execution order. The attention masks of the transformer
decoder (the thresholded ``sigmoid(mask) < 0.5`` of the previous layer's masks) are recorded
too, with the number of bits that differ and the mask logits at those bits.

Run it with an ISA cap in the environment (it must be set before torch is imported)::

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 PYTHONPATH=$PWD:tests \\
        python tests/isa_divergence.py MODEL_DIR PHOTO [--build multi --seed 11] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from test_sameness import RECOMPUTING, pad_like_modelscope, trace_decoder
from torch import nn


@dataclass
class Row:
    """One hooked output compared between the two networks."""

    name: str
    call: int
    shape: list[int]
    max_abs: float  # largest absolute difference (0.0 = bitwise equal); -1 for bool masks
    max_ref: float  # largest absolute value in the reference output
    differing: int  # elements not bitwise equal


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict):
        for value in out.values():
            if isinstance(value, torch.Tensor):
                return value
    return None


def _hooked_names(net: nn.Module) -> list[str]:
    """Stage-level backbone modules and every module of the head (bounded memory)."""
    names = []
    for name, _ in net.named_modules():
        parts = name.split(".")
        if name.startswith("backbone.") and len(parts) <= 3:  # stem, resN, resN.k
            names.append(name)
        elif name.startswith("sem_seg_head.") and not name.endswith("dropout"):
            names.append(name)
    return names


def record(net: nn.Module, names: set[str]) -> tuple[dict, list, list]:
    """Attach hooks; returns (outputs by (name, call), execution order, handles)."""
    outputs: dict[tuple[str, int], torch.Tensor] = {}
    order: list[tuple[str, int]] = []
    handles = []
    for name, module in net.named_modules():
        if name not in names:
            continue

        def hook(_m, _inp, out, name=name):
            t = _first_tensor(out)
            if t is None or RECOMPUTING[0]:
                return
            call = sum(1 for n, _ in outputs if n == name)
            outputs[(name, call)] = t.detach().clone()
            order.append((name, call))

        handles.append(module.register_forward_hook(hook))
    return outputs, order, handles


#: Modules whose outputs differ by construction, not by arithmetic: ours applies the ReLU
#: after the FPN output conv, ModelScope's conv wrapper inside it.
STRUCTURAL = {"sem_seg_head.pixel_decoder.layer_1", "sem_seg_head.pixel_decoder.layer_2",
              "sem_seg_head.pixel_decoder.layer_3"}


def compare(ours: dict, order: list, theirs: dict) -> list[Row]:
    """Rows in ours' order. A module called more often in theirs (ModelScope computes class
    logits after every layer, ours only at the end) is compared on its last call."""
    calls_o: dict[str, int] = {}
    calls_t: dict[str, int] = {}
    for name, call in ours:
        calls_o[name] = max(calls_o.get(name, 0), call + 1)
    for name, call in theirs:
        calls_t[name] = max(calls_t.get(name, 0), call + 1)
    rows = []
    for key in order:
        name, call = key
        if name in STRUCTURAL or name not in calls_t:
            continue
        if calls_o[name] == calls_t[name]:
            other = key
        elif call == calls_o[name] - 1:
            other = (name, calls_t[name] - 1)
        else:
            continue
        a, b = ours[key], theirs[other]
        if a.shape != b.shape:
            if a.numel() == b.numel():
                a = a.reshape(b.shape)
            else:
                continue
        if a.dtype == torch.bool:
            rows.append(Row(key[0], key[1], list(a.shape), -1.0, 1.0, int((a != b).sum())))
            continue
        diff = (a.double() - b.double()).abs()
        rows.append(Row(key[0], key[1], list(a.shape), float(diff.max()),
                        float(b.abs().max()), int((a != b).sum())))
    return rows


def mask_rows(ours, theirs) -> list[dict]:
    """Per attention mask (two ``test_sameness.DecoderTrace``): logits difference, flipped bits
    and the reference's logits at those bits."""
    rows = []
    for i, (ma, mb) in enumerate(zip(ours.masks, theirs.masks, strict=True)):
        flipped = ma != mb
        at = theirs.logits[i][flipped]
        rows.append({
            "mask": i, "bits": int(ma.numel()),
            "logit_max_abs": float((ours.logits[i] - theirs.logits[i]).abs().max()),
            "flipped": int(flipped.sum()),
            "queries_flipped": int(flipped.any(-1).sum()),
            "ref_logits_at_flips": [float(v) for v in at[:8]],
        })
    return rows


def run(model_dir: Path, photo: Path) -> dict:
    import modelscope_ref as ref
    from PIL import Image

    from streamer.parsing.parser import HumanParser, ParserOptions

    image = np.asarray(Image.open(photo).convert("RGB"))
    model = ref.load_modelscope_model(model_dir)
    ours = HumanParser(ParserOptions(model=str(model_dir), engine="torch")).net
    ours.use_reference_order(True)

    names = set(_hooked_names(ours)) & set(_hooked_names(model))
    theirs_out, _, handles_t = record(model, names)
    with trace_decoder(model) as theirs_masks:
        expected = ref.modelscope_forward(model, image)
    for h in handles_t:
        h.remove()

    ours_out, order, handles_o = record(ours, names)
    with torch.inference_mode(), trace_decoder(ours) as ours_masks:
        logits, masks = ours(pad_like_modelscope(expected["input"]))
    for h in handles_o:
        h.remove()

    rows = compare(ours_out, order, theirs_out)
    first = next((r for r in rows if r.differing), None)
    diff = (logits - expected["pred_logits"]).abs()
    return {
        "isa": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "photo": photo.name,
        "input_shape": list(expected["input"].shape),
        "first_difference": asdict(first) if first else None,
        "rows": [asdict(r) for r in rows],
        "attention_masks": mask_rows(ours_masks, theirs_masks),
        "logits_max_abs": float(diff.max()),
        "logits_over_1e-4": int((diff > 1e-4).sum()),
        "logits_total": int(diff.numel()),
        "masks_max_abs": float((masks - expected["pred_masks"]).abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("photo", type=Path)
    parser.add_argument("--build", choices=["single", "multi"],
                        help="first write a full-size reference model of this variant")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.build:
        import modelscope_ref as ref

        ref.make_reference_model_dir(args.model_dir, args.build, tiny=False, seed=args.seed)
    result = run(args.model_dir, args.photo)
    print(f"ISA {result['isa']}, input {result['input_shape']}")
    for r in result["rows"]:
        flag = "" if r["differing"] == 0 else "  <-- differs"
        print(f"{r['name']:<72} #{r['call']} max|d|={r['max_abs']:.3g} "
              f"(|ref|<={r['max_ref']:.3g}) n={r['differing']}{flag}")
    for m in result["attention_masks"]:
        print(f"attention mask {m['mask']}: logits max|d|={m['logit_max_abs']:.3g}, "
              f"{m['flipped']} of {m['bits']} bits flipped in {m['queries_flipped']} queries, "
              f"ref logits there {m['ref_logits_at_flips']}")
    print(f"logits: max|d|={result['logits_max_abs']:.3g}, {result['logits_over_1e-4']} of "
          f"{result['logits_total']} over 1e-4; masks max|d|={result['masks_max_abs']:.3g}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
