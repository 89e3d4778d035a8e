"""Checks run before any work: an output path can be written, a label folder can be made.

Also the one-line error every file sink raises when writing fails (:func:`write_failed`).

Example:
    >>> check_output_path("out/parsed.mp4", suffixes=VIDEO_SUFFIXES)
    PosixPath('out/parsed.mp4')
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Collection
from pathlib import Path
from urllib.parse import urlsplit

from streamer.core.errors import ConfigError, SinkError
from streamer.io.sources.base import redact_url

__all__ = ["PUBLISH_SCHEMES", "VIDEO_SUFFIXES", "check_output_path", "check_publish_url",
           "file_size_limit", "prepare_labels_dir", "url_scheme", "write_failed"]


VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".m4v"})
#: URL schemes a video output can publish to (streamer.io.sinks.publish).
PUBLISH_SCHEMES = ("rtsp",)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(path: str | os.PathLike[str]) -> str | None:
    """The lower-case scheme of a URL (``rtsp://...`` -> ``rtsp``), ``None`` for a file path.

    Example:
        >>> url_scheme("RTSP://cam/live"), url_scheme("out/parsed.mp4")
        ('rtsp', None)
    """
    match = _SCHEME.match(os.fspath(path).strip())
    return match.group(1).lower() if match else None


def check_publish_url(url: str) -> str:
    """Check that ``url`` is an ``rtsp://HOST[:PORT]/PATH`` to publish to; return it.

    Raises :class:`ConfigError` with one line for another scheme (``rtsps``, ``rtmp``, ...),
    a missing host or path, or a bad port.

    Example:
        >>> check_publish_url("rtsp://127.0.0.1:8554/parsed")
        'rtsp://127.0.0.1:8554/parsed'
        >>> check_publish_url("rtsps://nvr.local/parsed")
        Traceback (most recent call last):
        streamer.core.errors.ConfigError: cannot publish to rtsps://nvr.local/parsed: ...
    """
    url = url.strip()
    shown = redact_url(url)
    scheme = url_scheme(url)
    form = "rtsp://HOST:PORT/PATH"
    if scheme not in PUBLISH_SCHEMES:
        raise ConfigError(f"cannot publish to {shown}: only rtsp:// outputs are supported, "
                          f"not {scheme}://", hint=f"use {form} or a video file path")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(f"cannot publish to {shown}: {exc}", hint=f"use {form}") from None
    if not parts.hostname:
        raise ConfigError(f"cannot publish to {shown}: no host", hint=f"use {form}")
    if parts.path.strip("/") == "":
        raise ConfigError(f"cannot publish to {shown}: no path (the server's mount)",
                          hint=f"use {form}, e.g. rtsp://127.0.0.1:8554/parsed")
    return url


def check_output_path(
    path: str | os.PathLike[str], *, suffixes: Collection[str] | None = None
) -> Path:
    """Check that ``path`` can be created or overwritten; return it as a :class:`Path`.

    Raises :class:`SinkError` with one line if the folder is missing or not writable, the path
    is a folder, or (when ``suffixes`` is given) the suffix is not one of them. Where
    ``suffixes`` holds the video ones, an ``rtsp://`` URL is accepted too (checked by
    :func:`check_publish_url`; the Path returned is then just the URL). Call it before any
    slow work, so a typo in ``--output`` fails in milliseconds rather than after an hour.

    Example:
        >>> check_output_path("/tmp/out.mp4", suffixes=VIDEO_SUFFIXES)
        PosixPath('/tmp/out.mp4')
        >>> check_output_path("/no/such/dir/out.mp4")
        Traceback (most recent call last):
        streamer.core.errors.SinkError: output folder /no/such/dir does not exist; create it ...
    """
    scheme = url_scheme(path)
    if scheme is not None:
        # A video output may be a URL to publish to; any other output is a file.
        if suffixes is None or not VIDEO_SUFFIXES & set(suffixes):
            raise SinkError(f"cannot write {redact_url(os.fspath(path))}: this output must be "
                            "a file path, not a URL", hint="give a file path")
        check_publish_url(os.fspath(path))
        return Path(path)
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
