"""``run_stream.py``: parse people in a video, stream, webcam or photo.

Exit codes: 0 done (possibly with warnings), 1 a run-time problem (unreadable input, disk
full), 2 a usage or configuration error, 130 / 143 stopped by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from streamer.core.heap import return_large_buffers

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
IMAGE_OUTPUTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

EPILOG = """\
subcommands:
  run_stream.py eval --images DIR --labels DIR [--model ...]   accuracy against ground truth
  run_stream.py serve [--host H --port P]                      web UI and REST API
  run_stream.py batch --source 'videos/*.mp4' --output-dir out/ [--ray ADDRESS]
                                                               many files, or many streams

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
    p.add_argument("--model", help="M2FP model directory or ModelScope id (parser.model)")
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override any config key, e.g. parser.engine=torch")
    p.add_argument("--engine", choices=("torch", "torchscript", "onnxruntime", "openvino"),
                   help="inference engine (parser.engine)")
    p.add_argument("--detector", choices=("hog", "torchvision", "full"),
                   help="person detector (detector.type); full parses whole frames")
    p.add_argument("--threads", type=int, help="threads for inference (parser.threads; "
                   "0 = all cores)")
    p.add_argument("--parse-every", type=int, metavar="N",
                   help="parse one frame in N, reuse the result between (parse.every)")
    p.add_argument("--realtime", action="store_true",
                   help="pace a file as if it were live (tests the live frame-skipping)")
    p.add_argument("--metrics", help="write the run summary as JSON to this file")
    p.add_argument("--output-dir", help="run every stream of --config's sources: list in this "
                   "process on one model, writing DIR/NAME.mkv each (see docs/live.md)")
    p.add_argument("--labels-out", help="write one label-map PNG per frame to this folder")
    p.add_argument("--stats-jsonl", help="write per-frame stats as JSON lines to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="WARNING",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default WARNING")
    return p


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    simple = {
        "source.uri": args.source, "output.path": args.output, "parser.model": args.model,
        "parser.engine": args.engine, "detector.type": args.detector,
        "parser.threads": args.threads, "parse.every": args.parse_every,
        "output.metrics": args.metrics, "output.labels_dir": args.labels_out,
        "output.stats_jsonl": args.stats_jsonl,
    }
    for key, value in simple.items():
        if value is not None:
            out.append(f"{key}={_yaml_str(value)}")
    if args.show:
        out.append("output.show=true")
    if args.realtime:
        out.append("source.realtime=true")
    if args.no_progress:
        out.append("output.progress=false")
    return out


def _yaml_str(value: Any) -> str:
    # Quote strings so that YAML keeps "0" or "yes" in a path as text.
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


class SignalStop:
    """First SIGINT/SIGTERM: stop gracefully (finalise outputs). Second: exit at once."""

    def __init__(self) -> None:
        self.code: int | None = None
        self.target: Any = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        code = 128 + signum
        if self.code is not None:
            os._exit(code)
        self.code = code
        print(f"\nstopping ({signal.Signals(signum).name}); finishing the output, "
              "press Ctrl-C again to quit at once", file=sys.stderr, flush=True)
        if self.target is not None:
            self.target.stop()

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


def _parse_photo(config: Any, source: str, output: str) -> None:
    import numpy as np
    from PIL import Image

    from streamer.io.sources import open_source
    from streamer.parsing.parser import HumanParser
    from streamer.vision.render import Renderer

    with open_source(source, config.source) as images:
        frame = next(iter(images), None)
    if frame is None:
        from streamer.core.errors import SourceError

        raise SourceError(f"no readable image in {source}")
    parser = HumanParser(config.parser)
    if config.detector.type == "full" or not parser.single_person:
        result = parser.parse(frame.image)
    else:
        from streamer.vision.detect import PersonFinder

        persons = PersonFinder(config.detector).find(frame.image, 0)
        # A photo with no detected person is parsed whole, as one person.
        result = parser.parse(frame.image, persons or None)
    overlay = Renderer(config.render).render(frame.image, result)
    Image.fromarray(np.ascontiguousarray(overlay)).save(output)
    counts = result.class_pixel_counts()
    counts.pop("Background", None)
    classes = ", ".join(f"{name} {pixels}" for name, pixels in counts.items()) or "none"
    print(f"wrote {output}: {len(result.persons)} person(s); pixels per class: {classes}")


def _run_streams(args: argparse.Namespace, stopper: SignalStop) -> int:
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
    "serve": "streamer.serve.service",
    "batch": "streamer.batch.runner",
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    stopper = SignalStop()
    stopper.install()
    from streamer.core.errors import ConfigError, StreamerError

    try:
        from streamer.config import load_config

        if args.output_dir:
            return _run_streams(args, stopper)
        config = load_config(args.config, _overrides(args))
        source, output = config.source.uri, config.output.path
        if source is None:
            raise ConfigError("no source given: pass --source or set source.uri in --config")
        if not output and not config.output.show and not config.output.metrics:
            raise ConfigError("nothing to do: pass --output FILE, --show or --metrics FILE")
        from streamer.io.sinks import VIDEO_SUFFIXES, check_output_path

        for extra in (config.output.metrics, config.output.stats_jsonl):
            if extra:
                check_output_path(extra)
        if output and Path(output).suffix.lower() in IMAGE_OUTPUTS:
            check_output_path(output, suffixes=IMAGE_OUTPUTS)
            _parse_photo(config, str(source), output)
            return EXIT_OK
        if output:
            check_output_path(output, suffixes=VIDEO_SUFFIXES)
        if config.output.labels_dir:
            Path(config.output.labels_dir).mkdir(parents=True, exist_ok=True)

        from streamer.core.metrics import format_summary
        from streamer.pipeline import Pipeline

        pipeline = Pipeline(config)
        stopper.target = pipeline
        if stopper.code is not None:  # Ctrl-C while starting up: nothing written yet
            return stopper.code
        summary = pipeline.run()
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
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StreamerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return stopper.code or EXIT_FAILED
    except KeyboardInterrupt:
        return stopper.code or 130
    return stopper.code or EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
