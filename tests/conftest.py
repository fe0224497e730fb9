"""Shared fixtures. Ray tests use one real local cluster per test session (2 CPUs, like CI)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Ray worker processes import test modules and raywiz: they need the repo on their path.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.datafiles import require_data  # noqa: E402 - pins RAYWIZ_DATA_DIR before any test runs


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The data directory with every public file the tests use (historical name: CI copies ../shared)."""
    return require_data()


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster shared by the session's Ray tests (shut down at the end).

    4 logical CPUs on the 2-core machine, as raywiz.runtime does: Ray Data needs CPUs beside the workers.
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"],
                                           "WANDB_MODE": os.environ["WANDB_MODE"]}})
    yield ray
    ray.shutdown()
