"""Human parsing of frames: person crops or whole frames in, one ParseResult out.

With the single-person model each person crop is fitted onto the 512x384 canvas, the crops go
through the engine in batches, and each crop's label map is pasted back into one frame-sized
label map and person-id map (where crops overlap, the higher-scoring person wins). With the
multi-person model the whole frame is parsed at once.

Example:
    >>> parser = HumanParser(ParserOptions(model="models/single", engine="torch"))
    >>> result = parser.parse(image)            # the whole image as one person
    >>> result.labels.shape == image.shape[:2]
    True
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamer.core.errors import ConfigError, ModelError, SourceError
from streamer.core.labels import PERSON_ONLY
from streamer.core.types import Box, ParseResult, Person, unparseable_size
from streamer.m2fp import postprocess_numpy
from streamer.m2fp.checkpoint import CHECKPOINT_FILE, load_weights, resolve_model_dir
from streamer.m2fp.config import M2FPConfig, load_model_config
from streamer.m2fp.preprocess import (
    Placement,
    multi_canvas_hw,
    to_multi_canvas,
    to_single_canvas,
)
from streamer.parsing.engines import Engine, check_engine_options, create_engine
from streamer.vision.reuse import CropMemory

if TYPE_CHECKING:  # torch and the network are imported only where they run (see HumanParser)
    from streamer.m2fp.model import M2FP

log = logging.getLogger("streamer.parsing.parser")


@dataclass
class ParserOptions:
    """How the network runs (the ``parser`` section of the configuration).

    ``engine`` and ``precision`` pick the runtime (see streamer.parsing.engines for the pairs that
    exist); ``perf_hint`` is OpenVINO's latency or throughput hint; ``threads`` 0 uses all
    cores. The defaults are the fastest pair that agreed with fp32 torch on >= 99.5% of label
    pixels in benchmarks/parse_bench.py on a 2-core AVX-512 CPU; ``python -m streamer.calibrate``
    and the benchmark print the pair to use on another machine.

    Example:
        >>> ParserOptions().engine, ParserOptions().precision
        ('openvino', 'fp32')
    """

    model: str = "damo/cv_resnet101_image-single-human-parsing"
    engine: str = "openvino"
    precision: str = "fp32"
    perf_hint: str = "latency"
    threads: int = 0  # 0 = all cores
    batch_size: int = 4
    cache_dir: str | None = None
    # People shorter than this (pixels) are not parsed: too few pixels for parts to mean
    # anything. Their box is marked as "person" (PERSON_ONLY) instead. 0 parses everyone.
    min_person_height: int = 40

    def __post_init__(self) -> None:
        check_engine_options(self.engine, self.precision, self.perf_hint)
        if self.batch_size < 1:
            raise ConfigError(f"parser.batch_size must be at least 1, not {self.batch_size}")
        if self.threads < 0:
            raise ConfigError(f"parser.threads must be 0 (all cores) or more, not {self.threads}")
        if self.min_person_height < 0:
            raise ConfigError(
                f"parser.min_person_height must be 0 or more, not {self.min_person_height}")


def load_network(model_dir: Path, cfg: M2FPConfig) -> M2FP:
    """The PyTorch network of ``cfg`` with the checkpoint in ``model_dir`` (strict checks)."""
    from streamer.m2fp.model import M2FP

    net = M2FP(cfg).eval()
    load_weights(net, model_dir)
    return net


class HumanParser:
    """Runs M2FP through one engine.

    Thread safety: with OpenVINO's throughput hint, :attr:`concurrency` threads can parse at
    once on the one compiled network (an infer request each; more wait for a free one). Every
    other engine, and the multi-person model, has ``concurrency`` 1: use one parser per thread.

    ``HumanParser.built`` and ``HumanParser.engines_built`` count, for the whole process, the
    parsers constructed and the engines (compiled networks) they created: what tells how many
    models a process really holds.

    With the single-person model and a compiled engine already in the cache (OpenVINO, the
    default, or ONNX Runtime), a parser never imports torch: the engine needs no network and
    its outputs become label maps in numpy (streamer.m2fp.postprocess_numpy). The torch
    engines, the multi-person model (whose canvas follows the frame size, so it keeps the
    network) and building or exporting an engine use torch, and the torch engines keep torch's
    post-processing, ModelScope's own.
    """

    built = 0
    engines_built = 0

    def __init__(self, options: ParserOptions) -> None:
        HumanParser.built += 1
        self.options = options
        self.model_dir = resolve_model_dir(options.model)
        self.cfg = load_model_config(self.model_dir)
        # Every engine (compiled ones too: their cache is keyed by the checkpoint's hash)
        # needs the checkpoint; say so here rather than fail deep inside an exporter.
        if not (self.model_dir / CHECKPOINT_FILE).is_file():
            raise ModelError(f"no {CHECKPOINT_FILE} in model directory {self.model_dir}",
                             hint="pass a directory holding configuration.json and "
                             f"{CHECKPOINT_FILE} (python -m streamer.testing.make_model makes "
                             "a random-weight one for trying things out)")
        self.threads = options.threads or os.cpu_count() or 1
        self.torch_postprocess = options.engine in ("torch", "torchscript")
        self._net: M2FP | None = None
        self._engines: dict[tuple[int, int], Engine] = {}
        self._engine_lock = threading.Lock()
        if self.single_person:
            # One canvas: its engine now. A compiled engine found in the cache (keyed by the
            # checkpoint's hash) needs no PyTorch network at all, which saves its memory.
            self.warm_up()
        else:
            self.net  # noqa: B018  (the canvas follows the frame size: keep the network)

    @property
    def net(self) -> M2FP:
        """The PyTorch network, loaded (with strict checks) on first use."""
        if self._net is None:
            self._net = load_network(self.model_dir, self.cfg)
        return self._net

    @property
    def classes(self) -> tuple[str, ...]:
        return self.cfg.classes

    @property
    def single_person(self) -> bool:
        return self.cfg.single_human

    @property
    def concurrency(self) -> int:
        """How many parses can run at once on this parser's one engine (see the class doc).

        Example:
            >>> HumanParser(ParserOptions(model=d, perf_hint="throughput")).concurrency
            2
        """
        if not self.single_person:
            return 1
        return int(getattr(self.engine_for(self.cfg.single_canvas_hw), "concurrency", 1))

    def engine_for(self, canvas_hw: tuple[int, int]) -> Engine:
        """The engine for one canvas size, created (or loaded from the cache) on first use."""
        engine = self._engines.get(canvas_hw)
        if engine is not None:
            return engine
        with self._engine_lock:
            return self._engine_locked(canvas_hw)

    def _engine_locked(self, canvas_hw: tuple[int, int]) -> Engine:
        engine = self._engines.get(canvas_hw)
        if engine is None:
            engine = create_engine(
                self.options.engine, lambda: self.net, canvas_hw,
                self.model_dir / CHECKPOINT_FILE, threads=self.threads,
                cache_dir=Path(self.options.cache_dir) if self.options.cache_dir else None,
                precision=self.options.precision, perf_hint=self.options.perf_hint,
            )
            self._engines[canvas_hw] = engine
            HumanParser.engines_built += 1
            if self.single_person and self.options.engine != "torch":
                self._net = None  # the engine holds its own copy of the weights
        return engine

    def warm_up(self, frame_hw: tuple[int, int] | None = None) -> None:
        """Build (or load) the engine ahead of the first frame, so it is not timed as a parse."""
        if self.single_person:
            self.engine_for(self.cfg.single_canvas_hw)
        elif frame_hw is not None:
            self.engine_for(multi_canvas_hw(*frame_hw))

    def parse(
        self,
        image: np.ndarray,
        persons: list[Person] | None = None,
        *,
        memory: CropMemory | None = None,
    ) -> ParseResult:
        """Parse one RGB frame; ``persons`` are the regions to parse with the single model.

        With the single-person model and no ``persons``, the whole image is one person. The
        multi-person model always parses the whole frame and finds people itself. With a
        ``memory``, a tracked person whose crop barely changed since their last parse keeps
        that parse instead of being parsed again.
        """
        reason = unparseable_size(*image.shape[:2])
        if reason is not None:  # it would shrink to nothing on the model's canvas
            raise SourceError(f"image of {reason}", hint="pass a larger image")
        if not self.single_person:
            return self._parse_multi(image)
        h, w = image.shape[:2]
        if persons is None:
            persons = [Person(1, 1.0, Box(0, 0, w, h))]
        return self._parse_crops(image, persons, memory)

    def _parse_crops(
        self, image: np.ndarray, persons: list[Person], memory: CropMemory | None = None,
    ) -> ParseResult:
        h, w = image.shape[:2]
        labels = np.zeros((h, w), np.uint8)
        instances = np.zeros((h, w), np.uint16)
        visible = [p for p in persons if p.box.width > 0 and p.box.height > 0]
        small = [p for p in visible if p.box.height < self.options.min_person_height]
        crops = [p for p in visible if p.box.height >= self.options.min_person_height]
        for p in small:
            labels[p.box.y0:p.box.y1, p.box.x0:p.box.x1] = PERSON_ONLY
            instances[p.box.y0:p.box.y1, p.box.x0:p.box.x1] = p.id
        pixels = [image[p.box.y0:p.box.y1, p.box.x0:p.box.x1] for p in crops]
        maps: list[np.ndarray | None] = (
            [memory.recall(p, c) for p, c in zip(crops, pixels, strict=True)] if memory is not None
            else [None] * len(crops))
        todo = [i for i, m in enumerate(maps) if m is None]
        fresh = self.parse_crops([pixels[i] for i in todo])
        for i, parsed in zip(todo, fresh, strict=True):
            maps[i] = parsed
            if memory is not None:
                memory.remember(crops[i], pixels[i], parsed)
        # Lowest score first, so a higher-scoring person overwrites where crops overlap.
        for i in sorted(range(len(crops)), key=lambda i: crops[i].score):
            b = crops[i].box
            crop_labels = maps[i]
            assert crop_labels is not None
            fg = crop_labels != 0
            labels[b.y0:b.y1, b.x0:b.x1][fg] = crop_labels[fg]
            instances[b.y0:b.y1, b.x0:b.x1][fg] = crops[i].id
        return ParseResult(labels, self.classes, instances, list(persons))

    def parse_crops(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """Label maps (uint8, each the size of its crop) for person crops, batched."""
        canvas_hw = self.cfg.single_canvas_hw
        engine = self.engine_for(canvas_hw)
        out: list[np.ndarray] = []
        bs = self.options.batch_size
        for start in range(0, len(crops), bs):
            chunk = crops[start:start + bs]
            batch = np.empty((len(chunk), *canvas_hw, 3), np.uint8)
            placements: list[Placement] = []
            for j, crop in enumerate(chunk):
                placements.append(to_single_canvas(np.ascontiguousarray(crop), canvas_hw,
                                                   out=batch[j])[1])
            tensor = batch.transpose(0, 3, 1, 2).astype(np.float32)
            logits, masks = engine(tensor)
            for j, placement in enumerate(placements):
                out.append(self.crop_labels(logits[j], masks[j], placement))
        return out

    def crop_labels(self, logits: np.ndarray, masks: np.ndarray, placement: Placement
                    ) -> np.ndarray:
        """One crop's label map from its engine outputs: torch's post-processing for the torch
        engines (or with ``torch_postprocess`` set), numpy's otherwise (>= 99.9% the same
        label pixels, tests/test_torch_free.py)."""
        canvas_hw = self.cfg.single_canvas_hw
        if not self.torch_postprocess:
            return postprocess_numpy.semantic_labels(logits, masks, canvas_hw, placement.box,
                                                     placement.source_hw)
        import torch

        from streamer.m2fp.postprocess import semantic_labels

        return semantic_labels(torch.from_numpy(logits).float(), torch.from_numpy(masks).float(),
                               canvas_hw, placement.box, placement.source_hw)

    def _parse_multi(self, image: np.ndarray) -> ParseResult:
        canvas, placement = to_multi_canvas(image)
        canvas_hw = canvas.shape[:2]
        engine = self.engine_for(canvas_hw)
        logits, masks = engine(canvas.transpose(2, 0, 1)[None].copy())
        # The multi-person model keeps its network (and torch) loaded: torch post-processing.
        import torch

        from streamer.m2fp.postprocess import paint_instances, person_boxes, select_instances

        parts, humans = select_instances(torch.from_numpy(logits[0]).float(),
                                         torch.from_numpy(masks[0]).float(),
                                         self.cfg.num_parsing)
        place = (canvas_hw, placement.box, placement.source_hw)
        labels = paint_instances(parts, parts.labels, *place)
        # Humans over the model's instance threshold are people; ids follow score order.
        humans = humans.subset(humans.scores >= self.cfg.parsing_ins_score_thr)
        ids = torch.arange(1, len(humans) + 1)
        id_map = paint_instances(humans, ids, *place, dtype=np.uint16)
        persons = [Person(pid, score, Box(*box))
                   for pid, score, box in person_boxes(id_map, humans.scores.tolist())]
        return ParseResult(labels, self.classes[: self.cfg.num_parsing], id_map, persons)

