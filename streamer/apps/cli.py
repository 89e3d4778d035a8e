"""``run_stream.py``: parse people in a video, stream, webcam or photo.

Exit codes: 0 done (possibly with warnings), 1 a run-time problem (unreadable input, disk
full), 2 a usage or configuration error, 130 / 143 stopped by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from streamer.apps.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    SignalStop,
    add_log_level,
    add_model_options,
    model_overrides,
    run_command,
    yaml_quote,
)
from streamer.core.heap import return_large_buffers

IMAGE_OUTPUTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

EPILOG = """\
subcommands:
  run_stream.py eval --images DIR --labels DIR [--model ...]   accuracy against ground truth
  run_stream.py serve [--host H --port P]                      web UI and REST API
  run_stream.py batch --source 'videos/*.mp4' --output-dir out/ [--ray ADDRESS]
                                                               many files, or many streams
  run_stream.py fetch detectors                                get the person detectors now

examples:
  run_stream.py --source clip.mp4 --output parsed.mp4 --model DIR
  run_stream.py --source rtsp://127.0.0.1:8554/cam --output live.mp4 --metrics m.json
  run_stream.py --source 0 --show                      # webcam 0 in a window
  run_stream.py --config cams.yaml --output-dir rec/   # every sources: stream, one model
  run_stream.py --source photo.jpg --output parsed.png
  run_stream.py --config configs/rtsp.yaml --set detector.every=3 --set render.alpha=0.6

--model takes a directory (configuration.json + pytorch_model.pt) or a ModelScope id, which is
downloaded on first use into ModelScope's cache. Every config key can be set with --set
section.key=value; see configs/default.yaml for all of them.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_stream.py",
        description="Parse people (hair, face, clothes, limbs...) in video on a CPU with M2FP "
        "and write or show a colour overlay.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", help="video file, image, folder of images, rtsp:// URL, "
                   "webcam index (0) or /dev/videoN (default: source.uri from --config)")
    p.add_argument("--output", "-o", help="annotated video (.mp4/.mkv) or, for a photo, an "
                   "image (.png/.jpg)")
    p.add_argument("--show", action="store_true", help="show the annotated stream in a window "
                   "(q/Esc quits, space pauses; needs opencv-python with GUI)")
    add_model_options(
        p, config_help="YAML config file (see configs/)",
        set_help="override any config key, e.g. parser.engine=torch",
        detector_help="person detector (detector.type, default auto: the trained ones, fetched "
        "once; see `run_stream.py fetch detectors`); full parses whole frames")
    p.add_argument("--threads", type=int, help="threads for inference (parser.threads; "
                   "0 = all cores)")
    p.add_argument("--parse-every", type=int, metavar="N",
                   help="parse one frame in N, reuse the result between (parse.every)")
    p.add_argument("--max-frames", type=int, metavar="N",
                   help="stop after N frames, to try settings on a few (source.max_frames)")
    p.add_argument("--start", type=float, metavar="SECONDS",
                   help="begin this many seconds into a file or image folder (source.start; "
                   "the output starts there, without the source's audio)")
    p.add_argument("--realtime", action="store_true",
                   help="pace a file as if it were live (tests the live frame-skipping)")
    p.add_argument("--metrics", help="write the run summary as JSON to this file")
    p.add_argument("--output-dir", help="run every stream of --config's sources: list in this "
                   "process on one model, writing DIR/NAME.mkv each (see docs/live.md)")
    p.add_argument("--labels-out", help="write one label-map PNG per frame to this folder "
                   "(named after the image for image folders, else 000000.png, ...)")
    p.add_argument("--stats-jsonl", help="write per-frame stats as JSON lines to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_log_level(p)
    return p


def _overrides(args: argparse.Namespace) -> list[str]:
    out = model_overrides(args)
    simple = {
        "source.uri": args.source, "output.path": args.output, "parser.threads": args.threads,
        "parse.every": args.parse_every, "output.metrics": args.metrics,
        "output.labels_dir": args.labels_out, "output.stats_jsonl": args.stats_jsonl,
        "source.max_frames": args.max_frames, "source.start": args.start,
    }
    for key, value in simple.items():
        if value is not None:
            out.append(f"{key}={yaml_quote(value)}")
    if args.show:
        out.append("output.show=true")
    if args.realtime:
        out.append("source.realtime=true")
    if args.no_progress:
        out.append("output.progress=false")
    return out


class RunStop(SignalStop):
    """First SIGINT/SIGTERM: stop gracefully (write out the frames already parsed, finalise
    the outputs). Second: stop at once, skipping the queued frames but still finalising the
    outputs with what they hold. Third (or a second before any output): exit at once.

    ``target`` is what is running (a ``Pipeline``, or the streams of ``--output-dir``): it
    has ``stop()`` and ``abort()``.
    """

    def __init__(self) -> None:
        super().__init__(self._graceful, self._at_once, self._quit)
        self.target: Any = None
        self.forced = False

    def _graceful(self, signum: int) -> None:
        print(f"\nstopping ({signal.Signals(signum).name}); finishing the output, "
              "press Ctrl-C again to stop at once", file=sys.stderr, flush=True)
        if self.target is not None:
            self.target.stop()

    def _at_once(self, signum: int) -> None:
        if self.target is None:
            self._quit(signum)
        self.forced = True
        print("stopping at once; closing the output with what it holds, press Ctrl-C "
              "again to quit without finalising it", file=sys.stderr, flush=True)
        self.target.abort()

    def _quit(self, signum: int) -> None:
        os._exit(self.code or 128 + signum)

    def install(self) -> None:
        super().install()
        atexit.register(self._exit_if_forced)

    def _exit_if_forced(self) -> None:
        # Stopped at once: the outputs are closed, but worker threads may still be inside the
        # model; tearing the interpreter down under them can abort the process (C++ runtimes).
        if self.forced and self.code is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(self.code)


def _parse_photo(config: Any, source: str, output: str) -> None:
    import numpy as np
    from PIL import Image

    from streamer.core.types import Output
    from streamer.io.sources import open_source
    from streamer.parsing.parser import HumanParser
    from streamer.parsing.photo import parse_image, photo_detector
    from streamer.vision.render import Renderer

    with open_source(source, config.source) as images:
        frame = next(iter(images), None)
    if frame is None:
        from streamer.core.errors import SourceError

        raise SourceError(f"no readable image in {source}")
    from streamer.core.types import unparseable_size

    reason = unparseable_size(frame.height, frame.width)
    if reason is not None:
        from streamer.core.errors import SourceError

        raise SourceError(f"{source}: image of {reason}", hint="pass a larger image")
    parser = HumanParser(config.parser)
    result = parse_image(frame.image, parser, photo_detector(parser, config.detector),
                         config.detector)
    overlay = Renderer(config.render).render(frame.image, result)
    Image.fromarray(np.ascontiguousarray(overlay)).save(output)
    item = Output(frame, overlay, result, {
        "index": 0, "timestamp": 0.0, "parsed": True,
        "persons": [p.to_json() for p in result.persons],
        "class_pixels": result.class_pixel_counts()})
    if config.output.labels_dir:
        from streamer.io.sinks import LabelMapSink

        with LabelMapSink(config.output.labels_dir, fmt=config.output.labels_format,
                          instances=config.output.labels_instances) as sink:
            sink.write(item)
    if config.output.stats_jsonl:
        from streamer.io.sinks import JsonlStatsSink

        with JsonlStatsSink(config.output.stats_jsonl) as stats:
            stats.write(item)
    counts = result.class_pixel_counts()
    counts.pop("Background", None)
    classes = ", ".join(f"{name} {pixels}" for name, pixels in counts.items()) or "none"
    print(f"wrote {output}: {len(result.persons)} person(s); pixels per class: {classes}")


def check_outputs(config: Any, *, photo: bool = False) -> None:
    """Every output of a run checked before any work: none may be the input (same path, a
    link to it, the same inode), each must be writable (not read-only, not /proc), and the
    label folder is created. Raises :class:`ConfigError` or :class:`SinkError`, one line.

    Example:
        >>> check_outputs(load_config(None, ["source.uri=c.mp4", "output.path=c.mp4"]))
        Traceback (most recent call last):
        streamer.core.errors.ConfigError: --output c.mp4 is the input c.mp4; ...
    """
    from streamer.io.paths import check_labels_dir, check_not_input, input_files
    from streamer.io.sinks import VIDEO_SUFFIXES, check_output_path, prepare_labels_dir

    out = config.output
    inputs = input_files(config.source.uri)
    for option, path in (("--output", out.path), ("--metrics", out.metrics),
                         ("--stats-jsonl", out.stats_jsonl), ("--labels-out", out.labels_dir)):
        check_not_input(path, inputs, option)
    check_labels_dir(out.labels_dir, config.source.uri, inputs)
    for extra in (out.metrics, out.stats_jsonl):
        if extra:
            check_output_path(extra)
    if out.path:
        check_output_path(out.path, suffixes=IMAGE_OUTPUTS if photo else VIDEO_SUFFIXES)
    if out.labels_dir:
        prepare_labels_dir(out.labels_dir)


def _print_estimate(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)  # above a running progress bar, not through it


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced after set-up)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _show_notices() -> None:
    """Print the one-line notices of slow one-off steps (streamer.notice: "compiling the
    OpenVINO engine...") whatever the log level, bare, on stderr."""
    notice = logging.getLogger("streamer.notice")
    if notice.level == logging.NOTSET or notice.level > logging.INFO:
        notice.setLevel(logging.INFO)
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        notice.addHandler(handler)
        notice.propagate = False


def _run_streams(args: argparse.Namespace, stopper: RunStop) -> int:
    from streamer.apps.streams import run_streams
    from streamer.core.errors import ConfigError

    if args.source or args.output:
        raise ConfigError("--output-dir runs the sources: listed in --config; do not pass "
                          "--source or --output with it")
    if not args.config:
        raise ConfigError("--output-dir needs --config with a sources: list",
                          hint="see docs/live.md, section Many cameras")
    report = run_streams(args.config, _overrides(args), args.output_dir, args.metrics, stopper)
    if stopper.code is not None:
        return stopper.code
    return EXIT_FAILED if report["failed"] else EXIT_OK


# Subcommands live in their own modules; each has main(argv) -> exit code.
SUBCOMMANDS = {
    "eval": "streamer.apps.evaluate",
    "serve": "streamer.serve.runner",
    "batch": "streamer.batch.runner",
    "fetch": "streamer.apps.fetch",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return_large_buffers()
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        try:
            module = importlib.import_module(SUBCOMMANDS[argv[0]])
        except ModuleNotFoundError as exc:
            print(f"error: `{argv[0]}` is not available in this build ({exc.name} is missing)",
                  file=sys.stderr)
            return EXIT_USAGE
        return int(module.main(argv[1:]) or 0)
    stopper = RunStop()
    return run_command(build_parser(), argv, lambda args: _run(args, stopper), signals=stopper)


def _run(args: argparse.Namespace, stopper: RunStop) -> int:
    """``run_stream.py`` once its command line is read (run_command turns errors into codes)."""
    if args.log_level != "ERROR":
        _show_notices()
    stopper.install()
    from streamer.config import load_config
    from streamer.core.errors import ConfigError

    if args.output_dir:
        return _run_streams(args, stopper)
    config = load_config(args.config, _overrides(args))
    source, output = config.source.uri, config.output.path
    if source is None:
        raise ConfigError("no source given: pass --source or set source.uri in --config")
    out = config.output
    if not (output or out.show or out.metrics or out.labels_dir or out.stats_jsonl):
        raise ConfigError("nothing to do: pass --output FILE, --show, --labels-out DIR, "
                          "--stats-jsonl FILE or --metrics FILE")
    photo_out = output if output and Path(output).suffix.lower() in IMAGE_OUTPUTS else None
    check_outputs(config, photo=photo_out is not None)
    if photo_out is not None:
        _parse_photo(config, str(source), photo_out)
        return EXIT_OK

    from streamer.core.metrics import format_summary
    from streamer.pipeline import Pipeline

    pipeline = Pipeline(config)
    stopper.target = pipeline
    if stopper.code is not None:  # Ctrl-C while starting up: nothing written yet
        return stopper.code
    summary = pipeline.run(on_estimate=_print_estimate)
    print(format_summary(summary))
    if output and config.output.segment_seconds:
        print(f"wrote segments to {Path(output).with_suffix('')}/")
    elif output:
        print(f"wrote {output}")
    skipped = summary["decode_errors"]
    damaged = summary["packets_corrupt"] + summary["frames_corrupt"]
    if skipped or damaged:
        parts = []
        if skipped:
            parts.append(f"{skipped} damaged packet(s) or frame(s) could not be decoded and "
                         "were skipped")
        if damaged:
            parts.append(f"{damaged} damaged packet(s) or frame(s) were decoded as far as "
                         "possible (the input is corrupt or cut short)")
        print(f"warning: {'; '.join(parts)}", file=sys.stderr)
    return stopper.code or EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
