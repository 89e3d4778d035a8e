"""The configuration schema: defaults, YAML files, --set overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.config import load_config, parse_override
from streamer.core.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["default", "file", "rtsp", "webcam"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.parser.engine in ("torch", "torchscript", "onnxruntime", "openvino")


def test_default_yaml_lists_the_defaults():
    assert load_config(CONFIGS / "default.yaml") == load_config(None)


def test_overrides_apply_after_the_file():
    config = load_config(CONFIGS / "rtsp.yaml", ["detector.every=5", "render.alpha=0.25",
                                                 "source.uri='rtsp://cam/x'"])
    assert config.detector.every == 5
    assert config.render.alpha == 0.25
    assert config.source.uri == "rtsp://cam/x"
    assert config.buffer.policy == "latest"


def test_integer_accepted_where_a_number_is_expected():
    assert load_config(None, ["render.alpha=1"]).render.alpha == 1.0


@pytest.mark.parametrize("override, key", [
    ("detector.evry=3", "detector.evry"),
    ("detectr.every=3", "detectr"),
    ("parse.every=often", "parse.every"),
    ("parse.every=0", "parse.every"),
    ("parser.engine=tensorrt", "parser.engine"),
    ("render.alpha=1.5", "render.alpha"),
    ("output.show=maybe", "output.show"),
    ("buffer.policy=newest", "buffer.policy"),
    ("source.transport=sctp", "source.transport"),
    ("detector.max_persons=0", "detector.max_persons"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="did you mean every"):
        load_config(None, ["detector.evry=3"])


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("detector: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("detector:\n  every: two\n")
    with pytest.raises(ConfigError, match="detector.every"):
        load_config(wrong)


def test_set_syntax():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("a.b.c=1")


@pytest.mark.parametrize("key", ["detector.pad", "parse.reuse_threshold",
                                 "detector.score_threshold", "render.alpha",
                                 "source.open_timeout_s", "source.reconnect_cap_s"])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_infinity_are_config_errors(tmp_path, key, value):
    section, name = key.split(".")
    config = tmp_path / "c.yaml"
    config.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError, match=f"{key} expects a finite number"):
        load_config(config)
    with pytest.raises(ConfigError, match=f"{key} expects a finite number"):
        load_config(None, [f"{key}={value}"])


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("# r\xe9glages\nparse:\n  every: 2\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert "not UTF-8" in str(info.value) and "\n" not in str(info.value)
