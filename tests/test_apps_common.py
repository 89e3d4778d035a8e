"""What the commands share (streamer.apps.common): quoting a --set value, the signal handler."""

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


def test_signal_stop_runs_one_action_per_signal_and_restores_handlers():
    import signal

    from streamer.apps.common import SignalStop

    seen: list[tuple[str, int]] = []
    before = signal.getsignal(signal.SIGTERM)
    stopper = SignalStop(lambda s: seen.append(("stop", s)), lambda s: seen.append(("abort", s)))
    with stopper as stop:
        assert signal.getsignal(signal.SIGINT) is stop
        assert stop.code is None and stop.last_code is None
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # past the last action: the last one again
    assert seen == [("stop", signal.SIGTERM), ("abort", signal.SIGINT), ("abort", signal.SIGINT)]
    assert (stop.count, stop.code, stop.last_code) == (3, 143, 130)
    assert signal.getsignal(signal.SIGTERM) is before
