"""The README's before/after picture: a parse shown on a later frame, as it was and propagated.

A clip is run as the pipeline runs it (HOG every ``--detector-every`` frames, the tracker
between), one frame is parsed, and the frame ``--skip`` frames later is drawn twice, side by
side: with that parse as it is (``none``) and carried by the default ``render.propagate``. The
per-frame parse of the later frame is computed too, and each panel's agreement with it (person
pixels) is printed and written under the panels. With RANDOM WEIGHTS the colours mean nothing;
what the picture shows is where they are.

Example:
    $ python benchmarks/temporal_figure.py --model /tmp/bench_model --engine onnxruntime \\
          --out docs/temporal_before_after.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from temporal_bench import MEDIA, person_agreement, read_frames  # noqa: E402

from streamer.config import RenderConfig  # noqa: E402
from streamer.core.types import Box  # noqa: E402
from streamer.parsing.parser import HumanParser, ParserOptions  # noqa: E402
from streamer.vision.detect import DetectorOptions, PersonFinder  # noqa: E402
from streamer.vision.render import OverlayStyle, Renderer  # noqa: E402
from streamer.vision.temporal import Carrier  # noqa: E402

FONT = cv2.FONT_HERSHEY_SIMPLEX
BOX = (255, 255, 0)  # the tracked boxes on the frame shown


def titled(panel: np.ndarray, lines: list[str], scale: float = 0.5) -> np.ndarray:
    """``panel`` under a dark strip holding ``lines`` of white text."""
    row = int(22 * scale / 0.5)
    strip = np.full((row * len(lines) + 6, panel.shape[1], 3), 24, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(strip, line, (6, row * (i + 1) - 4), FONT, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return np.vstack([strip, panel])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="M2FP model directory (single-person)")
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--clip", default="mmaction2_basketball.mp4")
    p.add_argument("--parse-frame", type=int, default=24, help="the frame that is parsed")
    p.add_argument("--skip", type=int, default=5, help="frames from the parse to the one shown")
    p.add_argument("--detector-every", type=int, default=6)
    p.add_argument("--zoom", type=float, default=3.0, help="enlarge the people's region")
    p.add_argument("--out", default="docs/temporal_before_after.png")
    args = p.parse_args(argv)
    parsed_at, shown_at = args.parse_frame, args.parse_frame + args.skip
    frames = read_frames(MEDIA / args.clip, shown_at + 1)
    finder = PersonFinder(DetectorOptions(type="hog", every=args.detector_every))
    parser = HumanParser(ParserOptions(model=args.model, engine=args.engine))
    boxes: list[Box] = []
    for i, image in enumerate(frames):
        persons = finder.find(image, i)
        if i == parsed_at:
            result = parser.parse(image, persons)
            velocities = {t.id: t.velocity.copy() for t in finder.tracker.tracks
                          if t.missed == 0}
        if i in (parsed_at, shown_at):
            boxes += [q.box for q in persons]
    truth = parser.parse(frames[-1], persons)
    default = RenderConfig().propagate
    renderer = Renderer(OverlayStyle(alpha=0.6, outlines=True))
    panels = []
    for method in ("none", default):
        carrier = Carrier(method)
        carrier.carry(frames[parsed_at], parsed_at, result, velocities=velocities)
        for i in range(parsed_at + 1, shown_at + 1):
            shown = carrier.carry(frames[i], i, result)
        agree, total = person_agreement(shown.labels, truth.labels)
        drawn = renderer.render(frames[-1], shown)
        for q in persons:  # where the tracker has the people now
            cv2.rectangle(drawn, (q.box.x0, q.box.y0), (q.box.x1 - 1, q.box.y1 - 1), BOX, 1)
        panels.append((method, drawn, agree / max(total, 1)))
    h, w = frames[0].shape[:2]
    if boxes:  # the people's region, grown by a fifth of its size
        x0, y0 = min(b.x0 for b in boxes), min(b.y0 for b in boxes)
        x1, y1 = max(b.x1 for b in boxes), max(b.y1 for b in boxes)
        gx, gy = (x1 - x0) // 5, (y1 - y0) // 5
        x0, y0, x1, y1 = max(0, x0 - gx), max(0, y0 - gy), min(w, x1 + gx), min(h, y1 + gy)
    else:
        x0, y0, x1, y1 = 0, 0, w, h
    out = []
    for method, image, agree in panels:
        view = cv2.resize(image[y0:y1, x0:x1], None, fx=args.zoom, fy=args.zoom,
                          interpolation=cv2.INTER_NEAREST)
        what = ("shown as parsed" if method == "none"
                else "moved with the tracked box" if method == "shift" else "warped by flow")
        name = f"{method} (default)" if method == default else method
        out.append(titled(view, [f"{name}: {what}",
                                 f"agrees with frame {shown_at}'s own parse: {agree:.0%}"]))
        print(f"{method}: agreement with the parse of frame {shown_at} {agree:.4f}")
    gap = np.full((out[0].shape[0], 8, 3), 255, np.uint8)
    figure = titled(np.hstack([out[0], gap, out[1]]),
                    [f"RANDOM WEIGHTS. {args.clip}: frame {parsed_at}'s parse shown on "
                     f"frame {shown_at}", "yellow: the tracked box on the frame shown"],
                    scale=0.55)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, cv2.cvtColor(figure, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
