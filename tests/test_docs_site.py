"""The documentation: README.md is a short front door, docs/ is built by MkDocs with --strict.

`mkdocs build --strict` fails on a link to a missing page or image, on an anchor that no heading
makes, and on a page under docs/ left out of mkdocs.yml's nav (its `validation` block). README.md
is not part of the site, so its relative links are checked here.

Example::

    .venv/bin/python -m pytest -q tests/test_docs_site.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_BYTES = 15_000

# [text](target) and ![alt](target); the text may span lines. Also <img src="..."> / <a href="...">.
MD_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", re.S)
HTML_LINK = re.compile(r"""<(?:img|a)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""", re.I)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def _prose(text: str) -> str:
    """Markdown without its fenced code blocks (links in code are not links)."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub and MkDocs' toc both make it for plain headings.

    >>> _slug("Set up and run")
    'set-up-and-run'
    """
    text = re.sub(r"`([^`]*)`", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return re.sub(r"[ ]+", "-", text)


def _anchors(markdown_file: Path) -> set[str]:
    text = _prose(markdown_file.read_text(encoding="utf-8"))
    return {_slug(m.group(2)) for m in re.finditer(r"^(#{1,6})\s+(.+?)\s*#*\s*$", text, re.M)}


def _relative_links(text: str) -> list[str]:
    prose = _prose(text)
    links = MD_LINK.findall(prose) + HTML_LINK.findall(prose)
    return [
        link for link in links
        if not re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I)  # http:, https:, mailto:, ...
    ]


def test_readme_is_short_and_has_no_tables() -> None:
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, over {README_MAX_BYTES}: move depth into a docs/*.md page "
        "and link it in one line"
    )
    rows = [line for line in _prose(README.read_text(encoding="utf-8")).splitlines()
            if line.lstrip().startswith("|")]
    assert not rows, f"README.md has table rows (tables belong in docs/): {rows[:3]}"


def test_readme_relative_links_resolve() -> None:
    links = _relative_links(README.read_text(encoding="utf-8"))
    assert any(link.startswith("docs/") for link in links), "README.md links nowhere into docs/"
    broken = []
    for link in links:
        path, _, anchor = unquote(link).partition("#")
        target = (ROOT / path) if path else README
        if not target.exists():
            broken.append(f"{link}: {target.relative_to(ROOT)} does not exist")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no heading in {target.relative_to(ROOT)} makes #{anchor}")
    assert not broken, "README.md has broken links:\n" + "\n".join(broken)


def test_commands_written_one_way() -> None:
    """Every command runs the project's venv as `.venv/bin/python`, never a bare `python`."""
    bare = re.compile(r"(?<![\w/.-])python3? +(?!-m venv\b)(-m +\w|run_stream\.py|benchmarks/)")
    found = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if bare.search(line):
                found.append(f"{page.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "write these as .venv/bin/python ...:\n" + "\n".join(found)


def test_docs_images_exist() -> None:
    missing = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for link in _relative_links(page.read_text(encoding="utf-8")):
            path = unquote(link).partition("#")[0]
            if path and not (page.parent / path).exists():
                missing.append(f"{page.name}: {link}")
    assert not missing, "docs pages link to files that do not exist:\n" + "\n".join(missing)


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    try:
        import material  # noqa: F401  (the theme mkdocs.yml names)
        import mkdocs  # noqa: F401
    except ImportError as exc:  # a missing test dependency is a failure, not a skip
        pytest.fail(f"{exc.name} is not installed: .venv/bin/pip install -e '.[test]'")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    if proc.returncode != 0:
        log = (proc.stdout + proc.stderr).splitlines()
        pytest.fail("mkdocs build --strict failed (fix docs/ or mkdocs.yml's nav):\n"
                    + "\n".join(line for line in log if not line.startswith("INFO")),
                    pytrace=False)
    for page in sorted((ROOT / "docs").glob("*.md")):
        built = site / "index.html" if page.stem == "index" else site / page.stem / "index.html"
        assert built.is_file(), f"{page.name} was not built into {built.relative_to(site)}"
    for image in sorted((ROOT / "docs").glob("*.png")):
        assert (site / image.name).is_file(), f"{image.name} was not copied into the site"
