"""raywiz.tracking: W&B runs in offline mode, read back from the run files wandb writes."""

from __future__ import annotations

import json
import os

import pytest

from raywiz import tracking
from raywiz.artifacts import write_manifest
from raywiz.config import parse_job

from .wandb_offline import find_runs


def make_job(tmp_path, name="run-a", **wandb):
    return parse_job({"name": name, "storage": str(tmp_path / "runs"),
                      "wandb": {"enabled": True, "mode": "offline", "project": "proj", **wandb}})


def sealed_dir(path, kind, files, meta=None):
    os.makedirs(path, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    write_manifest(str(path), kind, meta=meta)
    return str(path)


# ---------------------------------------------------------------- pure helpers


def test_redact_hides_secret_keys_and_url_passwords_only():
    cfg = {
        "wandb": {"api_key": "abc123", "project": "p"},
        "evolve": {"llm": {"OPENAI_API_KEY": "sk-x", "api_key_env": "OPENAI_API_KEY", "max_tokens": 2048,
                           "base_url": "https://user:hunter2@example.com/v1"}},
        "hfToken": "hf_x", "tokenizer": "t", "db": [{"password": "pw"}], "secret": None,
    }
    out = tracking.redact(cfg)
    assert out["wandb"] == {"api_key": tracking.REDACTED, "project": "p"}
    llm = out["evolve"]["llm"]
    assert llm["OPENAI_API_KEY"] == tracking.REDACTED
    assert llm["api_key_env"] == "OPENAI_API_KEY"  # names where the secret is, not the secret
    assert llm["max_tokens"] == 2048
    assert llm["base_url"] == f"https://{tracking.REDACTED}@example.com/v1"
    assert out["hfToken"] == tracking.REDACTED and out["tokenizer"] == "t"
    assert out["db"] == [{"password": tracking.REDACTED}] and out["secret"] is None
    assert cfg["wandb"]["api_key"] == "abc123"  # the input is not modified


def test_run_id_is_deterministic_per_run_and_stage():
    assert tracking.run_id("run-a", "train") == tracking.run_id("run-a", "train") == "run-a-train"
    assert tracking.run_id("run-a", "eval") != tracking.run_id("run-a", "train")
    long_a, long_b = tracking.run_id("x" * 100, "train"), tracking.run_id("x" * 99 + "y", "train")
    assert len(long_a) <= 64 and long_a != long_b


def test_no_run_when_disabled_or_not_rank_zero(tmp_path, monkeypatch):
    assert tracking.start_run(make_job(tmp_path).model_copy(update={"wandb": parse_job(
        {"name": "x"}).wandb}), "train") is None  # enabled: false (the default)
    assert tracking.start_run(make_job(tmp_path, mode="disabled"), "train") is None
    monkeypatch.setenv("RANK", "1")
    assert tracking.start_run(make_job(tmp_path), "train") is None
    assert not os.path.exists(tmp_path / "runs")  # nothing was written


def test_mode_comes_from_job_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.wandb_mode(make_job(tmp_path)) == "offline"
    assert tracking.wandb_mode(make_job(tmp_path, mode=None)) == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert tracking.wandb_mode(make_job(tmp_path, mode=None)) == "online"


# ---------------------------------------------------------------- offline runs read back


@pytest.mark.slow
def test_run_logs_group_job_type_redacted_config_and_metrics(tmp_path):
    job = make_job(tmp_path, tags=["t1"], entity=None)
    job.model.name_or_path = "https://me:s3cret@models.example/tiny"
    run = tracking.start_run(job, "train", config={"world_size": 2, "hf_token": "hf_abc"})
    tracking.log_metrics(run, {"train/loss": 2.5}, step=1)
    tracking.log_metrics(run, {"train/loss": 1.25}, step=2)
    tracking.finish(run)

    [logged] = find_runs(job.run_dir)
    assert (logged.run_id, logged.project, logged.group, logged.job_type) == ("run-a-train", "proj", "run-a", "train")
    assert logged.config["name"] == "run-a" and logged.config["world_size"] == 2
    assert logged.config["hf_token"] == tracking.REDACTED
    assert logged.config["model"]["name_or_path"] == f"https://{tracking.REDACTED}@models.example/tiny"
    assert "s3cret" not in open(logged.path, "rb").read().decode("latin-1")
    losses = [(h["_step"], h["train/loss"]) for h in logged.history if "train/loss" in h]
    assert losses == [(1, 2.5), (2, 1.25)]
    assert logged.exit_code == 0


@pytest.mark.slow
def test_artifacts_carry_lineage_dataset_to_model_to_eval(tmp_path):
    job = make_job(tmp_path)
    evolve_dir = sealed_dir(tmp_path / "runs/run-a/evolve", "instruction_shards", {"part-0.parquet": "rows"})
    hf_dir = sealed_dir(tmp_path / "runs/run-a/train/checkpoint_00000004/hf", "hf_export",
                        {"config.json": "{}", "raywiz.json": json.dumps({"step": 4, "run": "run-a"})},
                        meta={"step": 4})
    eval_dir = sealed_dir(tmp_path / "runs/run-a/eval", "eval_results", {"summary.json": "{}"})
    summaries = [{"benchmark": "humaneval", "checkpoint": hf_dir, "n_tasks": 2, "pass@k": {"pass@1": 0.5}},
                 {"benchmark": "mbpp", "checkpoint": hf_dir, "n_tasks": 2, "pass@1": 0.25}]

    run = tracking.start_run(job, "evolve")
    tracking.log_dataset(run, job, evolve_dir)
    tracking.finish(run)
    run = tracking.start_run(job, "train")
    tracking.log_checkpoint(run, job, hf_dir, dataset_dir=evolve_dir)
    tracking.finish(run)
    run = tracking.start_run(job, "eval")
    tracking.log_eval_table(run, "eval/humaneval/tasks", [
        {"task_id": "HumanEval/0", "passed": True, "completion": "return 1"},
        {"task_id": "HumanEval/1", "passed": False, "reason": {"error": "AssertionError"}},
    ])
    tracking.log_eval_results(run, job, eval_dir, summaries, checkpoints=[hf_dir])
    tracking.finish(run)

    runs = {r.job_type: r for r in find_runs(job.run_dir)}
    assert set(runs) == {"evolve", "train", "eval"} and {r.group for r in runs.values()} == {"run-a"}
    [dataset] = runs["evolve"].artifacts
    [model] = runs["train"].artifacts
    eval_art = next(a for a in runs["eval"].artifacts if a["type"] == tracking.EVAL_TYPE)
    assert (dataset["name"], dataset["type"]) == ("run-a-instructions", "dataset")
    # The files stay where they are (references); only the manifest is uploaded.
    assert dataset["entries"]["files/part-0.parquet"]["ref"] == f"file://{evolve_dir}/part-0.parquet"
    assert dataset["entries"]["manifest.json"]["ref"] == ""
    assert dataset["metadata"]["sealed"] and dataset["metadata"]["n_files"] == 1
    assert (model["name"], model["type"]) == ("run-a-model", "model")
    assert set(model["aliases"]) >= {"latest", "step-4"} and model["metadata"]["checkpoint"]["step"] == 4
    # Lineage: each artifact names its input by digest.
    assert model["metadata"]["lineage"] == [{"name": "run-a-instructions", "type": "dataset",
                                             "digest": dataset["digest"]}]
    assert eval_art["metadata"]["lineage"] == [{"name": "run-a-model", "type": "model", "digest": model["digest"]}]
    assert [s["benchmark"] for s in eval_art["metadata"]["summaries"]] == ["humaneval", "mbpp"]

    ev = runs["eval"]
    assert ev.summary["eval/hf/humaneval/pass@1"] == 0.5 and ev.summary["eval/hf/mbpp/pass@1"] == 0.25
    table = next(h["eval/humaneval/tasks"] for h in ev.history if "eval/humaneval/tasks" in h)
    assert table["_type"] == "table-file" and table["nrows"] == 2
    table_file = next(f for f in ev.files if f.startswith("media/table/eval/humaneval/tasks"))
    data = json.load(open(os.path.join(os.path.dirname(ev.path), "files", table_file)))
    assert data["columns"] == ["task_id", "passed", "completion", "reason"]
    assert [row[1] for row in data["data"]] == [True, False]
    assert any("eval/pass@1_table" in h for h in ev.history)  # the bar chart's data


@pytest.mark.slow
def test_rerun_of_a_stage_resumes_the_same_run_id(tmp_path):
    job = make_job(tmp_path)
    for step in (1, 2):
        run = tracking.start_run(job, "train")
        tracking.log_metrics(run, {"loss": float(step)}, step=step)
        tracking.finish(run)
    runs = find_runs(job.run_dir)
    assert len(runs) == 2 and {r.run_id for r in runs} == {"run-a-train"}


@pytest.mark.slow
def test_image_helper_logs_an_image(tmp_path):
    np = pytest.importorskip("numpy")
    job = make_job(tmp_path)
    run = tracking.start_run(job, "eval")
    tracking.log_image(run, "samples/grid", np.zeros((8, 8, 3), dtype=np.uint8), caption="zeros")
    tracking.finish(run)
    [logged] = find_runs(job.run_dir)
    img = next(h["samples/grid"] for h in logged.history if "samples/grid" in h)
    assert img["_type"] == "image-file" and (img["width"], img["height"]) == (8, 8)


@pytest.mark.slow
def test_only_world_rank_zero_logs_under_ray_train(tmp_path, ray_local):
    """The Train V2 pitfall: every worker calls start_run; one W&B run comes out."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def train_fn(config):  # nested: pickled by value (Ray workers cannot import the tests package)
        from raywiz import tracking as tr

        run = tr.start_run(config["job"], "train")
        tr.log_metrics(run, {"rank_logged": 1.0}, step=1)
        tr.finish(run)

    job = make_job(tmp_path)
    trainer = TorchTrainer(train_fn, train_loop_config={"job": job},
                           scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
                           run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="rank0"))
    trainer.fit()
    runs = find_runs(job.run_dir)
    assert [r.run_id for r in runs] == ["run-a-train"]
