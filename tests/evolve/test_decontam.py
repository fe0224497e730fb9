import gzip
import json

import pytest

from raywiz.evolve.config import DecontamConfig
from raywiz.evolve.decontam import Decontaminator, NgramIndex, ReferenceText, decontaminate_file


@pytest.fixture(scope="module")
def humaneval_refs(shared_data):
    refs = []
    with gzip.open(shared_data / "humaneval/HumanEval.jsonl.gz", "rt") as f:
        for line in f:
            t = json.loads(line)
            refs.append(ReferenceText("humaneval", t["task_id"], "prompt", t["prompt"]))
            refs.append(ReferenceText("humaneval", t["task_id"], "solution", t["canonical_solution"]))
    return refs


def test_planted_benchmark_text_is_found_with_its_task(humaneval_refs):
    index = NgramIndex(humaneval_refs, n=10, min_tokens=8)
    prompt = next(r.text for r in humaneval_refs if r.task_id == "HumanEval/12" and r.field == "prompt")
    # An evolved instruction that paraphrases around the benchmark's docstring.
    sample = "Please make this harder. " + prompt + "\nAlso handle None inputs and log every step."
    hits = index.matches(sample, threshold=0.5)
    assert hits and hits[0].task_id == "HumanEval/12" and hits[0].field == "prompt" and hits[0].score > 0.9


def test_seeds_that_share_only_common_phrases_are_clean(humaneval_refs, shared_data):
    index = NgramIndex(humaneval_refs, n=10, min_tokens=8)
    seeds = json.loads((shared_data / "codealpaca/code_alpaca_2k.json").read_text())[:300]
    flagged = [s for s in seeds if index.matches(s["instruction"] + "\n" + s["output"], 0.5)]
    assert len(flagged) <= 3  # Code Alpaca predates HumanEval; a handful of stock snippets at most


def test_short_references_count_only_above_min_tokens():
    refs = [ReferenceText("b", "t1", "solution", "return a + b"),  # 3 words: ignored
            ReferenceText("b", "t2", "solution", "return sorted(set(l1) & set(l2)) for common items")]
    index = NgramIndex(refs, n=10, min_tokens=8)
    assert len(index) == 1
    assert not index.matches("def add(a, b): return a + b", 0.5)
    assert index.matches("x = 1\nreturn sorted(set(l1) & set(l2)) for common items\n", 0.5)[0].task_id == "t2"


def test_decontaminate_a_dataset_file(tmp_path, humaneval_refs):
    prompt = next(r.text for r in humaneval_refs if r.task_id == "HumanEval/0" and r.field == "prompt")
    rows = [{"instruction": "Reverse a linked list in place.", "output": "def rev(h): ..."},
            {"instruction": "Complete this function.", "input": prompt, "output": "pass"},
            {"instruction": "Sum the squares of a list.", "output": "return sum(x * x for x in xs)"}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    decon = Decontaminator.from_config(DecontamConfig(benchmarks=["humaneval"]), references=humaneval_refs)
    report = decontaminate_file([str(data)], decon, clean_output=str(tmp_path / "clean.jsonl"))
    assert report["rows"] == 3 and report["contaminated_rows"] == 1
    assert report["flagged"][0]["task_id"] == "HumanEval/0" and report["flagged"][0]["where"].endswith("line 2")
    assert report["benchmark_tasks_hit"] == {"humaneval": 1}
    assert report["benchmark_tasks_checked"] == {"humaneval": 164}
    clean = [json.loads(line) for line in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in clean] == [rows[0]["instruction"], rows[2]["instruction"]]


@pytest.mark.slow
def test_embedding_similarity_flags_a_verbatim_copy(humaneval_refs):
    refs = [r for r in humaneval_refs if r.field == "prompt"][:20]
    cfg = DecontamConfig(embedding_model="tiny-gpt-bigcode", embedding_threshold=0.999, threshold=1.0)
    decon = Decontaminator.from_config(cfg, references=refs)
    decon.ngram_index = NgramIndex([], 10)  # embeddings alone
    copy = refs[7].text
    [hit] = decon.check([copy])
    assert hit is not None and hit.method == "embedding" and hit.task_id == refs[7].task_id


def test_benchmark_loader_wiring(shared_data):
    from raywiz.evolve.decontam import load_references

    paths = {"humaneval": str(shared_data / "humaneval/HumanEval.jsonl.gz"),
             "mbpp": str(shared_data / "mbpp/mbpp.test.jsonl"), "ds1000": str(shared_data / "no-ds1000.jsonl.gz")}
    refs, skipped = load_references(["humaneval", "mbpp", "ds1000"], paths, on_missing="warn")
    tasks = {(r.benchmark, r.task_id) for r in refs}
    assert sum(b == "humaneval" for b, _ in tasks) == 164 and sum(b == "mbpp" for b, _ in tasks) == 500
    assert {r.field for r in refs} == {"prompt", "solution"}
    assert list(skipped) == ["ds1000"]
    with pytest.raises(RuntimeError, match="ds1000"):
        load_references(["ds1000"], paths, on_missing="error")


def test_cli_decontam_command(tmp_path, shared_data, capsys):
    from raywiz.cli import main

    mbpp = [json.loads(line) for line in (shared_data / "mbpp/mbpp.test.jsonl").read_text().splitlines()[:3]]
    rows = [{"instruction": "Write a function to add two numbers.", "output": "def add(a, b):\n    return a + b"},
            {"instruction": mbpp[2]["text"], "output": mbpp[2]["code"]}]  # an MBPP task, verbatim
    data = tmp_path / "external.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report_path = tmp_path / "report.json"
    rc = main(["evolve", "decontam", str(data), "--benchmarks", "humaneval,mbpp",
               "--data-path", f"humaneval={shared_data / 'humaneval/HumanEval.jsonl.gz'}",
               "--data-path", f"mbpp={shared_data / 'mbpp/mbpp.test.jsonl'}", "--report", str(report_path)])
    assert rc == 1  # contamination found, like a linter
    report = json.loads(report_path.read_text())
    assert report["contaminated_rows"] == 1 and report["flagged"][0]["task_id"] == str(mbpp[2]["task_id"])
    assert json.loads(capsys.readouterr().out)["benchmark_tasks_hit"] == {"humaneval": 0, "mbpp": 1}
    assert main(["evolve", "decontam", str(data), "--benchmarks", "humaneval", "--data-path",
                 f"humaneval={shared_data / 'humaneval/HumanEval.jsonl.gz'}"]) == 0
