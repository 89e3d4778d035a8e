"""README statements that drift from the code: the Tests section and the batch example."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_tests_section_lists_every_apt_package_ci_installs():
    ci = (ROOT / ".ci" / "run").read_text()
    packages = re.search(r"APT_PACKAGES=\((.*?)\)", ci, re.S).group(1).split()
    tests = section("Tests")
    missing = [p for p in packages if not re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])",
                                                   tests)]
    assert not missing, f"README's Tests section does not list {missing}"


def test_tests_section_has_no_test_count_to_go_stale():
    assert not re.search(r"\b\d+ tests\b", section("Tests"))


def test_batch_example_names_the_damaged_file_one_way():
    paths = set(re.findall(r"cannot read (\S*corrupt\.mp4)", README))
    assert len(paths) == 1, paths
