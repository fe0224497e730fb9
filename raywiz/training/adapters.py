"""Parameter-efficient fine-tuning with peft: LoRA, DoRA, QLoRA; the adapter export and the merge.

    model = apply_adapter(model, job.train.peft)           # before DeepSpeed wraps it
    export_adapter(model, full_state_dict, ckpt.adapter)    # rank 0, from ZeRO-3's gathered weights
    export_merged(model, full_state_dict, ckpt.hf, ...)     # a full model transformers loads

``checkpoint_*/adapter/`` is peft's own format: ``PeftModel.from_pretrained(base, dir)`` loads it. It
is size-checked like the full export: an empty or truncated adapter save (an open bug in peers under
ZeRO-3, where the adapter weights are partitioned) fails here instead of at load time.
"""

from __future__ import annotations

import glob
import os
from typing import Sequence

import torch

from raywiz.artifacts import Kind, ModelInfo, write_manifest

# peft's names for each architecture raywiz supports: attention and MLP projections.
AUTO_TARGETS = {
    "gpt_bigcode": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def target_modules(peft_cfg, model_type: str) -> list[str]:
    if peft_cfg.target_modules != "auto":
        return list(peft_cfg.target_modules)
    if model_type not in AUTO_TARGETS:
        raise ValueError(f"train.peft.target_modules: no automatic choice for model type {model_type!r}; "
                         f"list the module names (known: {', '.join(AUTO_TARGETS)})")
    return AUTO_TARGETS[model_type]


def lora_config(peft_cfg, model_type: str, new_token_rows: Sequence[int] = ()):
    """peft's config. `new_token_rows`: embedding rows of tokens the training tokenizer added (a chat
    template's): peft's trainable tokens train those rows alone and save them in the adapter (a few KB),
    where the rest of the frozen embedding would leave them at their initial value."""
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=peft_cfg.r, lora_alpha=peft_cfg.alpha,
                      lora_dropout=peft_cfg.dropout, target_modules=target_modules(peft_cfg, model_type),
                      use_dora=peft_cfg.method == "dora", bias="none",
                      trainable_token_indices=list(new_token_rows) or None)


def quantization_config(peft_cfg, compute_dtype: torch.dtype = torch.bfloat16):
    """QLoRA: the base weights load in 4-bit NF4 (bitsandbytes), double-quantized; the adapter trains in the
    run's dtype (bf16 on GPU). bitsandbytes also runs 4-bit on CPU (slowly): what the CPU tests use."""
    if peft_cfg.method != "qlora":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ImportError("train.peft.method: qlora needs bitsandbytes: pip install 'raywiz[qlora]'") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def is_quantized(model) -> bool:
    """A base loaded in 4 or 8 bits (QLoRA): its packed weights are not the model's real weights."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def apply_adapter(model, peft_cfg, gradient_checkpointing: bool = False, new_token_rows: Sequence[int] = ()):
    """Wrap the model with a fresh adapter; only the adapter's weights (and `new_token_rows`) train."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if peft_cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return get_peft_model(model, lora_config(peft_cfg, model.config.model_type, new_token_rows))


def adapter_state_dict(model, full_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's weights, as peft saves them, out of the whole model's (gathered) state dict (never the
    whole embedding: a template's added rows are trainable tokens)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model, full_state_dict, save_embedding_layers=False).items()}


def export_adapter(model, full_state_dict: dict[str, torch.Tensor], out_dir: str, info: ModelInfo,
                   tokenizer=None) -> None:
    """Rank 0: write ``adapter/`` in peft's format (+ the tokenizer, so it serves on its own), check its
    size, seal it (Kind.ADAPTER_EXPORT)."""
    adapter = adapter_state_dict(model, full_state_dict)
    expected = sum(v.numel() * v.element_size() for v in adapter.values())
    if not adapter or expected == 0:
        raise RuntimeError(f"{out_dir}: the adapter has no weights (was the state dict gathered from ZeRO-3?)")
    os.makedirs(out_dir, exist_ok=True)
    if info.base_model:  # what `PeftModel.from_pretrained` and raywiz's loaders put it on
        model.peft_config["default"].base_model_name_or_path = info.base_model
    # The whole state dict: peft picks the adapter's part itself (trainable tokens' keys need their full names).
    # No embedding layers: peft would save the whole grown embedding; the added rows are the trainable
    # tokens, and loaders grow the base to the adapter's tokenizer (raywiz.modeling.load_adapter_merged).
    model.save_pretrained(out_dir, state_dict=full_state_dict, safe_serialization=True, save_embedding_layers=False)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    info.write(out_dir)
    n_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(out_dir, "*.safetensors")))
    if n_bytes < 0.5 * expected:
        raise RuntimeError(f"{out_dir}: adapter_model.safetensors holds {n_bytes} bytes but the adapter is {expected}")
    write_manifest(out_dir, kind=Kind.ADAPTER_EXPORT, meta={"step": info.step, "run": info.run,
                                                             "base_model": info.base_model})


def merged_model(model, full_state_dict: dict[str, torch.Tensor]):
    """A plain CPU model (transformers') with the adapter folded in (W + scale * B @ A): what hf/ holds.

    The trained weights are loaded into a CPU copy of the wrapped model, which peft then merges and
    unloads: peft's own arithmetic (LoRA and DoRA), not a hand-written one.
    """
    if is_quantized(model.get_base_model()):
        return _merged_on_unquantized_base(model, full_state_dict)
    cpu_model = _cpu_twin(model)
    missing = {n for n, _ in cpu_model.named_parameters()} - set(full_state_dict)
    if missing:
        raise RuntimeError(f"cannot merge the adapter: the gathered weights lack {sorted(missing)[:3]}...")
    cpu_model.load_state_dict({k: v.detach().cpu() for k, v in full_state_dict.items()}, strict=False)
    return cpu_model.merge_and_unload()


def _merged_on_unquantized_base(model, full_state_dict: dict[str, torch.Tensor]):
    """QLoRA: the 4-bit weights are a lossy copy, so the merge folds the adapter into the base's original
    weights, read again from where the base came from (as peft's and LLaMA-Factory's QLoRA exports do)."""
    from peft import get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    base = model.get_base_model()
    source = base.config.name_or_path
    dtype = base.config.quantization_config.bnb_4bit_compute_dtype if base.is_loaded_in_4bit else torch.bfloat16
    original = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map={"": "cpu"})
    rows = base.get_input_embeddings().weight.shape[0]
    if rows > original.get_input_embeddings().weight.shape[0]:  # a template's added tokens (trainable tokens)
        original.resize_token_embeddings(rows)
    twin = get_peft_model(original, model.peft_config["default"])
    result = set_peft_model_state_dict(twin, adapter_state_dict(model, full_state_dict))
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"cannot merge the adapter into {source}: unexpected keys {result.unexpected_keys[:3]}")
    return twin.merge_and_unload()  # its config has no quantization_config: hf/ loads as a plain model


def _cpu_twin(model):
    """A CPU copy of the wrapped model's shape (a ZeRO-3-partitioned model's own tensors are empty shells,
    and a copy on the GPU would double its memory there)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.integrations import deepspeed as hf_ds

    base = model.get_base_model()
    # transformers builds every model inside zero.Init while training's HfDeepSpeedConfig is alive:
    # step out of it for this plain CPU copy. A private transformers name: its public getter
    # (deepspeed_config()) gives the config dict, not the object set_hf_deepspeed_config needs back.
    alive = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds.unset_hf_deepspeed_config()
    try:
        with torch.device("cpu"):
            twin = AutoModelForCausalLM.from_config(base.config, torch_dtype=base.dtype)
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = alive
    return get_peft_model(twin, model.peft_config["default"])
