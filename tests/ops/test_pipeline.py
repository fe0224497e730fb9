"""raywiz.pipeline: order, hand-over between stages, skip, point-at-output, resume.

The orchestration is tested with small stage functions that write real sealed outputs; the stage
entry points themselves are tested by their owners, and test_jobs.py runs `raywiz run` of the
quickstart (real training) as a Ray job.
"""

from __future__ import annotations

import json
import os

import pytest

from raywiz import pipeline
from raywiz.artifacts import join, write_manifest
from raywiz.config import ConfigError, parse_job

from .wandb_offline import find_runs


def make_job(tmp_path, overrides=(), wandb=False, **sections):
    data = {"name": "pipe", "storage": str(tmp_path / "runs"),
            "evolve": {"seeds": {"paths": ["raywiz:quickstart/instructions.jsonl"]}},
            "train": {"data": {}}, "eval": {}, **sections}
    if wandb:
        data["wandb"] = {"enabled": True, "mode": "offline"}
    return parse_job({k: v for k, v in data.items() if v is not None}, overrides=list(overrides))


class Stages:
    """Stand-ins for run_evolve/run_train/run_eval that write sealed outputs and record calls."""

    def __init__(self, fail: str | None = None):
        self.calls: list[tuple[str, object]] = []
        self.fail = fail

    def __call__(self, stage):
        return getattr(self, stage)

    def _check(self, stage):
        if self.fail == stage:
            raise RuntimeError(f"{stage} broke")

    def evolve(self, job):
        self.calls.append(("evolve", None))
        self._check("evolve")
        out = join(job.run_dir, "evolve")
        os.makedirs(out, exist_ok=True)
        open(join(out, "part-00000.parquet"), "w").write("rows")
        write_manifest(out, "instruction_shards")
        return out

    def train(self, job, dataset=None):
        self.calls.append(("train", list(job.train.data.paths) or ([dataset] if dataset else [])))
        self._check("train")
        hf = join(job.run_dir, "train", "checkpoint_00000002", "hf")
        os.makedirs(hf, exist_ok=True)
        open(join(hf, "config.json"), "w").write("{}")
        open(join(hf, "raywiz.json"), "w").write(json.dumps({"step": 2, "run": job.name}))
        write_manifest(hf, "hf_export", meta={"step": 2})
        return hf

    def eval(self, job, checkpoints=None):
        self.calls.append(("eval", checkpoints))
        self._check("eval")
        out = join(job.run_dir, "eval", "hf", "humaneval")
        os.makedirs(out, exist_ok=True)
        summary = {"benchmark": "humaneval", "checkpoint": (checkpoints or ["?"])[0], "n_tasks": 1, "pass@1": 1.0}
        open(join(out, "summary.json"), "w").write(json.dumps(summary))
        return [summary]


@pytest.fixture(autouse=True)
def ray_starts(monkeypatch):
    """The stand-in stages need no Ray: record the CPUs the pipeline would start it with instead."""
    calls = []
    monkeypatch.setattr(pipeline, "init_ray", lambda job, extra_cpus_needed=0: calls.append(extra_cpus_needed))
    return calls


@pytest.fixture
def stages(monkeypatch):
    s = Stages()
    monkeypatch.setattr(pipeline, "entry_point", s)
    return s


def quiet(_msg):
    pass


def test_runs_evolve_train_eval_in_order_handing_outputs_on(tmp_path, stages, ray_starts):
    job = make_job(tmp_path, ["train.scaling.num_workers=4"])
    result = pipeline.run_pipeline(job, log=quiet)
    # Ray starts in evolve, already sized for train's 4 workers (later stages reuse it as it is).
    assert ray_starts == [4, 4]
    evolve_out = join(job.run_dir, "evolve")
    hf = join(job.run_dir, "train", "checkpoint_00000002", "hf")
    # train's empty data list means this run's evolve output (where evolve wrote)
    assert stages.calls == [("evolve", None), ("train", []), ("eval", [hf])]
    assert result.outputs["evolve"] == evolve_out
    assert result.ran == ["evolve", "train", "eval"] and result.resumed == []
    assert result.outputs["train"] == hf and result.outputs["eval"][0]["pass@1"] == 1.0
    state = json.load(open(join(job.run_dir, "pipeline.json")))
    assert set(state["stages"]) == {"evolve", "train", "eval"}


def test_rerun_resumes_finished_stages_and_reruns_what_changed(tmp_path, stages, ray_starts):
    pipeline.run_pipeline(make_job(tmp_path), log=quiet)
    stages.calls.clear()
    ray_starts.clear()
    again = pipeline.run_pipeline(make_job(tmp_path), log=quiet)
    assert stages.calls == [] and again.resumed == ["evolve", "train", "eval"]
    assert ray_starts == []  # nothing to run: no Ray at all
    assert again.outputs["train"].endswith("hf")

    # A changed train config re-runs train and, downstream, eval; evolve is reused.
    changed = pipeline.run_pipeline(make_job(tmp_path, ["train.optim.lr=1e-4"]), log=quiet)
    assert [c[0] for c in stages.calls] == ["train", "eval"] and changed.resumed == ["evolve"]

    # A partial output (manifest gone) is never taken for finished.
    stages.calls.clear()
    os.remove(join(tmp_path / "runs", "pipe", "train", "checkpoint_00000002", "hf", "manifest.json"))
    pipeline.run_pipeline(make_job(tmp_path, ["train.optim.lr=1e-4"]), log=quiet)
    assert [c[0] for c in stages.calls] == ["train", "eval"]

    stages.calls.clear()
    pipeline.run_pipeline(make_job(tmp_path, ["train.optim.lr=1e-4"]), redo={"evolve"}, log=quiet)
    assert [c[0] for c in stages.calls] == ["evolve", "train", "eval"]  # new shards: downstream re-runs


def test_failed_stage_is_not_recorded_and_is_retried(tmp_path, monkeypatch):
    broken = Stages(fail="train")
    monkeypatch.setattr(pipeline, "entry_point", broken)
    with pytest.raises(RuntimeError, match="train broke"):
        pipeline.run_pipeline(make_job(tmp_path), log=quiet)
    fixed = Stages()
    monkeypatch.setattr(pipeline, "entry_point", fixed)
    result = pipeline.run_pipeline(make_job(tmp_path), log=quiet)
    assert result.resumed == ["evolve"] and result.ran == ["train", "eval"]


def test_skip_and_sections_choose_the_stages(tmp_path, stages):
    job = make_job(tmp_path)
    result = pipeline.run_pipeline(job, skip={"evolve", "eval"}, log=quiet)
    assert stages.calls == [("train", [])]  # reads this run's evolve directory (where `raywiz evolve` writes)
    assert result.skipped == ["evolve", "eval"]

    stages.calls.clear()
    job = make_job(tmp_path, evolve=None, eval=None, name="other")
    job.train.data.paths = ["/data/mine.jsonl"]
    pipeline.run_pipeline(job, log=quiet)
    assert stages.calls == [("train", ["/data/mine.jsonl"])]

    with pytest.raises(ConfigError, match="unknown stage"):
        pipeline.run_pipeline(make_job(tmp_path), skip={"trian"}, log=quiet)


def test_skipped_stage_hands_on_what_it_produced_earlier(tmp_path, stages):
    pipeline.run_pipeline(make_job(tmp_path), log=quiet)
    stages.calls.clear()
    result = pipeline.run_pipeline(make_job(tmp_path), skip={"evolve", "train"}, redo={"eval"}, log=quiet)
    assert stages.calls == [("eval", [result.run_dir + "/train/checkpoint_00000002/hf"])]


def test_point_stages_at_earlier_outputs(tmp_path, stages):
    other = make_job(tmp_path, name="earlier")
    pipeline.run_pipeline(other, log=quiet)
    stages.calls.clear()
    hf = join(other.run_dir, "train", "checkpoint_00000002", "hf")
    job = make_job(tmp_path, name="reuse")
    result = pipeline.run_pipeline(job, checkpoint=hf, log=quiet)
    assert stages.calls == [("evolve", None), ("eval", [hf])]  # train not run: it was given
    assert "train" in result.skipped

    stages.calls.clear()
    shards = join(other.run_dir, "evolve")
    job = make_job(tmp_path, name="reuse2")
    pipeline.run_pipeline(job, evolve_output=shards, skip={"eval"}, log=quiet)
    assert stages.calls == [("train", [shards])]
    assert job.train.data.paths == []  # handed to train as an argument, not written into the job

    os.remove(join(hf, "manifest.json"))
    open(join(hf, "manifest.json"), "w").write("{")  # a half-written manifest
    with pytest.raises(ConfigError, match="--checkpoint"):
        pipeline.run_pipeline(make_job(tmp_path, name="reuse3"), checkpoint=hf, log=quiet)


@pytest.mark.slow
def test_pipeline_logs_the_evolved_dataset_to_wandb(tmp_path, stages):
    job = make_job(tmp_path, wandb=True)
    pipeline.run_pipeline(job, log=quiet)
    # Evolve's shards are logged by the pipeline; train and eval log their own outputs (the stand-ins
    # here do not; test_tracking.py tests the lineage helpers they call).
    [run] = find_runs(job.run_dir)
    assert (run.job_type, run.run_id, run.group) == ("evolve", "pipe-evolve", "pipe")
    [dataset] = run.artifacts
    assert (dataset["name"], dataset["type"]) == ("pipe-instructions", "dataset")
    assert dataset["entries"]["files/part-00000.parquet"]["ref"] == "file://" + join(job.run_dir, "evolve", "part-00000.parquet")

    pipeline.run_pipeline(job, log=quiet)  # resumed stages log nothing again
    assert len(find_runs(job.run_dir)) == 1

