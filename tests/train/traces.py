"""Reading train.debug.trace_samples' per-step sample traces (what the resume tests compare)."""

from __future__ import annotations

import json
import os


def read_trace(run_train_dir: str) -> dict[int, list[str]]:
    """step -> sorted sample ids of that step over all ranks."""
    out: dict[int, list[str]] = {}
    d = os.path.join(run_train_dir, "trace")
    for name in sorted(os.listdir(d)):
        step = int(name.split("_")[1].split(".")[0])
        with open(os.path.join(d, name)) as f:
            out.setdefault(step, []).extend(json.load(f))
    return {k: sorted(v) for k, v in out.items()}
