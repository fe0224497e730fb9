"""Evolve against `raywiz serve`'s OpenAI endpoint (Ray Serve, a tiny model) on 127.0.0.1."""

import json
import os

import pytest

from raywiz.artifacts import check_manifest
from raywiz.config import parse_job

from .helpers import seed_records, write_jsonl


@pytest.mark.slow
def test_evolve_with_raywiz_serve_as_the_llm(tmp_path, ray_local):
    from ray import serve

    from raywiz.modeling import build_model, load_tokenizer
    from raywiz.serve.app import run_serve

    model_dir = tmp_path / "tiny-model"
    build_model("tiny-gpt-bigcode", seed=0).save_pretrained(model_dir)
    load_tokenizer("tiny-gpt-bigcode").save_pretrained(model_dir)
    # As raywiz's HF export has it: chat requests are formatted with WizardCoder's prompt.
    (model_dir / "raywiz.json").write_text(json.dumps({"template": "wizardcoder", "base_model": "tiny-gpt-bigcode"}))
    serve_job = parse_job({"name": "llm", "storage": str(tmp_path / "runs"),
                           "serve": {"checkpoint": str(model_dir), "port": 0, "num_cpus": 0.1,
                                     "app_name": "evolve-llm", "route_prefix": "/evolve-llm"}})
    url = run_serve(serve_job, blocking=False)
    try:
        params = {"temperature": 0.0, "max_tokens": 16}
        job = parse_job({"name": "evolve-on-serve", "storage": str(tmp_path / "runs"), "evolve": {
            "seeds": {"paths": [write_jsonl(tmp_path / "seeds.jsonl", seed_records()[:4])]}, "rounds": 1,
            "llm": {"base_url": url + "/v1", "model": "latest", "api_key_env": None, "concurrency": 4},
            "evolve_params": params, "response_params": params,
            "eliminate": {"drop_truncated": False, "info_gain": "off"}, "decontam": {"enabled": False}}})
        from raywiz.evolve.recipe import run_evolve

        out = run_evolve(job)
    finally:
        serve.delete("evolve-llm")
    assert check_manifest(out, kind="instruction_shards").complete
    report = json.load(open(os.path.join(job.run_dir, "evolve_report", "report.json")))
    llm = report["llm"]
    assert llm["failed"] == 0 and llm["sent"] >= 4  # 4 evolutions (+ responses for those that survive)
    assert llm["completion_tokens"] > 0 and llm["prompt_tokens"] > 0  # the server's usage, accounted
    rounds = {r["round"]: r for r in report["rounds"]}
    assert rounds[1]["candidates"] == 4
    assert rounds[1]["kept"] + sum(rounds[1]["dropped"].values()) == 4  # every evolution accounted for
