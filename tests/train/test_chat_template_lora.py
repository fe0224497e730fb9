"""A LoRA run with train.data.template.name: chatml on raywiz's test tokenizer (which has no chat template)
over a mix of multi-turn ShareGPT and Alpaca sources: it trains, exports a small adapter and a merged hf/
that transformers loads, whose tokenizer carries ChatML (tokens added, embeddings grown), and whose chat
endpoint, served, renders ChatML."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from raywiz.artifacts import Kind, RunLayout, check_manifest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
STEPS = 8
CHATML = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
          "<|im_start|>assistant\n")


def _write_sources(tmp: Path) -> tuple[Path, Path]:
    chats = tmp / "chats.jsonl"
    rows = [{"conversations": [{"from": "human", "value": f"Write f{i}."}, {"from": "gpt", "value": f"def f{i}(): pass"},
                               {"from": "human", "value": "Add a docstring."},
                               {"from": "gpt", "value": f'def f{i}():\n    """f{i}."""'}]} for i in range(4)]
    chats.write_text("".join(json.dumps(r) + "\n" for r in rows))
    alpaca = tmp / "alpaca.jsonl"
    alpaca.write_text("".join(json.dumps({"instruction": f"Return {i}.", "output": f"return {i}"}) + "\n"
                              for i in range(4)))
    return chats, alpaca


def write_job(tmp_path: Path) -> Path:
    """The job (and its base model and sources) under tmp_path; it writes its run to tmp_path/runs."""
    from raywiz.modeling import build_model

    base = tmp_path / "base"
    build_model("tiny-gpt-bigcode", seed=3).save_pretrained(base)
    chats, alpaca = _write_sources(tmp_path)
    job = tmp_path / "chatml.yaml"
    job.write_text(f"""
name: chatml
storage: {tmp_path / 'runs'}
model: {{name_or_path: {base}, tokenizer: {REPO / 'raywiz/assets/tokenizer'}}}
train:
  data:
    sources: [{{path: {chats}, formatting: sharegpt}}, {{path: {alpaca}}}]
    template: {{name: chatml}}
    max_length: 128
    pack: false
    on_bad_row: error
  optim: {{max_steps: {STEPS}, epochs: 10, global_batch_size: 2, micro_batch_size: 2, lr: 1.0e-2, warmup_steps: 1}}
  scaling: {{num_workers: 1}}
  checkpoint: {{every_n_steps: {STEPS // 2}, num_to_keep: 2}}
  peft: {{method: lora, r: 4, alpha: 16, dropout: 0.0}}
""")
    return job


def test_lora_with_chatml_on_a_tokenizer_without_it(one_worker_runs):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from raywiz.modeling import build_model

    home = one_worker_runs["chatml"]  # the job ran (tests/train/conftest.py), beside test_fim_train's
    layout = RunLayout(str(home / "runs" / "chatml"))
    report = json.loads(Path(layout.data_report).read_text())
    assert report["n_bad"] == 0 and report["n_samples"] == 8  # every multi-turn row trains
    losses = [json.loads(line)["loss"] for line in open(layout.metrics)]
    assert len(losses) == STEPS and losses[-1] < losses[0], losses

    ckpt = layout.latest_checkpoint()
    assert check_manifest(ckpt.adapter, kind=Kind.ADAPTER_EXPORT).complete
    assert check_manifest(ckpt.hf, kind=Kind.HF_EXPORT).complete
    adapter_bytes = os.path.getsize(os.path.join(ckpt.adapter, "adapter_model.safetensors"))
    assert adapter_bytes < os.path.getsize(os.path.join(ckpt.hf, "model.safetensors"))
    # The two ChatML rows trained (peft's trainable tokens) and are all of the embedding the adapter holds.
    saved = load_file(os.path.join(ckpt.adapter, "adapter_model.safetensors"))
    rows = {k: v for k, v in saved.items() if "trainable_tokens" in k}
    assert rows and all(v.shape == (2, 64) for v in rows.values())
    assert not any(v.shape[0] >= 2048 for v in saved.values())  # never the whole (grown) embedding
    assert adapter_bytes < 2050 * 64 * 4  # smaller than one embedding matrix
    halfway = load_file(os.path.join(layout.checkpoint(STEPS // 2).adapter, "adapter_model.safetensors"))
    assert all(not torch.equal(v, halfway[k]) for k, v in rows.items())  # they trained on between checkpoints
    merged_rows = AutoModelForCausalLM.from_pretrained(ckpt.hf).get_input_embeddings().weight[2048:]
    torch.testing.assert_close(merged_rows, next(iter(rows.values())).to(merged_rows.dtype))  # and are in hf/
    # adapter/ alone loads on the original base (grown to the adapter's tokenizer) into hf/'s model.
    ids = torch.tensor([[2048, 5, 17, 2049, 99]])
    torch.testing.assert_close(build_model(ckpt.adapter).eval()(ids).logits,
                               AutoModelForCausalLM.from_pretrained(ckpt.hf).eval()(ids).logits, rtol=1e-3, atol=1e-4)
    assert json.loads(Path(ckpt.hf, "raywiz.json").read_text())["template"] == "chatml"

    tok = AutoTokenizer.from_pretrained(ckpt.hf)
    model = AutoModelForCausalLM.from_pretrained(ckpt.hf)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert len(tok) == 2050 == model.get_input_embeddings().weight.shape[0]
    assert tok.eos_token == "<|im_end|>" and GenerationConfig.from_pretrained(ckpt.hf).eos_token_id == end
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == CHATML

    # Served: the chat endpoint renders ChatML (its prompt is exactly CHATML's tokens).
    openai = pytest.importorskip("openai")
    from tests.serve.test_fim_serve import serve_run

    with serve_run(home / "runs" / "chatml") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model="latest", messages=messages, max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens == len(tok(CHATML, add_special_tokens=False)["input_ids"])

