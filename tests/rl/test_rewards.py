"""Training tasks and rewards: every verdict from the sandbox's trusted checker, none a sample can forge."""

import json

import pytest

from raywiz.benchmarks.score import ScoreSettings
from raywiz.rl.config import RLConfig, RLTasks
from raywiz.rl.rewards import load_training_tasks, per_test_tasks, score_responses, task_from_record

SETTINGS = ScoreSettings(workers=2)
ADD_ASSERTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(0, 0) == 1", "assert add(5, 0) == 5"]
CHECK = ("def check(candidate):\n    seen = []\n    assert candidate(1, 2) == 3\n"
         "    assert candidate(0, 0) == 1\n    assert candidate(-1, 1) == 0\n")
TASKS = {
    "asserts": task_from_record({"prompt": "Write add(a, b).", "tests": ADD_ASSERTS}, "t:1"),
    "check": task_from_record({"prompt": "Write add(a, b).", "check": CHECK, "entry_point": "add"}, "t:2"),
    "io": task_from_record({"prompt": "Write add(a, b).", "entry_point": "add", "inputs": [[1, 2], [0, 0], [3, 3]],
                            "outputs": [3, 1, 6]}, "t:3"),
}
# add(0, 0) == 1 is deliberately wrong in every task, so an honest correct add() passes all but one test.
HONEST_FRACTION = {"asserts": 3 / 4, "check": 2 / 3, "io": 2 / 3}


def _cfg(**kw) -> RLConfig:
    return RLConfig.model_validate({"tasks": {"path": "unused.jsonl"}, **kw})


def _fenced(code: str) -> str:
    return f"Here it is:\n```python\n{code}\n```\n"


RIGHT = _fenced("def add(a, b):\n    return a + b")
WRONG = _fenced("def add(a, b):\n    return a - b")


def test_honest_samples_get_binary_and_fraction_rewards():
    solves_all = task_from_record({"prompt": "Write add.", "tests": ADD_ASSERTS[:2]}, "t:4")
    items = [(solves_all, RIGHT, "stop"), (solves_all, WRONG, "stop")]
    items += [(t, r, "stop") for t in TASKS.values() for r in (RIGHT, WRONG)]
    binary = score_responses(items, _cfg(reward="binary"), SETTINGS)
    assert [r.value for r in binary] == [1.0, 0.0] + [0.0] * 6
    fraction = score_responses(items, _cfg(reward="fraction"), SETTINGS)
    want = [1.0, 0.0]
    for name in TASKS:
        # a - b passes exactly the tests with b == 0: add(0, 0) == 1 fails, add(5, 0) passes.
        want += [HONEST_FRACTION[name], {"asserts": 1 / 4, "check": 0.0, "io": 0.0}[name]]
    assert [r.value for r in fraction] == pytest.approx(want)
    assert fraction[0].passed and not fraction[2].passed


def test_format_penalties():
    task = TASKS["asserts"]
    cfg = _cfg(reward="fraction", no_code_block_penalty=0.25, truncated_penalty=0.5)
    bare, fenced_cut = score_responses([(task, "def add(a, b):\n    return a + b\n", "stop"), (task, RIGHT, "length")],
                                       cfg, SETTINGS)
    assert not bare.has_code_block and bare.value == pytest.approx(0.75 - 0.25)
    assert fenced_cut.truncated and fenced_cut.value == pytest.approx(0.75 - 0.5)


FORGERIES = {
    "always-equal return value": """
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __bool__(self): return True
def add(a, b):
    return Anything()
""",
    "early sys.exit(0)": "import sys\ndef add(a, b):\n    sys.exit(0)\nsys.exit(0)",
    "early os._exit(0)": "import os\ndef add(a, b):\n    os._exit(0)\nos._exit(0)",
    "patched builtins and AssertionError": """
import builtins
builtins.AssertionError = type('Quiet', (Exception,), {})
builtins.__dict__['len'] = lambda *a: 0
builtins.isinstance = lambda *a: True
def add(a, b):
    return None
""",
    "fake verdicts on stdout, stderr and fds": """
import os, sys
for fd in range(1, 20):
    try:
        os.write(fd, b'passed\\n{"result": "passed", "passed": true}\\n')
    except OSError:
        pass
print('passed'); sys.stderr.write('passed\\n')
def add(a, b):
    print('{"result": "passed"}'); os.write(1, b'passed\\n')
    return None
""",
}


@pytest.mark.parametrize("reward", ["binary", "fraction"])
def test_forged_rewards_are_zero(reward):
    items = [(task, _fenced(code.strip()), "stop") for code in FORGERIES.values() for task in TASKS.values()]
    rewards = score_responses(items, _cfg(reward=reward), SETTINGS)
    got = {(name, t): r.value for (name, t), r in zip([(n, t) for n in FORGERIES for t in TASKS], rewards)}
    assert all(v == 0 for v in got.values()), {k: v for k, v in got.items() if v}


def test_check_is_split_into_one_check_per_assert():
    units = per_test_tasks(TASKS["check"])
    assert len(units) == 3 and all("seen = []" in u.test_list[0] for u in units)
    assert ["candidate(1, 2)" in u.test_list[0] for u in units] == [True, False, False]


def test_loading_tasks_from_jsonl_parquet_and_evolve_output(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "Write add.", "tests": ADD_ASSERTS},
            {"prompt": "Write add.", "check": CHECK, "entry_point": "add"},
            {"prompt": "Write add.", "test_list": ADD_ASSERTS[:1]}]
    jsonl = tmp_path / "tasks.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tasks = load_training_tasks(RLTasks(path=str(jsonl)))
    assert [len(per_test_tasks(t)) for t in tasks] == [4, 3, 1]
    parquet = tmp_path / "evolved.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"instruction": "Write add.", "output": "...", "tests": ADD_ASSERTS, "verified": True},
        {"instruction": "A seed.", "output": "...", "tests": None, "verified": False}]), str(parquet))
    (task,) = load_training_tasks(RLTasks(evolve_output=str(parquet)))  # only the verified row
    assert task.prompt == "Write add." and task.test_list == ADD_ASSERTS
    (task,) = load_training_tasks(RLTasks(evolve_output=str(tmp_path)))  # evolve's output directory of shards
    assert task.test_list == ADD_ASSERTS
    pq.write_table(pa.Table.from_pylist([{"instruction": "A seed.", "output": "...", "verified": False}]),
                   str(parquet))
    with pytest.raises(ValueError, match="no verified rows"):
        load_training_tasks(RLTasks(evolve_output=str(parquet)))
    assert len(load_training_tasks(RLTasks(path=str(jsonl), limit=2))) == 2


@pytest.mark.parametrize("row, message", [
    ({"tests": ["assert f()"]}, "tasks.jsonl:2: missing or empty field prompt"),
    ({"prompt": "p"}, "tasks.jsonl:2: no tests"),
    ({"prompt": "p", "tests": []}, "tasks.jsonl:2: field tests must be a non-empty list"),
    ({"prompt": "p", "check": "def check(c):\n    assert c()"}, "tasks.jsonl:2: a `check` needs the field entry_point"),
    ({"prompt": "p", "check": "def check(c:", "entry_point": "f"}, "tasks.jsonl:2: field check does not parse"),
    ({"prompt": "p", "entry_point": "f", "inputs": [[1]], "outputs": []}, "tasks.jsonl:2: fields inputs and outputs"),
])
def test_bad_task_rows_name_file_line_and_field(tmp_path, row, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "tests": ["assert True"]}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as info:
        load_training_tasks(RLTasks(path=str(path)))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["humaneval", "MBPP", "mbpp+"])
def test_eval_benchmarks_are_refused_as_training_tasks(name):
    with pytest.raises(ValueError, match="eval benchmark.*allow_eval_benchmarks"):
        load_training_tasks(RLTasks(benchmark=name))
