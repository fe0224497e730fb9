"""Eval tests read the benchmark files from raywiz's data directory and keep every cache in a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.datafiles import require_data


@pytest.fixture(scope="session", autouse=True)
def eval_data_env(tmp_path_factory):
    """A session cache (ground-truth outputs and the like); never download."""
    cache = tmp_path_factory.mktemp("raywiz-cache")
    old = {k: os.environ.get(k) for k in ("RAYWIZ_CACHE", "RAYWIZ_OFFLINE")}
    os.environ["RAYWIZ_CACHE"] = str(cache)
    os.environ["RAYWIZ_OFFLINE"] = "1"
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def have_shared_data() -> Path:
    """The data directory with the benchmark files (skips, naming `raywiz data fetch`, without them)."""
    return require_data("humaneval", "humaneval+", "mbpp", "mbpp+", "mbpp+prompts")
