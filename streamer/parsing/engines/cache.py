"""The on-disk cache of compiled engines: where it is, the keys of its entries, building an
entry once across threads and processes, the int8 models, and read-only mapped blobs.

Example:
    >>> path = default_cache_dir() / (cache_key(checkpoint, (512, 384), "openvino") + ".blob")
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import mmap
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from streamer.core.errors import ConfigError
from streamer.parsing.engines.base import AGREEMENT_GATE, ONNX_OPSET, NetSource, log, notice


def default_cache_dir() -> Path:
    """``$STREAMER_CACHE``, else ``$XDG_CACHE_HOME/streamer``, else ``~/.cache/streamer``."""
    if os.environ.get("STREAMER_CACHE"):
        return Path(os.environ["STREAMER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamer"



@contextlib.contextmanager
def building(path: Path) -> Iterator[None]:
    """The exclusive right to build the cache entry ``path``, across threads and processes.

    ``fcntl.flock`` on ``<path>.lock`` next to it: workers of one ``serve`` (threads, each its
    own open file, so they exclude each other too) and ``batch`` worker processes sharing the
    cache build an entry once; the others wait here and then find it built. The kernel drops
    the lock if its holder dies. Callers check again for the entry once they hold the lock.

    Example:
        >>> with building(blob):
        ...     if not blob.is_file():
        ...         compile_into(blob)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "ab") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another worker building %s", path.name)
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def written_through(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A unique temporary name next to ``path`` to write; moved onto ``path`` (``os.replace``,
    atomic) when the block ends, removed if it raises. Readers never see a partial file.

    Example:
        >>> with written_through(blob) as tmp:
        ...     tmp.write_bytes(data)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


#: Modules of streamer/m2fp that run on an engine's outputs, never inside the exported network:
#: a change to them leaves every compiled artefact valid.
OUTSIDE_THE_NETWORK = frozenset({"postprocess.py", "postprocess_numpy.py"})


@functools.cache
def code_fingerprint() -> str:
    """Hash of the network's source: a compiled artefact is stale once the code changes."""
    h = hashlib.sha256()
    for path in sorted((Path(__file__).parents[2] / "m2fp").glob("*.py")):
        if path.name not in OUTSIDE_THE_NETWORK:
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


@functools.cache
def torch_version() -> str:
    """``torch.__version__`` (``2.14.1+cu130``), read without importing torch when it is not
    loaded yet: a cache key must not cost the ~0.5 GB import on a run that needs no torch.

    Example:
        >>> torch_version()
        '2.14.1+cu130'
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    spec = importlib.util.find_spec("torch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            text = (Path(folder) / "version.py").read_text()
        except OSError:
            continue
        found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
        if found:
            return found.group(1)
    return importlib.metadata.version("torch")


def cache_key(checkpoint: Path, canvas_hw: tuple[int, int], engine: str, **options) -> str:
    stat = checkpoint.stat()
    memo = default_cache_dir() / "digests" / (
        hashlib.sha256(f"{checkpoint.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        .hexdigest()[:16])
    if memo.is_file():
        digest = memo.read_text().strip()
    else:
        digest = file_digest(checkpoint)
        with written_through(memo) as tmp:  # a reader at the same time sees all or nothing
            tmp.write_text(digest)
    opts = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    raw = (f"{digest}|{canvas_hw[0]}x{canvas_hw[1]}|torch={torch_version()}|"
           f"code={code_fingerprint()}|{engine}|{opts}")
    return f"{engine}-{canvas_hw[0]}x{canvas_hw[1]}-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"



def onnx_model(
    net: NetSource, canvas_hw: tuple[int, int], checkpoint: Path, cache_dir: Path,
    part: str = "whole",
) -> Path:
    """The cached fp32 ONNX export of ``part`` (dynamic batch), exported on first use.

    Example:
        >>> onnx_model(net, (512, 384), model_dir / "pytorch_model.pt", default_cache_dir())
        PosixPath('.../onnxruntime-512x384-....onnx')
    """
    parts = {} if part == "whole" else {"part": part}
    path = cache_dir / (cache_key(checkpoint, canvas_hw, "onnxruntime", opset=ONNX_OPSET,
                                  **parts) + ".onnx")
    if not path.is_file():
        with building(path):
            if not path.is_file():  # not exported by another worker while this one waited
                notice.info("exporting the model to ONNX at %dx%d (once; later runs load it "
                            "from the cache)...", canvas_hw[1], canvas_hw[0])
                started = time.perf_counter()
                from streamer.parsing.engines.export import export_onnx  # torch: only here

                export_onnx(net, canvas_hw, path, part)
                log.info("exported M2FP (%s) to ONNX at %s in %.1f s -> %s", part, canvas_hw,
                         time.perf_counter() - started, path)
    return path



def int8_model_path(engine: str, checkpoint: Path, canvas_hw: tuple[int, int],
                    cache_dir: Path) -> Path:
    """Where ``streamer.calibrate`` writes, and the engine looks for, the int8 model.

    ONNX Runtime reads a quantised ``.onnx``, OpenVINO an IR ``.xml`` (+ ``.bin``). A ``.json``
    beside it records the calibration (footage, crops, agreement with fp32 torch).

    Example:
        >>> int8_model_path("openvino", checkpoint, (512, 384), default_cache_dir()).suffix
        '.xml'
    """
    suffix = {"onnxruntime": ".onnx", "openvino": ".xml"}[engine]
    key = cache_key(checkpoint, canvas_hw, engine, precision="int8", opset=ONNX_OPSET)
    return cache_dir / f"{key}{suffix}"


def calibration_record(model_path: Path) -> dict:
    """The ``.json`` written beside an int8 model by ``streamer.calibrate`` ({} if none)."""
    try:
        return json.loads(model_path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def int8_model(engine: str, checkpoint: Path, canvas_hw: tuple[int, int],
                cache_dir: Path) -> Path:
    path = int8_model_path(engine, checkpoint, canvas_hw, cache_dir)
    if not path.is_file():
        raise ConfigError(
            f"parser.precision int8 with parser.engine {engine} needs a calibrated model for "
            f"{checkpoint.parent}, and there is none in {cache_dir}",
            hint=f"calibrate it once on your own footage: python -m streamer.calibrate "
                 f"--model {checkpoint.parent} --source VIDEO_OR_FOLDER --engine {engine}")
    agreement = calibration_record(path).get("agreement_vs_torch")
    if agreement is not None and agreement < AGREEMENT_GATE:
        log.warning("the int8 %s model agrees with fp32 torch on %.2f%% of held-out label "
                    "pixels, under the %.1f%% gate for a default: check it on your footage",
                    engine, 100 * agreement, 100 * AGREEMENT_GATE)
    return path


def map_read_only(path: Path) -> tuple[mmap.mmap, np.ndarray]:
    """``path`` mapped read-only, and a uint8 array over the mapping for ``ov.Tensor``.

    Importing a compiled blob from a mapping instead of bytes read into memory means it is
    never in memory twice: the CPU plugin reads some weights straight from the mapped pages
    (peak RSS while importing the full R101 in fp32: 1.46 GB from bytes, 1.17 GB mapped). The
    array claims to be writeable because ``ov.Tensor`` will not share a read-only one; the pages
    are not, so a write would fault at once instead of silently changing the model.
    """
    with open(path, "rb") as f:
        blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    address = np.frombuffer(blob, np.uint8).ctypes.data
    view = np.ctypeslib.as_array((ctypes.c_uint8 * len(blob)).from_address(address))
    return blob, view


def release_pages(blob: mmap.mmap) -> None:
    """Drop a read-only mapping's resident pages: those the model still reads come back from
    the page cache on first touch (about 130 of 300 MB for the full R101 in fp32), the rest
    were only read while importing. Steady RSS 1.24 GB -> 1.08 GB."""
    if hasattr(mmap, "MADV_DONTNEED"):
        blob.madvise(mmap.MADV_DONTNEED)
