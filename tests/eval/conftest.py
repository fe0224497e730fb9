"""Eval tests read the benchmark files from ../shared/data and keep every cache in a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def eval_data_env(tmp_path_factory):
    """Point raywiz at shared/data (RAYWIZ_EVAL_DATA) and a session cache; never download."""
    cache = tmp_path_factory.mktemp("raywiz-cache")
    old = {k: os.environ.get(k) for k in ("RAYWIZ_EVAL_DATA", "RAYWIZ_CACHE", "RAYWIZ_OFFLINE")}
    os.environ["RAYWIZ_EVAL_DATA"] = str(SHARED_DATA)
    os.environ["RAYWIZ_CACHE"] = str(cache)
    os.environ["RAYWIZ_OFFLINE"] = "1"
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def have_shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA
