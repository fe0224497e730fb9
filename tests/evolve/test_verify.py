"""Evolve's verify step: LLM tests and answers (right, wrong, hostile) run in the sandbox on a real Ray cluster."""

import json
import os

import pyarrow.parquet as pq
import pytest

from raywiz.artifacts import SHARD_SCHEMA
from raywiz.config import ConfigError, parse_job
from raywiz.evolve.recipe import run_evolve
from raywiz.evolve.verify_tests import read_tests
from tests.evolve.fake_llm_server import GOOD_TESTS, TRIVIAL_TESTS, WRONG_TEST

from .helpers import TOPICS, read_shards, write_jsonl

# marker -> (outcome, tests kept, answers passed): what the fake LLM's scripted tests and answers must give
EXPECTED = {
    "": ("verified", GOOD_TESTS, 4),
    "[[wrong]]": ("no_passing_answer", None, None),
    "[[hostile]]": ("no_passing_answer", None, None),  # always-equal, sys.exit(0), patched builtins, prints PASSED
    "[[mixed]]": ("verified", GOOD_TESTS, 2),  # wrong, right, always-equal, right: the first right one is kept
    "[[badtest]]": ("verified", GOOD_TESTS[:2], 4),  # a test no answer passes is dropped
    "[[trivial]]": ("verified", GOOD_TESTS[:2], 4),  # a test an empty function passes is dropped
    "[[alltrivial]]": ("tests_pass_empty_function", None, None),
    "[[unsafe]]": ("verified", GOOD_TESTS[:1], 4),  # tests that are not plain-value asserts are refused
    "[[notests]]": ("no_valid_tests", None, None),
}


def make_job(tmp_path, server, **verify):
    records = [{"instruction": f"{marker} Write a Python function that {topic}.", "output": "x = 1"}
               for marker, topic in zip(EXPECTED, TOPICS + ["reverses the words of a sentence but keeps the "
                                                            "punctuation marks where they were in the input"])]
    seeds = write_jsonl(tmp_path / "seeds.jsonl", records)
    return parse_job({"name": "verify", "storage": str(tmp_path / "runs"), "evolve": {
        "seeds": {"paths": [seeds]}, "rounds": 1, "decontam": {"enabled": False}, "dedup": {"near": False},
        "llm": {"base_url": server.base_url, "model": "fake", "api_key_env": None, "concurrency": 16},
        "verify": {"answers": 4, "tests_per_task": 5, **verify}}})


def marker_of(text: str) -> str:
    return next((m for m in EXPECTED if m and m in text), "")


def test_tests_are_read_as_plain_value_asserts():
    text = ("```python\nassert add(1, 2) == 3\nassert abs(add(0.1, 0.2) - 0.3) < 1e-9\n"
            "assert add(*[1, 2]) == 3\nassert __import__('os').system('true') == 0\nassert add(1, 2) == [3] * 1\n"
            "assert other(1) == 1\nassert add(x, 1) == 2\nprint(add(1, 2))\nassert eval('1') == 1\n```")
    entry_point, tests, refused = read_tests(text, limit=5)
    assert entry_point == "add"
    assert tests == ["assert add(1, 2) == 3", "assert abs(add(0.1, 0.2) - 0.3) < 1e-09"]
    assert refused == {"assert add(*[1, 2]) == 3": "not_plain_values",
                       "assert __import__('os').system('true') == 0": "not_plain_values",
                       "assert add(1, 2) == [3] * 1": "not_plain_values", "assert other(1) == 1": "calls_another_function",
                       "assert add(x, 1) == 2": "unknown_name", "print(add(1, 2))": "not_an_assert",
                       "assert eval('1') == 1": "not_plain_values"}
    assert read_tests("```python\nassert eval('1') == 1\n```", 5) == (None, [], {"assert eval('1') == 1": "not_plain_values"})
    assert read_tests("no tests here", 5)[1] == []


@pytest.mark.slow
def test_only_right_answers_are_kept_and_counted(tmp_path, ray_local, fake_llm):
    job = make_job(tmp_path, fake_llm)
    out = run_evolve(job)
    rows = read_shards(out)
    seeds = [r for r in rows if r["evol_round"] == 0]
    assert len(seeds) == len(EXPECTED) and not any(r["verified"] or r["tests"] for r in seeds)  # seeds as given
    evolved = {marker_of(r["instruction"]): r for r in rows if r["evol_round"] == 1}
    kept = {m for m, (outcome, _, _) in EXPECTED.items() if outcome == "verified"}
    assert set(evolved) == kept
    for marker, row in evolved.items():
        _, tests, passed = EXPECTED[marker]
        assert row["verified"] is True and row["entry_point"] == "solution"
        assert row["tests"] == tests and row["answers_tried"] == 4 and row["answers_passed"] == passed
        assert "return sorted(data)" in row["output"]
    assert "candidate 1" in evolved["[[mixed]]"]["output"]  # candidate 0 is wrong

    report = json.load(open(os.path.join(job.run_dir, "evolve_report", "report.json")))
    verify = report["verify"]
    outcomes = {}
    for counts in verify["outcomes_by_round"]["1"].values():
        for outcome, n in counts.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + n
    assert outcomes == {"verified": 5, "no_passing_answer": 2, "tests_pass_empty_function": 1, "no_valid_tests": 1}
    round1 = report["rounds"][1]
    assert round1["kept"] == round1["verified"] == 5 and report["totals"]["verified"] == 5
    assert round1["dropped"] == {"verify:no_passing_answer": 2, "verify:tests_pass_empty_function": 1,
                                 "verify:no_valid_tests": 1}
    assert verify["tests"] == {"kept": 5 + 5 + 2 + 2 + 1, "fails_every_answer": 5 + 5 + 1,
                               "passes_empty_function": 1 + 2, "not_plain_values": 4}
    assert verify["answers"] == {"passed": 4 + 2 + 4 + 4 + 4, "failed": 4 + 4 + 2, "untested": 4 + 4}
    assert verify["sandbox"]["where"] == "cluster" and verify["sandbox"]["executions"] > 0
    dropped = [json.loads(line) for line in open(os.path.join(job.run_dir, "evolve_report", "dropped.jsonl"))]
    hostile = next(d for d in dropped if "[[hostile]]" in d["instruction"])
    assert hostile["stage"] == "verify" and hostile["detail"]["answers"] == ["failed"] * 4
    trivial = next(d for d in dropped if "[[alltrivial]]" in d["instruction"])
    assert trivial["detail"]["tests_dropped"] == {t: "passes_empty_function" for t in TRIVIAL_TESTS}
    assert WRONG_TEST not in evolved["[[badtest]]"]["tests"]

    # A changed verify config is refused: for the sealed output, and for the verdicts of an unsealed one.
    other = make_job(tmp_path, fake_llm, answers=2)
    with pytest.raises(ConfigError, match="another evolve config"):
        run_evolve(other)
    os.remove(os.path.join(out, "manifest.json"))
    with pytest.raises(ConfigError, match="another verify config"):
        run_evolve(other)
    sent = fake_llm.total_requests
    assert run_evolve(job) == out and read_shards(out) == rows  # the same config resumes: same rows
    assert fake_llm.total_requests == sent  # from the caches: nothing sent again
