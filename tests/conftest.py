"""Shared fixtures: the real data in ../shared/data (skipped with a reason where it is absent) and
an isolated decoded-image cache per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
KERMANY = DATA / "chest_xray"
CORONAHACK = DATA / "coronahack"


def _need(path: Path):
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (the tests read ../shared/data beside the repo root)")
    return path


@pytest.fixture(scope="session")
def kermany_root() -> Path:
    return _need(KERMANY)


@pytest.fixture(scope="session")
def coronahack_root() -> Path:
    return _need(CORONAHACK)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One decoded cache for the whole session: real images are decoded once, as in real use."""
    return tmp_path_factory.mktemp("decoded-cache")
