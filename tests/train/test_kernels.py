"""Varlen attention and the fused loss on CPU, against plain references (no Ray, no DeepSpeed)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raywiz.data.pack import build_row
from raywiz.data.tokenize import IGNORE_INDEX
from raywiz.modeling import build_model
from raywiz.training import kernels


def _samples(n, seed=0, lo=5, hi=60):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(lo, hi)
        ids = [rng.randrange(3, 2048) for _ in range(length)]
        labels = [IGNORE_INDEX] * (length // 3) + ids[length // 3:]
        out.append((f"s{i}", ids, labels))
    return out


def _batch(rows_of_samples, seq_len=128):
    rows = [build_row(s, seq_len, pad_id=1) for s in rows_of_samples]
    pos = np.array([r["position_ids"] for r in rows])
    cu, m = kernels.cu_seqlens_from_position_ids(pos)
    return {"input_ids": torch.tensor([r["input_ids"] for r in rows]), "labels": torch.tensor([r["labels"] for r in rows]),
            "position_ids": torch.tensor(pos), "cu_seqlens": torch.tensor(cu), "max_seqlen": m, "rows": rows}


def test_cu_seqlens_mark_every_sample_and_the_padding_block():
    a, b = _samples(3, seed=1), _samples(2, seed=2)
    batch = _batch([a, b])
    cu = batch["cu_seqlens"].tolist()
    lens_a = [len(ids) for _, ids, _ in a]
    lens_b = [len(ids) for _, ids, _ in b]
    expect = np.cumsum([0] + lens_a + [128 - sum(lens_a)] + lens_b + [128 - sum(lens_b)]).tolist()
    assert cu == expect
    assert batch["max_seqlen"] == max(np.diff(expect))
    with pytest.raises(ValueError):
        kernels.cu_seqlens_from_position_ids(np.array([[1, 2, 0]]))


def _block_diagonal_reference(q, k, v, cu, scale):
    """SDPA over the flat token stream with a block-diagonal causal mask."""
    n = q.shape[0]
    seg = torch.zeros(n, dtype=torch.long)
    for i, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        seg[a:b] = i
    idx = torch.arange(n)
    mask = (seg[:, None] == seg[None, :]) & (idx[None, :] <= idx[:, None])
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask,
                                         scale=scale)
    return out.transpose(0, 1)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])  # multi-query (GPT-BigCode), grouped (Llama/Qwen2), full
def test_varlen_attention_equals_block_diagonal_sdpa(kv_heads):
    torch.manual_seed(0)
    batch = _batch([_samples(3, seed=4), _samples(4, seed=5)], seq_len=96)
    rows, seq, heads, dim = 2, 96, 4, 16
    q = torch.randn(rows, heads, seq, dim)
    k, v = torch.randn(rows, kv_heads, seq, dim), torch.randn(rows, kv_heads, seq, dim)
    cu = batch["cu_seqlens"]
    out, _ = kernels.varlen_attention_forward(None, q, k, v, None, scaling=0.3, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                              max_length_q=batch["max_seqlen"], max_length_k=batch["max_seqlen"])
    flat = lambda t: t.transpose(1, 2).reshape(rows * seq, t.shape[1], dim)  # noqa: E731
    ref = _block_diagonal_reference(flat(q), flat(k), flat(v), cu.tolist(), 0.3)
    torch.testing.assert_close(out.reshape(rows * seq, heads, dim), ref, atol=1e-5, rtol=1e-5)
    # and attention across the sample boundary would differ: the check can fail
    leaky = F.scaled_dot_product_attention(q, k.repeat_interleave(heads // kv_heads, 1),
                                           v.repeat_interleave(heads // kv_heads, 1), is_causal=True, scale=0.3)
    assert not torch.allclose(leaky.transpose(1, 2), out, atol=1e-3)


@pytest.mark.parametrize("model_name", ["tiny-gpt-bigcode", "tiny-llama", "tiny-qwen2"])
def test_models_dispatch_to_varlen_and_match_sdpa_on_packed_rows(model_name, monkeypatch):
    """The model calls raywiz_varlen with the cu_seqlens it was given, and its per-token losses equal
    transformers' own SDPA path with the block-diagonal mask it builds from position_ids."""
    torch.manual_seed(0)
    batch = _batch([_samples(3, seed=6), _samples(2, seed=7)])
    name = kernels.resolve_attn_implementation("varlen", build_model(model_name).config.model_type, False,
                                               torch.float32)
    ref_model = build_model(model_name, dtype=torch.float32, attn_implementation="sdpa", seed=1).eval()
    model = build_model(model_name, dtype=torch.float32, attn_implementation=name, seed=1).eval()
    seen = []
    real = kernels.varlen_attention_forward

    def spy(*args, **kw):
        seen.append(kw.get("cu_seq_lens_q"))
        return real(*args, **kw)

    from transformers import AttentionInterface

    AttentionInterface.register(kernels.VARLEN, spy)
    try:
        with torch.no_grad():
            kw = kernels.varlen_kwargs(batch, "cpu")
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                           **kw).logits
            ref = ref_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    finally:
        kernels.register_varlen_attention()
    n_layers = model.config.num_hidden_layers
    assert len(seen) == n_layers and all(torch.equal(s, batch["cu_seqlens"]) for s in seen)
    labels = kernels.shift_labels(batch["labels"]).reshape(-1)
    got = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, ignore_index=IGNORE_INDEX, reduction="none")
    want = F.cross_entropy(ref.reshape(-1, ref.shape[-1]), labels, ignore_index=IGNORE_INDEX, reduction="none")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_chunked_loss_equals_full_logits_loss_and_its_gradients():
    torch.manual_seed(0)
    tokens, width, vocab = 300, 32, 500
    hidden = torch.randn(tokens, width, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, width, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, vocab, (tokens,))
    labels[::3] = IGNORE_INDEX
    got = kernels.chunked_linear_cross_entropy_sum(hidden, weight, labels, chunk=64)
    (got * 0.5).backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    want = F.cross_entropy((hidden @ weight.t()).float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    (want * 0.5).backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(gh, hidden.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, weight.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("model_name", ["tiny-gpt-bigcode", "tiny-llama"])
def test_fused_loss_head_gives_todays_loss(model_name):
    """The mean over label tokens through the fused head equals logits -> fp32 cross-entropy to 1e-3."""
    torch.manual_seed(0)
    model = build_model(model_name, dtype=torch.float32, attn_implementation="sdpa", seed=2)
    batch = _batch([_samples(3, seed=8), _samples(3, seed=9)])
    kw = dict(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    logits = model(**kw).logits
    n = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    today = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum") / n
    today.backward()
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    with kernels.fused_loss_head(model, batch["labels"], "chunked"):
        fused = model(**kw).logits / n
    fused.backward()
    assert fused.ndim == 0
    assert abs(fused.item() - today.item()) <= 1e-3 * abs(today.item())
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[k], rtol=1e-3, atol=1e-6)
    # the head is the plain projection again afterwards
    assert model(**kw).logits.shape[-1] == model.config.vocab_size


def test_auto_choices():
    assert kernels.resolve_attn_implementation(None, "gpt_bigcode", True, torch.bfloat16) == kernels.VARLEN
    assert kernels.resolve_attn_implementation(None, "gpt_bigcode", False, torch.float32) == "sdpa"
    assert kernels.resolve_attn_implementation(None, "mistral", True, torch.bfloat16) == "sdpa"
    assert kernels.resolve_attn_implementation("eager", "llama", True, torch.bfloat16) == "eager"
    with pytest.raises(ValueError, match="varlen"):
        kernels.resolve_attn_implementation("varlen", "mistral", True, torch.bfloat16)
    assert kernels.resolve_fused_loss("auto", "llama", False) == "chunked"
    assert kernels.resolve_fused_loss("auto", "mistral", True) == "off"
    assert kernels.resolve_fused_loss("off", "llama", True) == "off"
