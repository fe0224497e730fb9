"""Per-request seeds on transformers' continuous batching.

ContinuousBatchingManager samples every row of a batch with one ``torch.multinomial`` on the global
RNG, so a request's tokens depend on whatever else shares its batch. This processor, appended after
the temperature/top-k/top-p warpers, samples a seeded row itself by the Gumbel-max trick, with noise
that is a pure function of (the request's seed, its choice index, how many tokens it has sampled,
the vocabulary id): it keeps only the chosen token, so the manager's multinomial must pick it. The
same seed gives the same tokens alone or in any batch; rows without a seed are left to the manager.

The noise is an integer hash computed with tensor ops (no Python per row, no torch.Generator), so
the step stays compilable and graph-capturable like the warpers it follows.
"""

from __future__ import annotations

import threading

import torch
from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

KWARG = "raywiz_seed"  # the add_request keyword that carries a row's seed
MASK32 = 0xFFFFFFFF


def mix32(x: int) -> int:
    """A 32-bit integer hash (Wellons' lowbias32), in Python."""
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def mix32_tensor(x: torch.Tensor) -> torch.Tensor:
    """mix32 on an int64 tensor of 32-bit values (products wrap mod 2**64; the low 32 bits are exact)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def row_seed(seed: int, index: int) -> int:
    """One seed per choice of a request: choices of one seeded request differ, and repeat with it."""
    return mix32(mix32(seed ^ mix32(seed >> 32)) ^ index) & 0x7FFFFFFF


def step_key(row: int, step: int) -> int:
    """The noise key of a row's step-th sampled token (an int32 >= 0; -1 means unseeded)."""
    return mix32(mix32(row) ^ step) & 0x7FFFFFFF


class SeededSampler(ContinuousBatchingLogitsProcessor):
    supported_kwargs: dict[str, type] = {KWARG: int}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self) -> None:
        # Tokens sampled so far per seeded request. Counted here, at each step that samples for the
        # request, rather than read from its state: under async batching the state lags a step.
        self._steps: dict[str, int] = {}
        self._lock = threading.Lock()  # the manager's thread counts, the dispatcher forgets

    @staticmethod
    def request_kwargs(seed: int | None, index: int) -> dict:
        """add_request keywords for choice `index` of a request with this seed (none: unseeded)."""
        return {} if seed is None else {KWARG: row_seed(seed, index)}

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._steps.pop(request_id, None)

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(-1)

    def prepare_tensor_args(self, requests_with_new_token) -> torch.Tensor:
        keys = []
        with self._lock:
            for request in requests_with_new_token:
                state = request.state
                row = state.logit_processor_kwargs.get(KWARG)
                if row is None:
                    keys.append(-1)
                    continue
                step = self._steps.get(state.request_id, 0)
                self._steps[state.request_id] = step + 1
                keys.append(step_key(row, step))
        return torch.tensor(keys, dtype=torch.int32, device="cpu")

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        keys = tensor_arg[: scores.size(0)].to(torch.int64)  # [B]
        vocab = torch.arange(scores.size(-1), device=scores.device, dtype=torch.int64)
        bits = mix32_tensor(mix32_tensor(keys.clamp(min=0))[:, None] ^ vocab[None, :])  # [B, V]
        uniform = (bits.to(torch.float64) + 0.5) / 2.0**32  # in (0, 1), never 0 or 1
        gumbel = -torch.log(-torch.log(uniform))
        chosen = (scores.to(torch.float64) + gumbel).argmax(dim=-1, keepdim=True)  # ~ softmax(scores)
        only = torch.full_like(scores, float("-inf")).scatter(1, chosen, 0.0)
        return torch.where((keys >= 0)[:, None], only, scores)


def install(manager) -> SeededSampler:
    """Append a SeededSampler to a (not yet started) manager's processors; returns it.

    transformers offers no hook for a custom per-request processor, so this extends the manager's
    ``logit_processor`` list (a public attribute) before ``start()`` sizes its buffers from it."""
    processors = manager.logit_processor
    for p in processors.logits_processor:
        if isinstance(p, SeededSampler):  # a cached manager that has one already
            return p
    sampler = SeededSampler()
    processors.logits_processor.append(sampler)
    processors.tensors_required += 1
    processors.supported_keys.update(sampler.supported_kwargs)
    processors.do_processing = True
    return sampler
