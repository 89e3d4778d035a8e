"""The torch-free run path (issue 16, item 7): a run whose compiled engine is in the cache.

The first run exports and compiles with torch in one child process; a second child runs the
whole pipeline on a real clip from that cache and must never import torch. Numpy's
post-processing must give the label maps torch's gives (>= 99.9% of pixels) on real photos,
with the native kernels and with oneDNN/ATen/MKL capped to AVX2.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from isa_env import ISAS, isa_environment, run_with_isa

BUILD_CHILD = """
import json, sys
from streamer.config import load_config
from streamer.parsing.parser import HumanParser
parser = HumanParser(load_config(None, [f"parser.model={sys.argv[1]}"]).parser)
engine = parser.engine_for(parser.cfg.single_canvas_hw)
print(json.dumps({"engine": engine.name, "compiled_now": engine.compiled_now}))
"""

RUN_CHILD = """
import json, sys
from streamer.config import load_config
from streamer.pipeline import Pipeline
model, clip, out = sys.argv[1:4]
config = load_config(None, [f"parser.model={model}", f"output.path={out}",
                            "output.progress=false", "source.max_frames=3"])
pipeline = Pipeline(config, clip)
summary = pipeline.run(show_progress=False)
engine = pipeline.parser.engine_for(pipeline.parser.cfg.single_canvas_hw)
print(json.dumps({"torch": "torch" in sys.modules, "frames": summary["frames_written"],
                  "crops": summary["crops_parsed"], "engine": engine.name,
                  "compiled_now": engine.compiled_now,
                  "m2fp_model": "streamer.m2fp.model" in sys.modules}))
"""


def child(code: str, *args: str, cache: str) -> dict:
    env = isa_environment("native")
    env["STREAMER_CACHE"] = cache
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_cached_openvino_run_never_imports_torch(tiny_single_model, media, tmp_path):
    cache = str(tmp_path / "cache")
    built = child(BUILD_CHILD, str(tiny_single_model), cache=cache)
    assert built == {"engine": "openvino", "compiled_now": [1]}  # exported and compiled
    got = child(RUN_CHILD, str(tiny_single_model), str(media / "videos" / "chaplin_bw.mp4"),
                str(tmp_path / "out.mp4"), cache=cache)
    assert got["engine"] == "openvino" and got["compiled_now"] == []  # loaded from the cache
    assert got["frames"] == 3 and got["crops"] >= 1  # people were found and parsed
    assert not got["torch"] and not got["m2fp_model"], got
    assert (tmp_path / "out.mp4").stat().st_size > 0


AGREEMENT_CHILD = """
import json, sys
import numpy as np
from PIL import Image
from streamer.m2fp.preprocess import to_single_canvas
from streamer.parsing.parser import HumanParser, ParserOptions
import torch

model, media = sys.argv[1:3]
parser = HumanParser(ParserOptions(model=model, engine="torch"))
engine = parser.engine_for(parser.cfg.single_canvas_hw)
out = {"isa": torch.backends.cpu.get_cpu_capability(), "maps": {}}
for name in ("opencv_messi5.jpg", "ultralytics_zidane.jpg"):
    image = np.asarray(Image.open(f"{media}/images/{name}").convert("RGB"))
    h, w = image.shape[:2]
    # The whole photo (shrunk onto the canvas: scores resized back) and a part of it that
    # fits without shrinking (resampled inside its box only).
    for tag, crop in (("whole", image), ("part", image[h // 3:, w // 3: w // 3 + 300])):
        canvas, placement = to_single_canvas(np.ascontiguousarray(crop),
                                             parser.cfg.single_canvas_hw)
        logits, masks = engine(canvas.transpose(2, 0, 1)[None].astype(np.float32))
        maps = []
        for torch_post in (True, False):
            parser.torch_postprocess = torch_post
            maps.append(parser.crop_labels(logits[0], masks[0], placement))
        out["maps"][f"{name} {tag}"] = {
            "agreement": float((maps[0] == maps[1]).mean()),
            "shape_equal": maps[0].shape == maps[1].shape == crop.shape[:2],
            "classes": len(np.unique(maps[0])), "shrunk": crop.shape[:2] != (
                placement.box[3] - placement.box[1], placement.box[2] - placement.box[0])}
print(json.dumps(out))
"""


@pytest.mark.parametrize("isa", list(ISAS))
def test_numpy_postprocessing_gives_torchs_label_maps(tiny_single_model, media, isa):
    got = run_with_isa(isa, AGREEMENT_CHILD, str(tiny_single_model), str(media))
    if isa == "avx2":
        assert got["isa"] == "AVX2"
    assert {m["shrunk"] for m in got["maps"].values()} == {True, False}  # both paths ran
    for name, m in got["maps"].items():
        print(f"{isa} {name}: {m['agreement']:.5f} of label pixels identical, "
              f"{m['classes']} classes")
        assert m["shape_equal"] and m["classes"] >= 2, (name, m)
        assert m["agreement"] >= 0.999, (name, m)
