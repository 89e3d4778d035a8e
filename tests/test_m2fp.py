"""Our M2FP code: configuration, strict checkpoint loading, engines, batching, model lookup."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from streamer.core.errors import ModelError
from streamer.core.types import Box, Person
from streamer.m2fp.checkpoint import CHECKPOINT_FILE, load_weights, resolve_model_dir
from streamer.m2fp.config import load_model_config, modelscope_configuration, parse_model_config
from streamer.m2fp.model import M2FP
from streamer.m2fp.preprocess import fit_single, multi_resized_shape, to_single_canvas
from streamer.parsing.parser import HumanParser, ParserOptions


def photo(seed: int = 0, h: int = 300, w: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (h // 20 + 1, w // 20 + 1, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((20, 20, 1), np.uint8))[:h, :w].copy()


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_real_configuration_builds_r101_with_published_sizes():
    cfg = parse_model_config(modelscope_configuration("multi"))
    net = M2FP(cfg)
    params = sum(p.numel() for p in net.parameters())
    assert 60e6 < params < 70e6
    assert len(net.backbone.res4) == 23
    assert len(net.sem_seg_head.predictor.transformer_cross_attention_layers) == 9
    assert net.sem_seg_head.predictor.query_feat.weight.shape == (100, 256)
    assert net.sem_seg_head.predictor.class_embed.out_features == 22
    assert cfg.classes[-1] == "Human" and cfg.num_parsing == 20


def test_network_output_shapes(tiny_single_model):
    cfg = load_model_config(tiny_single_model)
    net = M2FP(cfg).eval()
    with torch.inference_mode():
        logits, masks = net(torch.zeros(2, 3, 512, 384))
    assert logits.shape == (2, cfg.decoder.num_queries, 21)
    assert masks.shape == (2, cfg.decoder.num_queries, 128, 96)


def test_config_missing_key_is_named(tmp_path):
    data = modelscope_configuration("single")
    del data["model"]["decoder"]["num_queries"]
    (tmp_path / "configuration.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="num_queries"):
        load_model_config(tmp_path)


def test_config_wrong_type_is_named():
    data = modelscope_configuration("single")
    data["model"]["backbone"]["depth"] = "101"
    with pytest.raises(ModelError, match="backbone.depth"):
        parse_model_config(data)


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_checkpoint_mismatch_names_the_key(tiny_single_model, tmp_path, damage):
    model_dir = copy_model(tiny_single_model, tmp_path / "m")
    path = model_dir / CHECKPOINT_FILE
    state = torch.load(path, weights_only=True)["model"]
    key = "sem_seg_head.predictor.class_embed.weight"
    if damage == "missing":
        del state[key]
    elif damage == "extra":
        state["sem_seg_head.predictor.bogus.weight"] = torch.zeros(3)
        key = "sem_seg_head.predictor.bogus.weight"
    else:
        state[key] = torch.zeros(5, 5)
    torch.save({"model": state}, path)
    net = M2FP(load_model_config(model_dir))
    with pytest.raises(ModelError) as err:
        load_weights(net, model_dir)
    kind = {"missing": "missing keys", "extra": "unexpected keys", "shape": "shape mismatch"}
    assert key in str(err.value) and kind[damage] in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_checkpoint_is_one_line(tiny_single_model, tmp_path):
    model_dir = copy_model(tiny_single_model, tmp_path / "m")
    path = model_dir / CHECKPOINT_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        HumanParser(ParserOptions(model=str(model_dir), engine="torch"))


def test_config_and_checkpoint_mismatch(tiny_single_model, tiny_multi_model, tmp_path):
    model_dir = copy_model(tiny_single_model, tmp_path / "m")
    shutil.copy(tiny_multi_model / "configuration.json", model_dir / "configuration.json")
    with pytest.raises(ModelError, match="class_embed"):
        HumanParser(ParserOptions(model=str(model_dir), engine="torch"))


def test_missing_model_directory():
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_dir("/nonexistent/m2fp")


def test_missing_model_offline_gives_one_line(tmp_path, monkeypatch):
    # The real download path, up to the network boundary: the hub endpoint refuses at once.
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")
    model_id = "damo/cv_resnet101_image-single-human-parsing"
    with pytest.raises(ModelError) as err:
        resolve_model_dir(model_id)
    message = str(err.value)
    assert model_id in message and str(tmp_path / "cache") in message
    assert f"modelscope download --model {model_id}" in message
    assert "\n" not in message


def test_cached_model_id_is_used_offline(tiny_single_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")
    from modelscope import snapshot_download

    # Lay the files out where ModelScope's cache keeps a downloaded snapshot.
    model_id = "damo/cv_resnet101_image-single-human-parsing"
    snapshots = tmp_path / "cache" / "models" / model_id.replace("/", "--") / "snapshots"
    shutil.copytree(tiny_single_model, snapshots / "master")
    found = snapshot_download(model_id, cache_dir=str(tmp_path / "cache"), local_files_only=True)
    assert resolve_model_dir(model_id) == Path(found) == snapshots / "master"


def test_fit_single_never_enlarges_and_keeps_aspect():
    assert fit_single(100, 50, (512, 384)) == (100, 50)
    assert fit_single(1024, 384, (512, 384)) == (512, 192)
    assert fit_single(400, 768, (512, 384)) == (200, 384)
    canvas, placement = to_single_canvas(np.zeros((100, 50, 3), np.uint8), (512, 384))
    assert canvas.shape == (512, 384, 3)
    assert placement.box == (167, 206, 217, 306)
    assert (canvas[0, 0] == 128).all() and (canvas[250, 190] == 0).all()


def test_multi_resize_rule():
    assert multi_resized_shape(720, 1280) == (640, 1138)
    assert multi_resized_shape(1080, 1920) == (640, 1138)
    assert multi_resized_shape(200, 1000) == (267, 1333)


@pytest.fixture(scope="module")
def torch_parser(tiny_single_model):
    return HumanParser(ParserOptions(model=str(tiny_single_model), engine="torch"))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


@pytest.mark.parametrize("engine", ["torchscript", "onnxruntime"])
def test_engines_agree_with_torch(tiny_single_model, torch_parser, engine):
    parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine=engine))
    crops = [photo(s, 300 + 40 * s, 160 + 30 * s) for s in range(3)]
    ours = parser.parse_crops(crops)
    ref = torch_parser.parse_crops(crops)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape
        assert agreement(a, b) >= 0.995


@pytest.mark.parametrize("engine", ["torch", "torchscript", "onnxruntime"])
def test_batched_crops_equal_one_by_one(tiny_single_model, engine):
    parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine=engine,
                                       batch_size=3))
    crops = [photo(s, 200 + 50 * s, 100 + 20 * s) for s in range(3)]
    batched = parser.parse_crops(crops)
    parser.options.batch_size = 1
    single = parser.parse_crops(crops)
    for a, b in zip(batched, single, strict=True):
        assert agreement(a, b) >= 0.999


def test_engine_cache_is_reused(tiny_single_model, tmp_path):
    options = ParserOptions(model=str(tiny_single_model), engine="onnxruntime",
                            cache_dir=str(tmp_path))
    HumanParser(options).warm_up()
    files = sorted(p.name for p in tmp_path.glob("*.onnx"))
    assert len(files) == 1
    mtime = (tmp_path / files[0]).stat().st_mtime_ns
    HumanParser(options).warm_up()
    assert (tmp_path / files[0]).stat().st_mtime_ns == mtime


def test_crops_are_pasted_back_where_they_came_from(torch_parser):
    image = photo(5, 240, 320)
    persons = [Person(1, 0.9, Box(10, 20, 110, 220)), Person(2, 0.5, Box(200, 30, 300, 230))]
    result = torch_parser.parse(image, persons)
    assert result.labels.shape == (240, 320)
    assert result.instances is not None
    outside = np.ones((240, 320), bool)
    for p in persons:
        outside[p.box.y0:p.box.y1, p.box.x0:p.box.x1] = False
    assert (result.labels[outside] == 0).all() and (result.instances[outside] == 0).all()
    alone = torch_parser.parse_crops([image[20:220, 10:110]])[0]
    region = result.labels[20:220, 10:110]
    assert (region[alone != 0] == alone[alone != 0]).mean() >= 0.999
    assert set(np.unique(result.instances)) <= {0, 1, 2}


def test_overlap_goes_to_the_higher_score(torch_parser):
    image = photo(6, 200, 200)
    low = Person(1, 0.2, Box(0, 0, 150, 200))
    high = Person(2, 0.9, Box(50, 0, 200, 200))
    result = torch_parser.parse(image, [high, low])
    crop_high = torch_parser.parse_crops([image[0:200, 50:200]])[0]
    fg = crop_high != 0
    assert (result.instances[:, 50:200][fg] == 2).mean() >= 0.999


def test_multi_person_model_parses_whole_frame(tiny_multi_model):
    parser = HumanParser(ParserOptions(model=str(tiny_multi_model), engine="torch"))
    image = photo(7, 180, 320)
    result = parser.parse(image)
    assert result.labels.shape == (180, 320)
    assert result.instances is not None and result.instances.shape == (180, 320)
    assert len(result.classes) == 20
    assert result.labels.max() < 20
    for person in result.persons:
        assert 0 <= person.box.x0 < person.box.x1 <= 320
        assert 0 <= person.box.y0 < person.box.y1 <= 180


def test_people_too_small_to_parse_are_marked_person_only(torch_parser):
    from streamer.vision.render import PERSON_ONLY

    image = photo(8, 200, 200)
    tall, short = Person(1, 0.9, Box(0, 0, 80, 150)), Person(2, 0.8, Box(120, 10, 140, 40))
    result = torch_parser.parse(image, [tall, short])
    assert (result.labels[10:40, 120:140] == PERSON_ONLY).all()
    assert (result.instances[10:40, 120:140] == 2).all()
    assert not (result.labels[0:150, 0:80] == PERSON_ONLY).any()
    torch_parser.options.min_person_height = 0
    try:
        parsed = torch_parser.parse(image, [short])
    finally:
        torch_parser.options.min_person_height = 40
    assert not (parsed.labels == PERSON_ONLY).any()
