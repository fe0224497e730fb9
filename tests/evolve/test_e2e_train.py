"""Seeds -> `raywiz evolve` -> instruction shards -> `raywiz train` on CPU, in one job file."""

import json
import os

import pytest
import yaml

from raywiz.artifacts import check_manifest
from raywiz.config import load_job
from raywiz.evolve.recipe import run_evolve
from tests.evolve.fake_llm_server import FakeLLMServer


@pytest.mark.slow
def test_seeds_evolve_shards_train(tmp_path, ray_local):
    with FakeLLMServer() as server:
        job_file = tmp_path / "job.yaml"
        job_file.write_text(yaml.safe_dump({
            "name": "e2e", "storage": str(tmp_path / "runs"), "model": {"name_or_path": "tiny-gpt-bigcode"},
            "evolve": {"seeds": {"paths": ["raywiz:quickstart/instructions.jsonl"], "limit": 24}, "rounds": 2,
                       "decontam": {"enabled": False},
                       "llm": {"base_url": server.base_url, "model": "fake", "api_key_env": None}},
            # No train.data.paths: train reads this run's sealed evolve output.
            "train": {"data": {"max_length": 256}, "optim": {"epochs": 1, "max_steps": 2, "global_batch_size": 4,
                                                             "micro_batch_size": 2, "warmup_steps": 0},
                      "scaling": {"num_workers": 1}, "checkpoint": {"every_n_steps": 2}},
        }))
        out = run_evolve(load_job(job_file))
    evolved = check_manifest(out, kind="instruction_shards")
    assert evolved.complete and evolved.manifest["meta"]["kept_by_round"]["2"] > 0

    from raywiz.train.launch import run_train

    hf_dir = run_train(load_job(job_file))  # on the same Ray cluster, as `raywiz run` does
    assert check_manifest(hf_dir, kind="hf_export").complete
    report = json.load(open(os.path.join(tmp_path, "runs", "e2e", "train", "data_report.json")))
    assert report["n_rows"] == evolved.manifest["meta"]["rows"]  # every evolved row reached training
    assert all(f.startswith(out) and f.endswith(".parquet") for f in report["files"])
