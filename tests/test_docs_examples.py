"""Every example in README.md and docs/**/*.md runs as written, offline, with random weights.

* Every fenced ```` ```python ```` block runs in a fresh interpreter, in a scratch folder that
  holds what the docs' examples name: ``clip.mp4`` (a short real clip), ``photo.jpg``,
  ``models/m2fp`` and ``models/m2fp-multi`` (tiny random-weight models, the single- and
  multi-person architecture; the docs say how to make them with
  ``python -m streamer.testing.make_model``) and ``configs/`` (the checkout's). It must exit 0
  and print no traceback.
* The cheap shell commands of ``bash``/``sh``/``shell``/``console`` blocks (and ``$ `` lines
  of ``text`` transcripts) run too: ``python -m streamer.testing.make_model ...`` (with
  ``--tiny`` added: the full-size model is the same code at 250 MB) and plain
  ``run_stream.py --source ... --output ...`` runs, with ``--source`` replaced by the short clip
  and ``--model`` by the tiny model (added when missing: without it the hub would be asked).
  A transcript line that starts with ``error:`` must be what the command prints. Other commands
  (installs, servers, clusters, batch) are not run here: their own tests cover them.

A block that cannot run is skipped only with a reason, written on the line before it::

    <!-- no-test: needs a camera on /dev/video0 -->
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from media_helpers import first_frames, make_clip, shared_video

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
NO_TEST = re.compile(r"<!--\s*no-test\s*(?::\s*(?P<reason>.*?))?\s*-->")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
TIMEOUT_S = 300


@dataclass
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    skip: str | None  # the no-test reason ('' when the marker gives none); None: run it

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path``, with the no-test marker of the line before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening["fence"]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j])
            j += 1
        previous = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = NO_TEST.search(previous)
        skip = None if marker is None else (marker["reason"] or "")
        language = (opening["info"].split() or [""])[0].lower()
        blocks.append(Block(path, i + 1, language, "\n".join(body) + "\n", skip))
        i = j + 1
    return blocks


def all_blocks() -> list[Block]:
    return [b for path in DOC_FILES if path.is_file() for b in fenced_blocks(path)]


@dataclass
class Command:
    """A shell command from the docs, and the first line of output shown under it (if any)."""

    block: Block
    argv: list[str]
    shown: str | None


def shell_commands(block: Block) -> list[Command]:
    """Commands of a shell block (continuations joined, comments dropped), or the ``$ `` lines
    of a text transcript with the first output line shown under each."""
    transcript = block.language not in SHELL_LANGUAGES
    out: list[Command] = []
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if transcript:
            if not line.startswith("$ "):
                i += 1
                continue
            line = line[2:]
        elif line.startswith("$ "):
            line = line[2:]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        i += 1
        shown = None
        if transcript and i < len(lines) and not lines[i].startswith("$ "):
            shown = lines[i]
        try:
            argv = shlex.split(line, comments=True)
        except ValueError:
            continue
        if argv:
            out.append(Command(block, argv, shown))
    return out


def _option(argv: list[str], name: str) -> int | None:
    return argv.index(name) if name in argv else None


def runnable(command: Command) -> list[str] | None:
    """The command with the substitutions applied, or ``None`` if it is not one we run."""
    argv = list(command.argv)
    if not argv or not re.fullmatch(r"(\S*/)?python3?", argv[0]):
        return None
    argv[0] = sys.executable
    if argv[1:3] == ["-m", "streamer.testing.make_model"]:
        return argv if "--tiny" in argv else [*argv, "--tiny"]
    if len(argv) < 2 or not argv[1].endswith("run_stream.py") or "--source" not in argv:
        return None
    if len(argv) > 2 and not argv[2].startswith("-"):
        return None  # a subcommand (serve, batch, eval): not run here
    argv[1] = str(ROOT / "run_stream.py")
    argv[_option(argv, "--source") + 1] = "clip.mp4"
    model = _option(argv, "--model")
    if model is None:
        argv += ["--model", "models/m2fp"]
    else:
        argv[model + 1] = "models/m2fp"
    return argv


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_single_model, tiny_multi_model) -> Path:
    """A scratch folder holding every file the docs' examples name."""
    import cv2

    work = tmp_path_factory.mktemp("docs-examples")
    (work / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    (work / "models").mkdir()
    (work / "models" / "m2fp").symlink_to(tiny_single_model, target_is_directory=True)
    (work / "models" / "m2fp-multi").symlink_to(tiny_multi_model, target_is_directory=True)
    chaplin = shared_video("chaplin_bw.mp4")
    if chaplin is not None:  # people in it, so the examples really parse someone
        first_frames(chaplin, work / "clip.mp4", 6, width=320)
    else:
        make_clip(work / "clip.mp4", frames=6, size=(160, 120))
    photo = ROOT.parent / "shared" / "media" / "images" / "opencv_messi5.jpg"
    if photo.is_file():
        shutil.copy(photo, work / "photo.jpg")
    else:
        cv2.imwrite(str(work / "photo.jpg"), np.full((120, 160, 3), 128, np.uint8))
    return work


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=_environment(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)


PYTHON_BLOCKS = [b for b in all_blocks() if b.language in ("python", "py", "python3")]
COMMANDS = [c for b in all_blocks() if b.language in SHELL_LANGUAGES | {"text", ""}
            for c in shell_commands(b) if runnable(c) is not None]


def _skip_if_marked(block: Block) -> None:
    if block.skip is not None:
        assert block.skip.strip(), f"{block.where}: a no-test marker must give its reason"
        pytest.skip(f"{block.where}: {block.skip}")


def test_the_docs_have_examples_to_run():
    assert PYTHON_BLOCKS, "no ```python block found in README.md or docs/"
    assert any("make_model" in " ".join(c.argv) for c in COMMANDS), \
        "the docs no longer show how to make the random-weight model"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.where for b in PYTHON_BLOCKS])
def test_python_example_runs_as_written(block, workspace):
    _skip_if_marked(block)
    done = run([sys.executable, "-c", block.code], workspace)
    assert done.returncode == 0 and "Traceback" not in done.stderr, (
        f"{block.where} exited {done.returncode}:\n{done.stderr[-3000:]}")


def _command_id(command: Command) -> str:
    program = command.argv[2] if command.argv[1] == "-m" else Path(command.argv[1]).name
    return f"{command.block.where}:{program}"


@pytest.mark.parametrize("command", COMMANDS, ids=[_command_id(c) for c in COMMANDS])
def test_shell_example_runs_as_written(command, workspace, tmp_path):
    _skip_if_marked(command.block)
    argv = runnable(command)
    assert argv is not None
    if "streamer.testing.make_model" in argv:
        # Into a fresh folder of its own: it writes where the docs say, relative to the cwd.
        cwd = tmp_path
    else:
        cwd = workspace
    done = run(argv, cwd)
    where = command.block.where
    if command.shown is not None and command.shown.startswith("error:"):
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert command.shown in done.stderr.splitlines(), (
            f"{where}: shown {command.shown!r}, printed:\n{done.stderr[-2000:]}")
        return
    assert done.returncode == 0 and "Traceback" not in done.stderr, (
        f"{where}: {shlex.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    if "streamer.testing.make_model" in argv:
        target = cwd / argv[3]
        assert (target / "configuration.json").is_file()
        assert (target / "pytorch_model.pt").is_file()
    else:
        output = argv[argv.index("--output") + 1] if "--output" in argv else None
        if output is not None:
            assert (cwd / output).stat().st_size > 0
