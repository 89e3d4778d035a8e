"""Per-pixel label maps as PNG or NPZ files, and reading them back: :class:`LabelMapSink`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from streamer.core.errors import SinkError
from streamer.core.types import Output
from streamer.io.sinks.base import FinalisingSink
from streamer.io.sinks.checks import check_output_path, write_failed

__all__ = ["LabelMapSink", "load_label_maps"]


class LabelMapSink(FinalisingSink):
    """Saves per-pixel label maps: one PNG per frame, or NPZ files of ``chunk`` frames.

    The folder is created if missing (its parent must exist).
    PNGs are 8-bit grey images named by frame index (``000042.png``), or after the source
    image when :meth:`write` is given its ``name`` (``photo_0007.png``); each NPZ holds arrays
    keyed by 6-digit frame index (``labels_000000-000099.npz``). :func:`load_label_maps`
    reads either back. With ``instances``, the person-id map (0 = nobody, else the person's
    track id, as in the stats JSONL) is written too: ``000042_instances.png`` (16-bit) or
    ``instances_000000-000099.npz``; ``load_label_maps(folder, instances=True)`` reads it.

    Example:
        >>> with LabelMapSink("out/labels", fmt="npz", chunk=50) as sink:
        ...     sink.write(result.labels, frame.index)
        >>> dict(load_label_maps("out/labels"))[frame.index].dtype
        dtype('uint8')
    """

    FORMATS = ("png", "npz")

    def __init__(self, directory: str | os.PathLike[str], fmt: str = "png", chunk: int = 100,
                 instances: bool = False):
        if fmt not in self.FORMATS:
            raise SinkError(f"label map format must be png or npz, not {fmt!r}")
        if chunk < 1:
            raise SinkError(f"label map chunk must be at least 1, not {chunk}")
        self.directory = Path(directory)
        if self.directory.is_dir():
            check_output_path(self.directory / "000000.png")
        else:  # create the folder itself; its parent must exist, as for any output
            check_output_path(self.directory)
            try:
                self.directory.mkdir()
            except OSError as exc:
                raise write_failed(self.directory, exc) from None
        self.fmt = fmt
        self.chunk = chunk
        self.instances = instances
        self.files_written = 0
        self._pending: dict[str, np.ndarray] = {}
        self._names: set[str] = set()
        self._pending_instances: dict[str, np.ndarray] = {}
        self._closed = False

    @staticmethod
    def _as_uint8(labels: np.ndarray) -> np.ndarray:
        if labels.ndim != 2:
            raise ValueError(f"a label map must be 2-D, got shape {labels.shape}")
        if labels.dtype == np.uint8:
            return labels
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError("label ids must lie in 0..255 to be saved as uint8")
        return labels.astype(np.uint8)

    def write(self, item: Output | np.ndarray, index: int | None = None,
              instances: np.ndarray | None = None, name: str | None = None) -> None:
        """Save the label map of ``item.result`` (no result: all background) under its frame's
        index and name; or a label map given alone, of frame ``index``, with ``instances``
        and ``name``.

        A label map is 2-D, ids 0..255; with ``instances`` on, its person-id map is saved too
        (``None``: nobody, all zeros). A PNG is named ``name`` (the source image's stem, so
        maps pair with their images) when given, else after the index.
        """
        if isinstance(item, Output):
            result, frame = item.result, item.frame
            labels = (result.labels if result is not None
                      else np.zeros(frame.image.shape[:2], np.uint8))
            index, name = frame.index, frame.name
            instances = result.instances if result is not None else None
        elif index is None:
            raise TypeError("LabelMapSink.write(labels) needs the frame index")
        else:
            labels = item
        labels = self._as_uint8(labels)
        ids = None
        if self.instances:
            ids = (np.zeros(labels.shape, np.uint16) if instances is None
                   else np.asarray(instances).astype(np.uint16))
        if self.fmt == "png":
            if name and name in self._names:  # a.jpg and a.png in one folder
                name = f"{name}_{index:06d}"
            if name:
                self._names.add(name)
            stem = name if name else f"{index:06d}"
            self._png(self.directory / f"{stem}.png", labels)
            if ids is not None:
                self._png(self.directory / f"{stem}_instances.png", ids)
            return
        self._pending[f"{index:06d}"] = labels
        if ids is not None:
            self._pending_instances[f"{index:06d}"] = ids
        if len(self._pending) >= self.chunk:
            self._flush()

    def _png(self, path: Path, image: np.ndarray) -> None:
        import cv2

        try:
            ok = cv2.imwrite(str(path), image)
        except cv2.error as exc:
            raise write_failed(path, exc) from None
        if not ok:
            raise SinkError(f"cannot write {path}", hint="check free disk space")
        self.files_written += 1

    def _flush(self) -> None:
        for prefix, pending in (("labels", self._pending),
                                ("instances", self._pending_instances)):
            if not pending:
                continue
            keys = sorted(pending)
            path = self.directory / f"{prefix}_{keys[0]}-{keys[-1]}.npz"
            try:
                np.savez_compressed(path, **pending)  # type: ignore[arg-type]  # keys: indices
            except OSError as exc:
                raise write_failed(path, exc) from None
            finally:
                pending.clear()
            self.files_written += 1

    def close(self) -> None:
        """Write the last, partial NPZ chunk."""
        if not self._closed:
            self._closed = True
            self._flush()


def load_label_maps(directory: str | os.PathLike[str],
                    instances: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame_index, labels)`` from a :class:`LabelMapSink` folder, in index order
    (with ``instances``, the person-id maps instead).

    Example:
        >>> for index, labels in load_label_maps("out/labels"):
        ...     print(index, labels.shape)
    """
    import cv2

    directory = Path(directory)
    suffix, prefix = ("_instances", "instances") if instances else ("", "labels")
    found: list[tuple[int, Path, str | None]] = []
    for path in directory.glob("*.png"):
        stem = path.stem[:len(path.stem) - len(suffix)] if suffix else path.stem
        if (not suffix or path.stem.endswith(suffix)) and stem.isdigit():
            found.append((int(stem), path, None))
    for path in directory.glob(f"{prefix}_*.npz"):
        with np.load(path) as data:
            found.extend((int(key), path, key) for key in data.files)
    for index, path, key in sorted(found, key=lambda item: item[0]):
        if key is None:
            labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if labels is None:
                raise SinkError(f"cannot read the label map {path}")
            yield index, labels
        else:
            with np.load(path) as data:
                yield index, data[key]
