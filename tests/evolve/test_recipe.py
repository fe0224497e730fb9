"""The whole stage on a real local Ray cluster against a real HTTP server."""

import gzip
import json
import os

import pyarrow.parquet as pq
import pytest

from raywiz.artifacts import SHARD_SCHEMA, check_manifest
from raywiz.config import ConfigError, parse_job
from raywiz.evolve.recipe import run_evolve

from .helpers import read_shards, seed_records, write_jsonl

SECRET = "sk-raywiz-test-secret-0042"


def make_job(tmp_path, server, seeds, **evolve):
    spec = {"seeds": {"paths": [seeds]}, "rounds": 2,
            "llm": {"base_url": server.base_url, "model": "fake", "api_key_env": "RAYWIZ_EVOLVE_TEST_KEY",
                    "concurrency": 8, "backoff_base_s": 0.01},
            "decontam": {"enabled": False},
            "verify": {"enabled": False}}  # WizardCoder's recipe as published (tests/evolve/test_verify.py: with it)
    spec.update(evolve)
    return parse_job({"name": "run1", "storage": str(tmp_path / "runs"), "evolve": spec})


@pytest.mark.slow
def test_evolve_rounds_eliminate_and_resume(tmp_path, ray_local, fake_llm, monkeypatch, shared_data):
    monkeypatch.setenv("RAYWIZ_EVOLVE_TEST_KEY", SECRET)
    fake_llm.require_api_key = SECRET
    records = seed_records()
    # One seed per elimination rule: the fake LLM answers [[marker]] prompts badly on purpose.
    markers = {"[[sorry]]": "eliminate:sorry_short_response", "[[punct]]": "eliminate:stopwords_punctuation_only",
               "[[badpy]]": "eliminate:python_syntax_error", "[[template]]": "eliminate:copied_template_words",
               "[[same]]": "eliminate:no_information_gain"}
    for i, marker in enumerate(markers):
        records.append({"instruction": f"{marker} Write a Python function for odd job number {i} of many.",
                        "output": "pass"})
    records.append(dict(records[0]))  # an exact duplicate seed
    with gzip.open(shared_data / "humaneval/HumanEval.jsonl.gz", "rt") as f:
        humaneval_3 = [json.loads(line) for line in f][3]
    records.append({"instruction": "Complete the function.\n" + humaneval_3["prompt"],
                    "output": humaneval_3["canonical_solution"]})  # benchmark text: decontaminated
    records.append({"instruction": "Write a Python function that checks whether a year is a leap year.",
                    "input": "2024"})  # no output: the LLM answers it
    fake_llm.set_faults(["429", "timeout", "malformed", "500"])
    fake_llm.hang_s = 1.0
    seeds = write_jsonl(tmp_path / "seeds.jsonl", records)
    humaneval = str(shared_data / "humaneval/HumanEval.jsonl.gz")
    decontam = {"benchmarks": ["humaneval"], "data_paths": {"humaneval": humaneval}}
    job = make_job(tmp_path, fake_llm, seeds, decontam=decontam, llm={"base_url": fake_llm.base_url, "model": "fake",
                                                    "api_key_env": "RAYWIZ_EVOLVE_TEST_KEY", "concurrency": 8,
                                                    "backoff_base_s": 0.01, "timeout_s": 0.5})
    out = run_evolve(job)

    check = check_manifest(out, kind="instruction_shards")
    assert check.complete, check.reason
    rows = read_shards(out)
    assert check.manifest["meta"]["rows"] == len(rows)
    report = json.load(open(os.path.join(job.run_dir, "evolve_report", "report.json")))
    by_round = {r["round"]: r for r in report["rounds"]}

    seeds_kept = [r for r in rows if r["evol_round"] == 0]
    assert len(seeds_kept) == 8 + 5 + 1 and report["seeds"]["duplicate_seed"] == 1
    assert by_round[0]["dropped"] == {"decontam:humaneval": 1}
    assert report["totals"]["benchmark_tasks_hit"] == {"humaneval": 1}
    assert report["decontam"]["benchmark_tasks_checked"] == {"humaneval": 164}
    leap = next(r for r in seeds_kept if "leap year" in r["instruction"])
    assert leap["model"] == "fake" and "```python" in leap["output"] and leap["input"] == "2024"

    # Round 1: the 8 normal seeds and the answered one evolve; each marker seed fails its own rule.
    assert by_round[1]["dropped"] == {reason: 1 for reason in markers.values()}
    round1 = [r for r in rows if r["evol_round"] == 1]
    assert len(round1) == 9 and by_round[1]["kept"] == 9
    ids = {r["sample_id"] for r in rows}
    for r in rows:
        if r["evol_round"] > 0:
            parent = next(p for p in rows if p["sample_id"] == r["parent_id"])
            assert parent["evol_round"] == r["evol_round"] - 1 and r["instruction"].startswith(parent["instruction"])
            assert r["method"] in report["rounds"][1]["methods_kept"] or r["evol_round"] == 2
            assert r["source"] == "seeds" and r["model"] == "fake" and r["parent_id"] in ids
    assert len(ids) == len(rows)
    dropped = [json.loads(line) for line in open(os.path.join(job.run_dir, "evolve_report", "dropped.jsonl"))]
    assert {d["reason"] for d in dropped if d["evol_round"] == 1} == {m.split(":")[1] for m in markers.values()}

    # Injected faults were retried, never lost; every request reached the server once (plus retries).
    assert fake_llm.wait_idle()
    stats = fake_llm.stats()
    assert stats["total_requests"] == stats["unique_keys"] + 4
    assert report["llm"]["sent"] == stats["unique_keys"] and report["llm"]["failed"] == 0
    assert sum(report["llm"]["retries"].values()) == 4
    assert report["llm"]["prompt_tokens"] > 0 and report["llm"]["completion_tokens"] > 0

    # The key went to the server but into no file of the run.
    for root, _, files in os.walk(job.run_dir):
        for f in files:
            assert SECRET.encode() not in open(os.path.join(root, f), "rb").read(), f

    # Idempotent: a sealed run returns at once; an unsealed one replays everything from the cache.
    assert run_evolve(job) == out and fake_llm.total_requests == stats["total_requests"]
    os.remove(os.path.join(out, "manifest.json"))
    assert run_evolve(job) == out
    assert fake_llm.total_requests == stats["total_requests"]  # nothing sent again
    assert read_shards(out) == rows  # same decisions, same shards

    # A sealed output is never overwritten by a different config.
    other = make_job(tmp_path, fake_llm, seeds, rounds=1)
    with pytest.raises(ConfigError, match="another evolve config"):
        run_evolve(other)
