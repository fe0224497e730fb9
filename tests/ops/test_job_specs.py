"""jobs/*.yaml: every ready-made job spec loads; the reproduction uses the paper's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from raywiz.config import load_job
from raywiz.jobs import train_bundles

JOBS = sorted((Path(__file__).resolve().parents[2] / "jobs").glob("*.yaml"))


def test_the_ready_made_jobs_are_there():
    names = {p.name for p in JOBS}
    assert {"quickstart.yaml", "wizardcoder-15b.yaml", "1b-single-gpu.yaml", "evolve-openai.yaml"} <= names


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_job_spec_validates(path):
    job = load_job(path)
    assert job.name and any(getattr(job, s) is not None for s in ("evolve", "train", "rl", "eval", "serve"))
    if job.train is not None:
        assert job.train.grad_accum_steps >= 1 and len(train_bundles(job)) == job.train.scaling.num_workers


def test_wizardcoder_15b_uses_the_papers_hyperparameters():
    job = load_job(next(p for p in JOBS if p.name == "wizardcoder-15b.yaml"))
    t = job.train
    assert job.model.name_or_path == "bigcode/starcoder"
    assert (t.optim.global_batch_size, t.optim.lr, t.optim.warmup_steps, t.optim.schedule, t.optim.epochs) == \
        (512, 2e-5, 30, "cosine", 3)
    assert t.data.max_length == 2048 and not t.data.pack  # 512 samples a step, as the paper
    assert t.deepspeed.stage == 3 and t.optim.gradient_checkpointing
    assert t.scaling.num_workers >= 8 and t.scaling.use_gpu
    assert t.data.paths == [] and job.evolve is not None  # trains on this run's evolve output
    assert job.evolve.llm.api_key_env == "OPENAI_API_KEY" and job.wandb.enabled


def test_1b_single_gpu():
    job = load_job(next(p for p in JOBS if p.name == "1b-single-gpu.yaml"))
    assert job.model.name_or_path == "bigcode/starcoderbase-1b"
    assert train_bundles(job) == [{"CPU": 4.0, "GPU": 1.0}]
    assert job.train.optim.lr == 2e-5 and job.train.optim.warmup_steps == 30 and job.train.data.max_length == 2048


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_a_job_served_beyond_loopback_names_its_token(path):
    """Beyond loopback serve refuses /v1 and /api POSTs without a bearer token (raywiz.serve.guard): a
    ready-made job that listens on 0.0.0.0 with no api_key_env would answer every request 403."""
    job = load_job(path)
    if job.serve is not None and job.serve.host not in ("127.0.0.1", "localhost", "::1"):
        assert job.serve.api_key_env, f"{path.name}: serve.host {job.serve.host} needs serve.api_key_env"
