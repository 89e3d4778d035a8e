"""Guards for output paths that would destroy an input: same string, same inode, or a link.

An output that is the input (``--output clip.mp4`` for ``--source clip.mp4``, a symlink or a
hard link to it, or ``./clip.mp4``) would be truncated before the first frame is read. These
checks run before any work and raise :class:`~streamer.core.errors.ConfigError` with one line.

Example:
    >>> inputs = input_files("clip.mp4")
    >>> check_not_input("out.mp4", inputs, "--output")       # fine
    >>> check_not_input("./clip.mp4", inputs, "--output")
    Traceback (most recent call last):
    streamer.core.errors.ConfigError: --output ./clip.mp4 is the input clip.mp4; ...
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from streamer.core.errors import ConfigError
from streamer.io.sources import IMAGE_SUFFIXES

__all__ = ["check_labels_dir", "check_not_input", "input_files", "same_file"]

def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one existing file (same device and inode; links followed).

    Example:
        >>> same_file("clip.mp4", "./clip.mp4"), same_file("clip.mp4", "missing.mp4")
        (True, False)
    """
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def input_files(uri: str | os.PathLike[str] | None) -> list[Path]:
    """The local files a source reads: the file itself, or a folder's images ([] for URLs).

    Example:
        >>> [p.name for p in input_files("photos/")]
        ['a.jpg', 'b.png']
    """
    if uri is None:
        return []
    text = os.fspath(uri).strip()
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text or text.isdigit():
        return []
    path = Path(text)
    if path.is_dir():
        try:
            return [p for p in path.iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        except OSError:
            return []
    return [path] if path.is_file() else []


def check_not_input(output: str | os.PathLike[str] | None, inputs: Iterable[Path],
                    option: str) -> None:
    """Raise :class:`ConfigError` when ``output`` is one of ``inputs`` (by inode too)."""
    if not output:
        return
    out = Path(output)
    try:
        st = os.stat(out)  # links followed: a symlink or hard link to the input is the input
        identity: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except (OSError, ValueError):
        identity = None
    for source in inputs:
        if out == source or (identity is not None and _identity(source) == identity):
            raise ConfigError(
                f"{option} {out} is the input {source}; writing it would destroy "
                "the input",
                hint=f"choose another {option} path")


def check_labels_dir(directory: str | os.PathLike[str] | None,
                     source: str | os.PathLike[str] | None, inputs: Iterable[Path]) -> None:
    """Raise :class:`ConfigError` when label maps written to ``directory`` would overwrite an
    input: ``directory`` is the input itself, the image folder being read, or the folder of an
    input image (label maps of images are named after them: ``photo.png``)."""
    if not directory:
        return
    folder = Path(directory)
    src = Path(os.fspath(source)) if source is not None else None
    inputs = list(inputs)
    if src is not None and (folder == src or same_file(folder, src)):
        what = "the image folder being read" if src.is_dir() else "the input"
        raise ConfigError(
            f"--labels-out {folder} is {what}; label maps would overwrite or mix with the "
            "input images", hint="choose another --labels-out folder")
    if not folder.is_dir():
        return
    for path in inputs:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            check_not_input(folder / f"{path.stem}.png", [path], "--labels-out")
