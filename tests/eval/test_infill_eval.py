"""`raywiz eval run` on the infilling benchmarks: a local FIM model (the tiny model with StarCoder's FIM
tokens) continues each task's FIM prompt, an OpenAI-compatible server gets `suffix`, both are scored in
the sandbox with pass@k; a model without FIM tokens is refused naming the benchmark and the model."""

import json
from pathlib import Path

import pytest

from raywiz.artifacts import write_json_atomic
from raywiz.benchmarks import load_tasks
from raywiz.config import parse_job
from raywiz.data.fim import FimUnavailable
from tests.data.fim_tokenizer import STARCODER, save_fim_tokenizer
from tests.datafiles import require_data
from tests.eval.conftest import answering_server

pytestmark = pytest.mark.slow
BENCH = "humaneval-infill-single"


@pytest.fixture(scope="module")
def infill_data():
    return require_data(BENCH)


def tiny_model(path: Path, with_fim: bool) -> str:
    from raywiz.modeling import build_model, load_tokenizer

    model = build_model("tiny-gpt-bigcode", seed=0)
    if with_fim:
        model.resize_token_embeddings(len(load_tokenizer(str(save_fim_tokenizer(path)))))
        write_json_atomic(str(path / "raywiz.json"), {"step": 1, "fim": STARCODER.to_dict()})
    else:
        load_tokenizer("tiny-gpt-bigcode").save_pretrained(path)
    model.save_pretrained(path)
    return str(path)


def evaluate(tmp_path, generation: dict, limit: int = 2, benchmarks=(BENCH,), model: str = "unused"):
    from raywiz.benchmarks.evaluate import evaluate_model

    job = parse_job({"name": "infill", "storage": str(tmp_path), "eval": {
        "benchmarks": list(benchmarks), "limit": limit, "k": [1, 2], "generation": generation}})
    return evaluate_model(model, job.eval, job.model, out_dir=str(tmp_path / "out"))


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_local_fim_model_generates_middles_from_fim_prompts(tmp_path, infill_data):
    model = tiny_model(tmp_path / "fim-model", with_fim=True)
    result = evaluate(tmp_path, {"backend": "transformers", "greedy": False, "n": 2, "max_tokens": 6,
                                 "temperature": 1.0}, model=model)
    summary = result["benchmarks"][BENCH]
    assert summary["n_tasks"] == 2 and summary["n_samples"] == 4 and {"pass@1", "pass@2"} <= set(summary)
    tasks = {t.task_id: t for t in load_tasks(BENCH)[:2]}
    out = tmp_path / "out" / BENCH
    samples = read_rows(out / "samples.jsonl")
    assert len(samples) == 4 and {s["task_id"] for s in samples} == set(tasks)
    for s in samples:
        t = tasks[s["task_id"]]
        assert s["prompt"] == f"<fim_prefix>{t.prompt}<fim_suffix>{t.suffix}<fim_middle>"
        assert s["completion"] == s["raw"]  # no post-processing
    verdicts = read_rows(out / "results.jsonl")
    assert len(verdicts) == 4 and all("passed" in v for v in verdicts)


def test_a_model_without_fim_tokens_is_refused_naming_benchmark_and_model(tmp_path, infill_data):
    model = tiny_model(tmp_path / "plain-model", with_fim=False)
    with pytest.raises(FimUnavailable) as e:
        evaluate(tmp_path, {"backend": "transformers", "max_tokens": 4}, model=model)
    assert BENCH in str(e.value) and model in str(e.value)


@pytest.fixture
def middle_server():
    """Answers a completions request with the canonical middle of the task whose prefix and suffix it got."""
    middles = {(t.prompt, t.suffix): t.solution for t in load_tasks(BENCH)[:3]}
    bodies: list[dict] = []

    def answer(body: dict) -> str:
        bodies.append(body)
        return middles.get((body["prompt"], body.get("suffix")), "")

    with answering_server(answer) as url:
        yield bodies, url


def test_the_openai_backend_sends_suffix_and_scores_the_middles(tmp_path, infill_data, middle_server):
    bodies, url = middle_server
    result = evaluate(tmp_path, {"backend": "openai", "base_url": url, "model": "starcoder", "api_key_env": None},
                      limit=3)
    assert result["benchmarks"][BENCH]["pass@1"] == 1.0  # the middles, placed between prefix and suffix, pass
    tasks = load_tasks(BENCH)[:3]
    assert sorted((b["prompt"], b["suffix"]) for b in bodies) == sorted((t.prompt, t.suffix) for t in tasks)
    assert all("stop" not in b for b in bodies)  # no completion-style stop words cut a middle
