"""A short `raywiz train` on a code source with train.data.fim.rate 1.0 (tiny model, one CPU worker, a
tokenizer with StarCoder's FIM tokens): it trains, the model grows to the tokenizer's size, and hf/
records the FIM tokens in raywiz.json beside a tokenizer that has them; served, it answers a `suffix`
request (the official openai SDK) with its FIM prompt, seen through echo + logprobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raywiz.artifacts import RunLayout
from tests.data.fim_tokenizer import STARCODER, save_fim_tokenizer

pytestmark = pytest.mark.slow
STEPS = 6


def write_job(tmp_path: Path) -> Path:
    """The job (and its code files and FIM tokenizer) under tmp_path; it writes its run to tmp_path/runs."""
    tok_dir = save_fim_tokenizer(tmp_path / "tokenizer")
    code = tmp_path / "code"
    code.mkdir()
    for i in range(4):
        (code / f"m{i}.py").write_text(f"def double_{i}(x):\n    return 2 * x + {i}\n")
    job = tmp_path / "fim.yaml"
    job.write_text(f"""
name: fim
storage: {tmp_path / 'runs'}
model: {{name_or_path: tiny-gpt-bigcode, tokenizer: {tok_dir}}}
train:
  data:
    sources: [{{path: "{code}/*.py", formatting: code}}]
    fim: {{rate: 1.0, spm_rate: 0.5}}
    max_length: 64
    pack: false
  optim: {{max_steps: {STEPS}, epochs: 10, global_batch_size: 2, micro_batch_size: 2, lr: 1.0e-2, warmup_steps: 1}}
  scaling: {{num_workers: 1}}
  checkpoint: {{every_n_steps: {STEPS}, num_to_keep: 1}}
""")
    return job


def test_train_on_fim_code_records_the_tokens(one_worker_runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    home = one_worker_runs["fim"]  # the job ran (tests/train/conftest.py), beside test_chat_template_lora's
    layout = RunLayout(str(home / "runs" / "fim"))
    losses = [json.loads(line)["loss"] for line in open(layout.metrics)]
    assert len(losses) == STEPS and losses[-1] < losses[0], losses
    hf = layout.latest_checkpoint().hf
    info = json.loads(Path(hf, "raywiz.json").read_text())
    assert info["fim"] == STARCODER.to_dict()
    tok = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForCausalLM.from_pretrained(hf)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == 2052  # 2,048 + the 4 FIM tokens
    assert tok.convert_tokens_to_ids(STARCODER.middle) == 2049

    openai = pytest.importorskip("openai")
    from tests.serve.test_fim_serve import check_fim_prompt_is_echoed, serve_run

    with serve_run(home / "runs" / "fim") as url:
        check_fim_prompt_is_echoed(openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0))
