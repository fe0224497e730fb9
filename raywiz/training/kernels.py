"""Fast paths for packed training: exact per-sample attention, and a loss that never holds the logits.

Varlen attention. A packed row holds several samples whose ``position_ids`` restart at 0. Instead of
a block-diagonal ``(rows, 1, seq, seq)`` mask (which keeps SDPA off its flash kernel), the whole
micro-batch is flattened into one stream of tokens and ``cu_seqlens`` (every sample's start, plus
the end) tells the kernel where each sample begins. The function is registered with transformers'
``AttentionInterface`` as ``raywiz_varlen``, so GPT-BigCode, Llama and Qwen2 call it from their own
attention modules; the training step passes ``cu_seq_lens_q/k`` and ``max_length_q/k`` as model
kwargs (transformers forwards them to the attention function, as it does for flash-attention).
Kernels, in order: flash-attn's ``flash_attn_varlen_func`` when installed, torch's
``torch.nn.attention.varlen.varlen_attn`` on CUDA in bf16/fp16, else (CPU, float32) one causal SDPA
call per sample: slow, exact, and what the CPU tests compare against a block-diagonal reference.

Fused linear cross-entropy. ``fused_loss_head`` swaps the model's output projection for one that
returns the summed token loss (fp32) instead of logits, so a full-vocabulary fp32 logits tensor
(rows x seq x vocab x 4 bytes: 3.2 GB for 8 x 2048 x 49152) never exists. The swap keeps the weight
used inside its own module's forward, which is what ZeRO-3's parameter gathering expects. liger-kernel's
``LigerFusedLinearCrossEntropyFunction`` on GPU when installed (the ``gpu`` extra), else a chunked
torch version with the same trick: each chunk's gradients are computed in the forward pass.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from raywiz.data.tokenize import IGNORE_INDEX
from raywiz.log import get_logger

log = get_logger(__name__)

VARLEN = "raywiz_varlen"
SUPPORTED_MODEL_TYPES = ("gpt_bigcode", "llama", "qwen2")  # checked against a block-diagonal reference
LOSS_CHUNK_TOKENS = 2048


# ------------------------------------------------------------------ cu_seqlens from the packer's positions
def cu_seqlens_from_position_ids(position_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """(cu_seqlens int32, max_seqlen) over a batch of packed rows, flattened row after row.

    Every restart of position_ids at 0 starts a sample (the padding tail of a row is its own block,
    as pack.build_row lays it out), and every row starts with position 0.
    """
    flat = np.asarray(position_ids).reshape(-1)
    if flat.size == 0:
        return np.zeros(1, dtype=np.int32), 0
    starts = np.flatnonzero(flat == 0)
    if starts.size == 0 or starts[0] != 0:
        raise ValueError("position_ids must start every row at 0 (packed rows from raywiz.data.pack)")
    cu = np.append(starts, flat.size).astype(np.int32)
    return cu, int(np.diff(cu).max())


def varlen_kwargs(batch: dict, device) -> dict:
    """The model kwargs that carry the packing to ``raywiz_varlen`` (and flash-attention backends)."""
    cu = batch["cu_seqlens"].to(device, non_blocking=True)
    m = int(batch["max_seqlen"])
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": m, "max_length_k": m}


# ------------------------------------------------------------------ attention
@functools.cache
def _flash_attn_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


@functools.cache
def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, False, {}
    params = inspect.signature(varlen_attn).parameters
    # causal: window_size=(-1, 0) on torch 2.11+ (NOTES); is_causal on versions that name it so
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    return varlen_attn, "enable_gqa" in params, causal


def _per_sample_sdpa(q, k, v, cu: list[int], scale):
    """Reference path: one causal SDPA call per sample. q (tokens, heads, dim), k/v (tokens, kv_heads, dim)."""
    groups = q.shape[1] // k.shape[1]
    out = []
    for a, b in zip(cu[:-1], cu[1:]):
        qs, ks, vs = (t[a:b].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        if groups > 1:
            ks, vs = ks.repeat_interleave(groups, dim=1), vs.repeat_interleave(groups, dim=1)
        out.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)[0].transpose(0, 1))
    return torch.cat(out, dim=0)


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, is_causal: bool | None = None, cu_seq_lens_q=None,
                             cu_seq_lens_k=None, max_length_q: int | None = None, max_length_k: int | None = None,
                             **kwargs):
    """transformers attention function: query (rows, heads, seq, dim), key/value (rows, kv_heads, seq, dim)
    -> ((rows, seq, heads, dim), None). Without cu_seqlens (generation, unpacked input) it is SDPA."""
    if cu_seq_lens_q is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if dropout:
        _warn_no_dropout(dropout)
    rows, heads, seq, dim = query.shape
    kv_heads = key.shape[1]
    q = query.transpose(1, 2).reshape(rows * seq, heads, dim)
    k = key.transpose(1, 2).reshape(rows * seq, kv_heads, dim)
    v = value.transpose(1, 2).reshape(rows * seq, kv_heads, dim)
    fast = q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)
    flash = _flash_attn_varlen() if fast else None
    varlen, has_gqa, causal = _torch_varlen()
    if flash is not None:  # handles multi-query / grouped k/v itself
        out = flash(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, softmax_scale=scaling,
                    causal=True)
    elif fast and varlen is not None:
        extra = {}
        if kv_heads != heads:
            if has_gqa:
                extra["enable_gqa"] = True
            else:  # torch 2.11: no enable_gqa, so expand the shared k/v heads to every query head
                k = k.repeat_interleave(heads // kv_heads, dim=1)
                v = v.repeat_interleave(heads // kv_heads, dim=1)
        out = varlen(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, scale=scaling,
                     **causal, **extra)
    else:
        out = _per_sample_sdpa(q, k, v, cu_seq_lens_q.tolist(), scaling)
    return out.reshape(rows, seq, heads, dim), None


@functools.cache
def _warn_no_dropout(p: float) -> None:
    log.warning("varlen attention has no dropout: the model's attention dropout (%s) is not applied", p)


def register_varlen_attention() -> str:
    """Register ``raywiz_varlen`` with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    return VARLEN


def resolve_attn_implementation(requested: str | None, model_type: str, on_gpu: bool, dtype) -> str:
    """What transformers gets. None: varlen on GPU in bf16/fp16 for the supported models, else sdpa
    (which reads packing from position_ids and builds a block-diagonal mask). 'varlen' registers it."""
    if requested is None:
        fast = on_gpu and dtype in (torch.bfloat16, torch.float16) and model_type in SUPPORTED_MODEL_TYPES
        requested = "varlen" if fast else "sdpa"
    if requested in ("varlen", VARLEN):
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model.attn_implementation: varlen is checked for {', '.join(SUPPORTED_MODEL_TYPES)}, "
                             f"not {model_type!r}; use sdpa")
        return register_varlen_attention()
    return requested


# ------------------------------------------------------------------ fused linear cross-entropy
class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum over label tokens of CE(hidden @ weight.T), chunk by chunk; gradients made in the forward.

    Each chunk's logits are computed in the weights' dtype and upcast, as ``lm_head`` then
    ``.float()`` does, so it matches the unfused loss; only one chunk's fp32 logits exist at a time.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk: int):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.zeros_like(hidden) if hidden.requires_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if weight.requires_grad else None
        for s in range(0, hidden.shape[0], chunk):
            h, y = hidden[s:s + chunk], labels[s:s + chunk]
            valid = y != IGNORE_INDEX
            target = torch.where(valid, y, 0)
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, target[:, None])[:, 0]) * valid).sum()
            if grad_h is None and grad_w is None:
                continue
            g = torch.softmax(logits, dim=-1)
            g.scatter_add_(1, target[:, None], -torch.ones_like(g[:, :1]))
            g = (g * valid[:, None]).to(h.dtype)
            if grad_h is not None:
                grad_h[s:s + chunk] = g @ weight
            if grad_w is not None:
                grad_w += (g.t() @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def chunked_linear_cross_entropy_sum(hidden, weight, labels, chunk: int = LOSS_CHUNK_TOKENS):
    """hidden (tokens, width), weight (vocab, width), labels (tokens,) -> fp32 sum over label tokens."""
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, labels, chunk)


@functools.cache
def _liger():
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    # fp32 accumulation of the weight gradient over chunks (bf16 would round it at every chunk)
    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum", accum_dtype=torch.float32)


FusedLoss = Literal["auto", "liger", "chunked", "off"]


def resolve_fused_loss(requested: FusedLoss, model_type: str, on_gpu: bool) -> str:
    """'liger', 'chunked' or 'off'. auto: liger on GPU when installed, else chunked; off for models
    whose head is not a plain linear projection (soft-capping, logit scales: not checked here)."""
    if requested == "off":
        return "off"
    if model_type not in SUPPORTED_MODEL_TYPES:
        if requested != "auto":
            raise ValueError(f"train.fused_loss: {requested} is checked for {', '.join(SUPPORTED_MODEL_TYPES)}, "
                             f"not {model_type!r}; use off")
        return "off"
    if requested == "liger":
        if _liger() is None:
            raise ValueError("train.fused_loss: liger needs liger-kernel (pip install 'raywiz[gpu]')")
        return "liger"
    if requested == "auto" and on_gpu and _liger() is not None:
        return "liger"
    return "chunked"


def linear_cross_entropy_sum(hidden, weight, labels, impl: str):
    if impl == "liger" and hidden.is_cuda:
        return _liger()(weight, hidden, labels)
    return chunked_linear_cross_entropy_sum(hidden, weight, labels)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """labels[t] -> the token at t+1 (what position t predicts); the last position predicts nothing."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


@contextlib.contextmanager
def fused_loss_head(model, labels: torch.Tensor, impl: str):
    """Inside, ``model(...).logits`` is the fp32 sum of next-token losses over label tokens.

    ``labels`` (rows, seq) are unshifted, as for the unfused loss.
    """
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("fused loss: the output projection has a bias; set train.fused_loss: off")
    target = shift_labels(labels).reshape(-1)

    def forward(hidden):
        return linear_cross_entropy_sum(hidden.reshape(-1, hidden.shape[-1]), head.weight, target, impl)

    head.forward = forward  # instance attribute: module hooks (ZeRO-3's gathers) still run around it
    try:
        yield
    finally:
        del head.forward
