"""Before a Ray batch starts: does every node see the inputs, the output folder and the model?

:func:`check_host` runs on each node (as a zero-CPU Ray task) and returns one line per kind of
problem; the driver raises :class:`HostCheckError` with all of them.

Example:
    >>> check_host(HostNeeds([("/data/a.mp4", 1234)], "/out", ".check", "/models/m"), "10.0.0.7")
    []
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from streamer.core.errors import ConfigError, StreamerError


class HostCheckError(ConfigError):
    """Nodes of the cluster cannot see what the batch needs; ``problems``: one line each.

    Example:
        >>> err.problems
        ['host 10.0.0.7 cannot see input /data/a.mp4; ...']
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0] + (f" (and {len(problems) - 1} more problem(s))"
                                        if len(problems) > 1 else ""))
        self.problems = problems


SHARED_STORAGE_HINT = ("every node reads inputs and writes outputs by path: mount them at the "
                       "same path on every node")


@dataclass
class HostNeeds:
    """What every node that may run a worker must see, as the driver sees it.

    ``inputs``: (path, size in bytes) of each input file; ``folder``: the batch's output
    folder and ``marker``, the name of a file the driver wrote there (so a node with a folder
    of the same name on its own disk is caught too); ``model``: an absolute model directory
    or a ModelScope id, which the node resolves into its own cache (``MODELSCOPE_CACHE``).

    Example:
        >>> check_host(HostNeeds([("/data/a.mp4", 1234)], "/out", ".check", "/models/m"))
        []
    """

    inputs: list[tuple[str, int]]
    folder: str
    marker: str
    model: str


def _more(items: list[str], what: str) -> str:
    return f" (and {len(items) - 1} more {what})" if len(items) > 1 else ""


def check_host(needs: HostNeeds, host: str) -> list[str]:
    """Runs on one node: one line per kind of thing that node cannot see (none: ``[]``).

    Fast and light: it stats paths and imports torch only to resolve a ModelScope id.
    """
    problems: list[str] = []
    missing = [path for path, size in needs.inputs
               if not (os.path.isfile(path) and os.access(path, os.R_OK))]
    if missing:
        problems.append(f"host {host} cannot see input {missing[0]}{_more(missing, 'inputs')}"
                        f"; {SHARED_STORAGE_HINT}")
    different = [path for path, size in needs.inputs
                 if path not in missing and os.path.getsize(path) != size]
    if different:
        problems.append(f"host {host} sees a different file at {different[0]} (not the size "
                        f"the driver sees){_more(different, 'inputs')}; {SHARED_STORAGE_HINT}")
    folder = Path(needs.folder)
    if not (folder / needs.marker).is_file():
        what = "a different folder at" if folder.is_dir() else "the output folder"
        problems.append(f"host {host} cannot see {what} {folder}; {SHARED_STORAGE_HINT}")
    elif not os.access(folder, os.W_OK | os.X_OK):
        problems.append(f"host {host} cannot write in the output folder {folder}; make it "
                        "writable for the user Ray runs as on every node")
    if needs.model.startswith("/"):
        model = Path(needs.model)
        if not (model / "configuration.json").is_file():
            problems.append(f"host {host} cannot see the model {model}; {SHARED_STORAGE_HINT}, "
                            "or give --model as a ModelScope id (each node caches it)")
    else:
        from streamer.m2fp.checkpoint import resolve_model_dir

        try:
            resolve_model_dir(needs.model)
        except StreamerError as exc:
            problems.append(f"host {host}: {exc}")
    return problems


def is_local_file(source: str) -> bool:
    """Whether ``source`` is a path on disk (not a URL, a webcam index or a device)."""
    return "://" not in source and not source.isdigit() and not source.startswith("/dev/video")
