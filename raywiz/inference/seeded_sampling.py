"""Integer hashes behind raywiz's seeded sampling (raywiz.inference.slot_decoding.sample_tokens).

A sampled token is picked by inverse CDF with a uniform that is a pure function of (the sequence's
key, how many tokens it has sampled), so a seed fixes a sequence's tokens alone or in any batch. The
hash is computed with tensor ops (no Python per row, no torch.Generator), so the decode step stays
graph-capturable.
"""

from __future__ import annotations

import torch

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
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def row_seed(seed: int, index: int) -> int:
    """One seed per choice of a request: choices of one seeded request differ, and repeat with it."""
    return mix32(mix32(seed ^ mix32(seed >> 32)) ^ index) & 0x7FFFFFFF
