"""The README's first command as a newcomer runs it: `raywiz run jobs/quickstart.yaml`, in a fresh
process, output to a pipe. Its console reads like a tool's: at most 80 lines from the first to the
end of the JSON summary, no Ray/torch/Python warnings, every training step once; a second run
resumes every stage at once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 80
# INFO as a log level only (case-sensitive word): raywiz's own lines may say "no_information_gain"
NOISE = re.compile(r"(?i:warning|deprecat|core_worker|\(pid=|Traceback|PlacementGroupCleaner|it/s\])|\bINFO\b")


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAYWIZ_LOG"))}
    cmd = [sys.executable, "-m", "raywiz.cli", "run", str(REPO / "jobs" / "quickstart.yaml"),
           "--set", f"storage={tmp_path / 'runs'}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)


@pytest.mark.slow
def test_quickstart_console_is_short_quiet_and_shows_each_step_once(tmp_path):
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    lines = r.stderr.splitlines() + r.stdout.splitlines()
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    noisy = [line for line in r.stderr.splitlines() if NOISE.search(line) and not line.startswith("raywiz: warning")]
    assert noisy == [], "\n".join(noisy)
    assert all(line.startswith("raywiz: ") for line in r.stderr.splitlines()), r.stderr
    steps = [int(m.group(1)) for m in re.finditer(r"^raywiz: train step (\d+)/15 \| loss [\d.]+", r.stderr, re.M)]
    assert steps == list(range(1, 16))  # a plain line per step (not a terminal), each once, in order
    summary = json.loads(r.stdout[r.stdout.index("{"):])  # stdout: the pipeline's table, then its JSON summary
    assert summary["ran"] == ["evolve", "train", "eval"]
    assert summary["outputs"]["eval"][0]["pass@1"] == {"humaneval": 0.0}

    again = _run(tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    for stage in ("evolve", "train", "eval"):
        assert f"raywiz: {stage}: finished earlier" in again.stderr
    assert json.loads(again.stdout)["resumed"] == ["evolve", "train", "eval"]
    assert len(again.stderr.splitlines()) == 3
