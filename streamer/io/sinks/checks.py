"""Checks run before any work: an output path can be written, a label folder can be made.

Also the one-line error every file sink raises when writing fails (:func:`write_failed`).

Example:
    >>> check_output_path("out/parsed.mp4", suffixes=VIDEO_SUFFIXES)
    PosixPath('out/parsed.mp4')
"""

from __future__ import annotations

import errno
import os
from collections.abc import Collection
from pathlib import Path

from streamer.core.errors import SinkError

__all__ = ["VIDEO_SUFFIXES", "check_output_path", "file_size_limit", "prepare_labels_dir",
           "write_failed"]


VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".m4v"})


def check_output_path(
    path: str | os.PathLike[str], *, suffixes: Collection[str] | None = None
) -> Path:
    """Check that ``path`` can be created or overwritten; return it as a :class:`Path`.

    Raises :class:`SinkError` with one line if the folder is missing or not writable, the path
    is a folder, or (when ``suffixes`` is given) the suffix is not one of them. Call it before
    any slow work, so a typo in ``--output`` fails in milliseconds rather than after an hour.

    Example:
        >>> check_output_path("/tmp/out.mp4", suffixes=VIDEO_SUFFIXES)
        PosixPath('/tmp/out.mp4')
        >>> check_output_path("/no/such/dir/out.mp4")
        Traceback (most recent call last):
        streamer.core.errors.SinkError: output folder /no/such/dir does not exist; create it ...
    """
    path = Path(path)
    folder = path.parent
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise SinkError(
            f"cannot write {path}: unsupported file type {path.suffix or '(none)'!r}",
            hint=f"use one of {', '.join(sorted(suffixes))}",
        )
    if path.is_dir():
        raise SinkError(f"output {path} is a folder", hint="give a file name inside it")
    if not folder.exists():
        raise SinkError(
            f"output folder {folder} does not exist",
            hint="create it first (mkdir -p) or choose another output path",
        )
    if not folder.is_dir():
        raise SinkError(f"output folder {folder} is not a folder", hint="choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SinkError(f"no permission to write in {folder}", hint="choose a writable folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise SinkError(f"no permission to overwrite {path}", hint="choose another file name")
    _probe_write(path)
    return path


def prepare_labels_dir(directory: str | os.PathLike[str]) -> Path:
    """Create the label-map folder (parents too) and prove a file can be written in it.

    Raises :class:`SinkError` with one line on a read-only mount, under /proc or /sys, or
    when the path is a file. Call it before any slow work, as :func:`check_output_path`.

    Example:
        >>> prepare_labels_dir("/proc/labels")
        Traceback (most recent call last):
        streamer.core.errors.SinkError: cannot create the label folder /proc/labels (...); ...
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise SinkError(f"label folder {path} is a file", hint="give a folder for --labels-out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = " ".join(str(exc.strerror or exc).split())
        raise SinkError(f"cannot create the label folder {path} ({reason})",
                        hint="choose a writable folder for --labels-out") from None
    check_output_path(path / "000000.png")
    return path


def _probe_write(path: Path) -> None:
    """Create (then remove) ``path``, or open it for appending, to prove it can be written.

    ``os.access`` says yes to root almost everywhere, also where nothing can be created (/proc,
    /sys) or the file system is mounted read-only; only trying tells. Nothing is truncated.
    """
    try:
        if path.exists():
            if path.is_file():
                with open(path, "ab"):
                    pass
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.unlink(path)
    except OSError as exc:
        reason = " ".join(str(exc.strerror or exc).split())
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise write_failed(path, exc) from None
        what = "no permission to write in" if exc.errno in (
            errno.EACCES, errno.EPERM, errno.EROFS) else "cannot create files in"
        raise SinkError(f"{what} {path.parent} ({reason})",
                        hint="choose a writable folder") from None


def file_size_limit() -> int | None:
    """The largest file this process may write (RLIMIT_FSIZE, ``ulimit -f``), if limited."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY or soft < 0 else int(soft)


def write_failed(path: Path, exc: BaseException) -> SinkError:
    """The one-line :class:`SinkError` for an OS/FFmpeg error while writing ``path``."""
    code = getattr(exc, "errno", None)
    reason = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "free some disk space or write to another disk"
    else:
        hint = "check the disk and the output path"
    return SinkError(f"cannot write {path}: {reason}", hint=hint)
