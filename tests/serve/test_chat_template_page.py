"""serve's page prompts a model trained with a chat template (train.data.template.name: chatml) through its
tokenizer's chat template, exactly as eval's build_prompt does for that checkpoint."""

from __future__ import annotations

from pathlib import Path

import requests

from raywiz.artifacts import write_manifest
from raywiz.benchmarks import load_tasks
from raywiz.benchmarks.prompts import build_prompt
from raywiz.data.template import with_chat_template
from raywiz.modeling import build_model, load_tokenizer

from .conftest import LocalServer, make_checkpoint
from .test_api import http_app, start_service


def test_the_page_prompts_a_chatml_model_as_eval_does(tmp_path, shared_data):
    run_dir = tmp_path / "runs" / "chatml"
    hf = Path(make_checkpoint(run_dir, 1, template="chatml"))
    tok = with_chat_template(load_tokenizer("tiny-gpt-bigcode"), "chatml")  # as train saves it in hf/
    tok.save_pretrained(hf)
    model = build_model("tiny-gpt-bigcode", seed=1)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(hf)
    write_manifest(str(hf), kind="hf_export", meta={"step": 1})  # sealed again over the new files
    humaneval = str(shared_data / "humaneval" / "HumanEval.jsonl.gz")
    service = start_service(run_dir, benchmarks={"humaneval": humaneval})
    try:
        with LocalServer(http_app(service)) as server:
            task = requests.get(f"{server.url}/api/task", params={"benchmark": "humaneval", "task_id": "HumanEval/0"}).json()
    finally:
        service.close()
    expected = build_prompt(load_tasks("humaneval", humaneval)[0], "wizardcoder", tokenizer=tok,
                            trained={"template": "chatml"})
    assert task["template"] == "chatml" and task["model_prompt"] == expected and task["stop"] == []
    assert expected.startswith("<|im_start|>user\n") and expected.endswith("<|im_start|>assistant\n")
