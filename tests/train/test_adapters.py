"""LoRA/DoRA with peft on tiny models: what trains, the adapter export (peft loads it), the merge."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from raywiz.artifacts import Kind, ModelInfo, check_manifest
from raywiz.modeling import build_model
from raywiz.training import adapters
from raywiz.train.config import PeftConfig


@pytest.mark.parametrize("name,expected", [
    ("tiny-gpt-bigcode", {"c_attn", "c_proj", "c_fc"}),
    ("tiny-llama", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ("tiny-qwen2", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
])
def test_auto_targets_per_architecture_and_only_the_adapter_trains(name, expected):
    model = adapters.apply_adapter(build_model(name, seed=0), PeftConfig(method="lora", r=4, alpha=8))
    wrapped = {n.split(".")[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == expected
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert adapters.target_modules(PeftConfig(method="lora", target_modules=["c_attn"]), "gpt_bigcode") == ["c_attn"]
    with pytest.raises(ValueError, match="no automatic choice for model type 'bert'"):
        adapters.target_modules(PeftConfig(method="lora"), "bert")


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapter_export_loads_with_peft_and_equals_the_merged_model(tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = adapters.apply_adapter(build_model("tiny-gpt-bigcode", seed=1), PeftConfig(method=method, r=4, alpha=8))
    with torch.no_grad():  # a "trained" adapter: LoRA's B starts at zero, which would make the test vacuous
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn_like(p) * 0.05)
    full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = tmp_path / "adapter"
    adapters.export_adapter(model, full, str(out), ModelInfo(step=3, run="r", base_model="tiny-gpt-bigcode"))
    assert check_manifest(str(out), kind=Kind.ADAPTER_EXPORT).complete
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is (method == "dora")

    ids = torch.tensor([[5, 17, 99, 3, 250, 7]])
    expected = model.eval()(ids).logits
    base = build_model("tiny-gpt-bigcode", seed=1)
    loaded = PeftModel.from_pretrained(base, str(out)).eval()
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=1e-4, atol=1e-5)

    merged_dir = tmp_path / "hf"
    plain = build_model("tiny-gpt-bigcode", seed=1)
    plain.load_state_dict(adapters.merged_model(model, full).state_dict())
    plain.save_pretrained(merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-4, atol=1e-5)
    assert not any("lora" in k for k in merged.state_dict())


def test_an_empty_or_truncated_adapter_save_fails(tmp_path):
    model = adapters.apply_adapter(build_model("tiny-gpt-bigcode", seed=1), PeftConfig(method="lora", r=4))
    base_only = {k: v for k, v in model.state_dict().items() if "lora_" not in k}  # what an ungathered save sees
    with pytest.raises(RuntimeError, match="the adapter has no weights"):
        adapters.export_adapter(model, base_only, str(tmp_path / "a"), ModelInfo(step=1))
    out = tmp_path / "b"
    adapters.export_adapter(model, model.state_dict(), str(out), ModelInfo(step=1))
    weights = out / "adapter_model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 3)
    assert "adapter_model.safetensors has" in check_manifest(str(out), kind=Kind.ADAPTER_EXPORT).reason


def test_qlora_without_bitsandbytes_or_on_a_random_config_is_refused_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'raywiz\[qlora\]'"):
        adapters.quantization_config(PeftConfig(method="qlora"))
    monkeypatch.undo()
    pytest.importorskip("bitsandbytes")
    with pytest.raises(ValueError, match="cannot load quantized"):
        build_model("tiny-gpt-bigcode", quantization_config=adapters.quantization_config(PeftConfig(method="qlora")))


def test_qlora_runs_as_zero2_whatever_stage_is_asked():
    from raywiz.train.config import TrainConfig
    from raywiz.training.deepspeed_engine import zero_stage

    tc = TrainConfig.model_validate({"data": {"paths": ["x.jsonl"]}, "peft": {"method": "qlora"}, "deepspeed": {"stage": 3, "resident_params": "never"},
                                     "scaling": {"num_workers": 2}})
    assert zero_stage(tc, on_gpu=True, param_bytes=10**9, gpu_bytes=80 * 10**9) == 2
    tc.peft.method = "lora"
    assert zero_stage(tc, on_gpu=True, param_bytes=10**9, gpu_bytes=80 * 10**9) == 3


def test_an_adapter_directory_loads_for_inference_on_its_base(tmp_path):
    """What eval and serve do with a checkpoint that keeps only its adapter: base (by name) + adapter, merged."""
    from raywiz.artifacts import CheckpointDir, RunLayout, write_manifest
    from raywiz.modeling import is_adapter_dir

    base_dir = tmp_path / "base"  # a real model directory, as a hub name would resolve to
    build_model("tiny-gpt-bigcode", seed=2).save_pretrained(base_dir)
    model = adapters.apply_adapter(build_model(str(base_dir)), PeftConfig(method="lora", r=4))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)
    ckpt = RunLayout(str(tmp_path / "run")).checkpoint(7)
    adapters.export_adapter(model, model.state_dict(), ckpt.adapter, ModelInfo(step=7, base_model=str(base_dir)))
    write_manifest(ckpt.path, kind=Kind.TRAIN_CHECKPOINT)
    assert is_adapter_dir(ckpt.adapter) and ckpt.model_dir == ckpt.adapter  # no hf/: the adapter is the model
    assert [c.step for c in RunLayout(str(tmp_path / "run")).checkpoints(complete=True)] == [7]
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    loaded = build_model(ckpt.adapter).eval()
    torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits, rtol=1e-4, atol=1e-5)
    assert CheckpointDir(ckpt.path).step == 7


def test_tokens_a_template_added_train_in_a_small_adapter_that_loads_on_the_original_base(tmp_path):
    """ChatML on a tokenizer without it grows the embedding by two rows: peft's trainable tokens train those
    rows alone (the rest of the embedding stays frozen), adapter/ holds only them, and loads on the original
    base (grown to the adapter's tokenizer) into the trained model."""
    from safetensors.torch import load_file

    from raywiz.artifacts import RunLayout
    from raywiz.modeling import load_tokenizer

    base_dir = tmp_path / "base"
    build_model("tiny-gpt-bigcode", seed=2).save_pretrained(base_dir)
    tok = load_tokenizer("tiny-gpt-bigcode")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    model = build_model(str(base_dir))
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tok))
    torch.manual_seed(0)
    model = adapters.apply_adapter(model, PeftConfig(method="lora", r=4), new_token_rows=range(old, len(tok)))
    embedding = model.get_input_embeddings()
    frozen = embedding.weight.detach().clone()
    new_rows = {n: p for n, p in model.named_parameters() if "trainable_tokens" in n}
    assert [tuple(p.shape) for p in new_rows.values()] == [(2, 64)]
    before = {n: p.detach().clone() for n, p in new_rows.items()}
    ids = torch.tensor([[old, 5, 17, old + 1, 99, old]])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(not torch.equal(p, before[n]) for n, p in new_rows.items())  # the new rows trained
    after = embedding.weight.detach()  # the effective embedding: base rows with the trained new rows in
    assert torch.equal(after[:old], frozen[:old]) and not torch.equal(after[old:], frozen[old:])

    ckpt = RunLayout(str(tmp_path / "run")).checkpoint(3)
    adapters.export_adapter(model, model.state_dict(), ckpt.adapter, ModelInfo(step=3, base_model=str(base_dir)), tok)
    saved = load_file(os.path.join(ckpt.adapter, "adapter_model.safetensors"))
    assert {tuple(v.shape) for k, v in saved.items() if "lora_" not in k} == {(2, 64)}  # (input and tied output)
    adapter_bytes = os.path.getsize(os.path.join(ckpt.adapter, "adapter_model.safetensors"))
    assert adapter_bytes < frozen.numel() * frozen.element_size() / 4  # rows, not the whole embedding
    loaded = build_model(ckpt.adapter).eval()
    assert loaded.get_input_embeddings().weight.shape[0] == len(tok)
    torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits, rtol=1e-4, atol=1e-5)
