"""Weighted mixing of several data sources: how many samples each contributes, and which ones.

The mix has as many samples as the sources together (their natural size); source ``i`` gives
``round(total * w_i / sum(w))`` of them. A source asked for fewer than it has gives a seeded random
subset; asked for more, it repeats its samples in seeded random order (each copy gets its own
``sample_id``, ``id#2``, ``id#3``, ...). The choice depends only on the seed and the sample ids, so
it is the same on every run and every resume.
"""

from __future__ import annotations

import hashlib
from collections import Counter


def targets(available: list[int], weights: list[float]) -> list[int]:
    """Samples per source: proportional to the weights, summing to the natural total (largest remainders)."""
    total, weight_sum = sum(available), sum(weights)
    exact = [total * w / weight_sum for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return [c if available[i] else 0 for i, c in enumerate(counts)]


def _order(sample_ids: list[str], seed: int, source: int) -> list[str]:
    """A seeded order that does not depend on how the rows arrived (sorted by a keyed hash)."""
    key = f"{seed}:{source}:".encode()
    return sorted(sample_ids, key=lambda s: hashlib.sha256(key + s.encode("utf-8", "surrogatepass")).digest())


def choose(ids_by_source: list[list[str]], weights: list[float], seed: int) -> dict[tuple[int, str], int]:
    """(source, sample_id) -> how many copies go into the mix (absent: none)."""
    counts: Counter[tuple[int, str]] = Counter()
    for source, (ids, want) in enumerate(zip(ids_by_source, targets([len(i) for i in ids_by_source], weights))):
        order = _order(sorted(set(ids)), seed, source)
        for k in range(want):
            counts[(source, order[k % len(order)])] += 1
    return dict(counts)


def expand(batch: dict, copies: dict[tuple[int, str], int]) -> dict:
    """Ray Data map_batches fn: each row as many times as the mix takes it, copies with their own ids."""
    keep = [(i, k) for i, sid in enumerate(batch["sample_id"])
            for k in range(copies.get((int(batch["source"][i]), str(sid)), 0))]
    out = {col: [values[i] for i, _ in keep] for col, values in batch.items()}
    out["sample_id"] = [str(batch["sample_id"][i]) + (f"#{k + 1}" if k else "") for i, k in keep]
    return out
