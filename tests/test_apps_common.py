"""What the commands share (streamer.apps.common): quoting a --set value."""

from __future__ import annotations

import pytest

from streamer.apps.common import yaml_quote
from streamer.config import parse_override


@pytest.mark.parametrize("text", ["0", "yes", "null", "it's", "a: b", "#x", "~/clips/0 1.mp4",
                                  "[1, 2]", "'quoted'", "C:\\clips\\x.mp4", ""])
def test_a_quoted_string_reads_back_as_the_same_text(text):
    assert parse_override(f"parser.model={yaml_quote(text)}") == {"parser": {"model": text}}


@pytest.mark.parametrize("value", [3, 0.5, True])
def test_other_values_read_back_as_themselves(value):
    assert parse_override(f"parse.every={yaml_quote(value)}") == {"parse": {"every": value}}
