"""Statements in README.md and docs/ that drift from the code: what the test suite needs, and
the batch example."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
INSTALL = (ROOT / "docs" / "install.md").read_text()
BATCH = (ROOT / "docs" / "batch-and-ray.md").read_text()


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no '## {title}' section"
    return match.group(1)


def test_the_test_suite_page_lists_every_apt_package_ci_installs():
    ci = (ROOT / ".ci" / "run").read_text()
    packages = re.search(r"APT_PACKAGES=\((.*?)\)", ci, re.S).group(1).split()
    packages += re.search(r"APT_PACKAGES\+=\((.*?)\)", ci, re.S).group(1).split()
    suite = section(INSTALL, "The test suite")
    missing = [p for p in packages if not re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])",
                                                   suite)]
    assert not missing, f"docs/install.md's test-suite section does not list {missing}"
    assert "docs/install.md#the-test-suite" in section(README, "Tests")


def test_no_test_count_to_go_stale():
    assert not re.search(r"\b\d+ tests\b", section(README, "Tests"))
    assert not re.search(r"\b\d+ tests\b", section(INSTALL, "The test suite"))


def test_batch_example_names_the_damaged_file_one_way():
    paths = set(re.findall(r"cannot read (\S*corrupt\.mp4)", README + BATCH))
    assert len(paths) == 1, paths
