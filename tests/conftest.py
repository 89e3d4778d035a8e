"""Shared fixtures: paths to ../shared/media, and tiny random-weight M2FP model directories."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_MEDIA = ROOT.parent / "shared" / "media"


_RUN_DIRS: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    # Compiled engines and ModelScope's cache go to per-run folders, never to the user's
    # ~/.cache, and are removed at the end of the run.
    for var, prefix in (("STREAMER_CACHE", "streamer-test-cache-"),
                        ("MODELSCOPE_CACHE", "modelscope-cache-")):
        if var not in os.environ:
            os.environ[var] = tempfile.mkdtemp(prefix=prefix)
            _RUN_DIRS.append(os.environ[var])


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _RUN_DIRS:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def media() -> Path:
    """``../shared/media``; tests that need real footage skip when it is absent."""
    if not SHARED_MEDIA.is_dir():
        pytest.skip(f"real media not found at {SHARED_MEDIA} (clone with ../shared beside it)")
    return SHARED_MEDIA


@pytest.fixture(scope="session")
def tiny_single_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamer.testing.make_model import make_model

    return make_model(tmp_path_factory.mktemp("tiny-single"), "single", tiny=True, seed=1)


@pytest.fixture(scope="session")
def tiny_multi_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamer.testing.make_model import make_model

    return make_model(tmp_path_factory.mktemp("tiny-multi"), "multi", tiny=True, seed=2)
