"""Serve follows a LoRA run that keeps only adapters (checkpoint.merge_adapter: false): each new
adapter checkpoint is verified, loaded on its base and swapped in; a truncated adapter is refused and
the served one stays. No Ray: the service itself, as a replica runs it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from raywiz.artifacts import Kind, ModelInfo, RunLayout, write_manifest
from raywiz.modeling import build_model, load_tokenizer

from .test_api import start_service


def _adapter_checkpoint(run_dir: Path, base: Path, step: int) -> str:
    """checkpoint_N/ with only adapter/ (no hf/), written by raywiz's own export, then sealed."""
    from peft import get_peft_model

    from raywiz.training.adapters import export_adapter, lora_config
    from raywiz.train.config import PeftConfig

    torch.manual_seed(step)
    model = get_peft_model(build_model(str(base)), lora_config(PeftConfig(method="lora", r=4), "gpt_bigcode"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # peft starts B at zero (a no-op adapter): make each step's differ
    ckpt = RunLayout(str(run_dir)).checkpoint(step)
    export_adapter(model, model.state_dict(), ckpt.adapter,
                   ModelInfo(step=step, run=run_dir.name, base_model=str(base), template="wizardcoder"),
                   load_tokenizer("tiny-gpt-bigcode"))
    write_manifest(ckpt.path, kind=Kind.TRAIN_CHECKPOINT, meta={"step": step})
    return ckpt.adapter


def _logits(loaded) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(torch.tensor([[5, 17, 99, 3]])).logits


def test_serve_follows_adapter_checkpoints_and_swaps_them(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base"
    build_model("tiny-gpt-bigcode", seed=3).save_pretrained(base)
    run_dir = tmp_path / "runs" / "lora"
    first = _adapter_checkpoint(run_dir, base, 2)
    service = start_service(run_dir)
    try:
        assert service.pool.current.name == "checkpoint_00000002"
        on_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), first).eval()
        with torch.no_grad():
            torch.testing.assert_close(_logits(service.pool.current), on_base(torch.tensor([[5, 17, 99, 3]])).logits,
                                       rtol=1e-4, atol=1e-4)
        before = _logits(service.pool.current)

        weights = os.path.join(_adapter_checkpoint(run_dir, base, 3), "adapter_model.safetensors")
        with open(weights, "r+b") as f:  # an interrupted copy: the manifest must catch it
            f.truncate(os.path.getsize(weights) // 2)
        assert service.follow_once() is None
        assert service.pool.current.name == "checkpoint_00000002"
        assert "checkpoint_00000003" in {r["name"] for r in service.status()["refused"]}

        _adapter_checkpoint(run_dir, base, 4)
        swapped = service.follow_once()
        assert swapped is not None and swapped.name == "checkpoint_00000004" == service.pool.current.name
        assert (_logits(swapped) - before).abs().max() > 1e-3  # another adapter is being served
    finally:
        service.close()
