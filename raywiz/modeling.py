"""Models and tokenizers: Hugging Face names, local directories, or named tiny configs.

The tiny configs are random-initialised, a few hundred kB to a few MB: they let the quickstart and
the tests train, export, evaluate and serve a real `AutoModelForCausalLM` on a CPU with no hub access.
They use the small byte-level BPE tokenizer shipped in ``raywiz/assets/tokenizer``.
"""

from __future__ import annotations

import os
from typing import Any

TINY_TOKENIZER_DIR = os.path.join(os.path.dirname(__file__), "assets", "tokenizer")

# Named tiny configs. Token ids 0/1/2 are the shipped tokenizer's <|endoftext|>/<|pad|>/<|fim|>
# (StarCoder also uses id 0 for <|endoftext|>; GPTBigCode's default bos/eos 50256 would be outside the vocab).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-gpt-bigcode": dict(
        model_type="gpt_bigcode", n_embd=64, n_layer=2, n_head=4, n_inner=256, n_positions=1024,
        multi_query=True, vocab_size=2048, bos_token_id=0, eos_token_id=0, pad_token_id=1,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # tiny models memorise; dropout only slows that
    ),
    "tiny-llama": dict(
        model_type="llama", hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, vocab_size=2048, bos_token_id=0, eos_token_id=0,
        pad_token_id=1, tie_word_embeddings=True,
    ),
    "tiny-qwen2": dict(
        model_type="qwen2", hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, vocab_size=2048, bos_token_id=0, eos_token_id=0,
        pad_token_id=1, tie_word_embeddings=True,
    ),
    # StarCoderBase-1B shape, for GPU benchmarks (random init).
    "starcoderbase-1b-shape": dict(
        model_type="gpt_bigcode", n_embd=2048, n_layer=24, n_head=16, n_inner=8192, n_positions=8192,
        multi_query=True, vocab_size=49152, bos_token_id=0, eos_token_id=0,
    ),
    # StarCoder-7B shape: does not fit one 80 GB GPU for training (about 16 bytes/parameter), fits sharded.
    "starcoder-7b-shape": dict(
        model_type="gpt_bigcode", n_embd=4096, n_layer=42, n_head=32, n_inner=16384, n_positions=8192,
        multi_query=True, vocab_size=49152, bos_token_id=0, eos_token_id=0,
    ),
    # StarCoder-15B shape (WizardCoder-15B's base), for sizing and sharded-only runs.
    "starcoder-15b-shape": dict(
        model_type="gpt_bigcode", n_embd=6144, n_layer=40, n_head=48, n_inner=24576, n_positions=8192,
        multi_query=True, vocab_size=49152, bos_token_id=0, eos_token_id=0,
    ),
}


def is_tiny(name_or_path: str) -> bool:
    return name_or_path in TINY_CONFIGS


def model_config(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None):
    """The transformers config for a tiny name, a hub name or a local directory."""
    from transformers import AutoConfig

    if is_tiny(name_or_path):
        spec = dict(TINY_CONFIGS[name_or_path])
        return AutoConfig.for_model(spec.pop("model_type"), **spec)
    return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)


def load_tokenizer(name_or_path: str, tokenizer: str | None = None, trust_remote_code: bool = False):
    """A fast tokenizer with an EOS and a pad token (pad falls back to EOS, as StarCoder's recipe does)."""
    from transformers import AutoTokenizer

    source = tokenizer or (TINY_TOKENIZER_DIR if is_tiny(name_or_path) else name_or_path)
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tok.eos_token is None:
        raise ValueError(f"tokenizer {source!r} has no EOS token; WizardCoder's recipe ends every response with it")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def decodable_tokenizer(tokenizer, vocab_size: int):
    """The tokenizer plus one added token ("<x123>") per id it lacks up to `vocab_size`: a random-init
    model of a real shape (49,152 ids) over raywiz's 2,048-token test tokenizer then streams text for
    every token it generates, as a real model does (benchmarks of streaming and time to first text)."""
    if len(tokenizer) < vocab_size:
        tokenizer.add_tokens([f"<x{i}>" for i in range(len(tokenizer), vocab_size)])
    return tokenizer


def context_length(config) -> int | None:
    """The most positions a model's config says it takes (None when it names none)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def torch_dtype(dtype: str, on_gpu: bool):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    return getattr(torch, dtype)


def build_model(name_or_path: str, dtype=None, attn_implementation: str | None = None,
                trust_remote_code: bool = False, revision: str | None = None, seed: int | None = None,
                quantization_config=None, device_map=None):
    """Load pretrained weights, or random-initialise a tiny/shape config.

    Call it inside DeepSpeed's ``zero.Init`` / ``HfDeepSpeedConfig`` context to build it sharded.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if is_adapter_dir(name_or_path):
        return load_adapter_merged(name_or_path, dtype, attn_implementation, trust_remote_code)
    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:  # QLoRA's 4-bit base: pretrained weights only
        if is_tiny(name_or_path):
            raise ValueError(f"{name_or_path}: a random-initialised config cannot load quantized; use real weights")
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = device_map
    if is_tiny(name_or_path):
        if seed is not None:
            torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(model_config(name_or_path), dtype=dtype, **kwargs)
    return AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision, **kwargs
    )


def is_adapter_dir(path: str) -> bool:
    """A peft adapter directory (a LoRA/DoRA checkpoint's ``adapter/``) rather than a full model."""
    return os.path.isfile(os.path.join(path, "adapter_config.json")) and not os.path.isfile(
        os.path.join(path, "config.json"))


def load_adapter_merged(path: str, dtype=None, attn_implementation: str | None = None,
                        trust_remote_code: bool = False):
    """Base model (named in the adapter's config) + adapter, merged for inference."""
    import json

    from peft import PeftModel

    base_name = json.load(open(os.path.join(path, "adapter_config.json"))).get("base_model_name_or_path")
    if not base_name:
        raise ValueError(f"{path}/adapter_config.json names no base model (base_model_name_or_path)")
    if is_tiny(base_name):
        raise ValueError(f"{path}: its base {base_name!r} is random-initialised, so the adapter cannot be "
                         "loaded on its own; use the checkpoint's merged hf/ (train.checkpoint.merge_adapter)")
    base = build_model(base_name, dtype=dtype, attn_implementation=attn_implementation,
                       trust_remote_code=trust_remote_code)
    # A chat template's added tokens: the base grows to the adapter's tokenizer, their rows come from the adapter.
    n_tokens = len(load_tokenizer(path)) if os.path.isfile(os.path.join(path, "tokenizer_config.json")) else 0
    if n_tokens > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(n_tokens)
    return PeftModel.from_pretrained(base, path).merge_and_unload()


def count_parameters(config) -> int:
    """Parameter count from a config alone (meta device: no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())
