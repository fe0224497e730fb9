"""The one place tests read public data from (benchmarks, Code Alpaca, KubeRay CRDs): raywiz's data
directory, filled by `raywiz data fetch` (scripts/test runs it, from ../shared when that exists).

It is pinned when the tests start, so a test that points RAYWIZ_CACHE at a temp dir still finds it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raywiz import datasets

os.environ["RAYWIZ_DATA_DIR"] = DATA_DIR = datasets.data_dir()
OPTIONAL = {"ds1000"}  # no copy could be had offline; its tests build their own fixture


def require_data(*names: str) -> Path:
    """The data directory, or a skip that names the command that fills it."""
    missing = [n for n in names or datasets.FILES if n not in OPTIONAL and not datasets.present(n)]
    if missing:
        pytest.skip(f"data not in {DATA_DIR} ({', '.join(missing)}): run `{datasets.FETCH_COMMAND}` "
                    "(downloads with checksums; or --from a local copy)")
    return Path(DATA_DIR)
