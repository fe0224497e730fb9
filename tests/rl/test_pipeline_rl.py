"""`raywiz run` with an `rl:` section: rl runs after train, eval and serve take rl's final checkpoint.

The orchestration is tested with stand-in stages that write real sealed outputs (as
tests/ops/test_pipeline.py does); the rl stage itself is tested end to end in test_stage.py.
"""

from __future__ import annotations

import os

import pytest

from raywiz import pipeline
from raywiz.artifacts import join, write_manifest
from tests.ops.test_pipeline import Stages, make_job, quiet

RL = {"tasks": {"toy": 2}, "workers": 2, "prompts_per_step": 2, "group_size": 2, "mini_batch_size": 2}


class WithRL(Stages):
    def rl(self, job, model=None):
        self.calls.append(("rl", model))
        hf = join(job.run_dir, "rl", "checkpoint_00000005", "hf")
        os.makedirs(hf, exist_ok=True)
        write_manifest(hf, "hf_export", meta={"step": 5})
        return hf


@pytest.fixture
def stages(monkeypatch):
    s = WithRL()
    monkeypatch.setattr(pipeline, "entry_point", s)
    monkeypatch.setattr(pipeline, "init_ray", lambda job, extra_cpus_needed=0: s.calls.append(("ray", extra_cpus_needed)))
    return s


def test_rl_runs_after_train_and_eval_takes_its_checkpoint(tmp_path, stages):
    job = make_job(tmp_path, evolve=None, rl=RL)
    result = pipeline.run_pipeline(job, log=quiet)
    rl_hf = join(job.run_dir, "rl", "checkpoint_00000005", "hf")
    # rl finds this run's train checkpoint itself (rl.model: best); Ray is sized for rl's 2 workers
    assert stages.calls == [("ray", 2), ("train", []), ("ray", 2), ("rl", None), ("eval", [rl_hf])]
    assert result.ran == ["train", "rl", "eval"] and result.outputs["rl"] == rl_hf

    stages.calls.clear()  # a rerun resumes all three; skipping rl still evaluates what rl made
    again = pipeline.run_pipeline(make_job(tmp_path, evolve=None, rl=RL), skip={"rl"}, redo={"eval"}, log=quiet)
    assert stages.calls == [("eval", [rl_hf])] and "rl" in again.skipped

    stages.calls.clear()  # a changed rl section runs rl and eval again, not train
    pipeline.run_pipeline(make_job(tmp_path, evolve=None, rl={**RL, "lr": 1e-4}), log=quiet)
    assert [c[0] for c in stages.calls if c[0] != "ray"] == ["rl", "eval"]


def test_rl_starts_from_a_given_checkpoint_and_is_not_listed_without_a_section(tmp_path, stages):
    other = make_job(tmp_path, name="earlier", evolve=None)
    pipeline.run_pipeline(other, log=quiet)
    hf = join(other.run_dir, "train", "checkpoint_00000002", "hf")
    stages.calls.clear()
    pipeline.run_pipeline(make_job(tmp_path, name="reuse", evolve=None, rl=RL), checkpoint=hf, log=quiet)
    assert [c for c in stages.calls if c[0] != "ray"][0] == ("rl", hf)
    assert "rl" not in pipeline.run_pipeline(make_job(tmp_path, name="norl", evolve=None), log=quiet).skipped
