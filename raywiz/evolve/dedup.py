"""Exact and near-duplicate removal (MinHash + LSH), incremental: earlier samples win.

Texts are compared on instruction + input. Exact: the same text after lower-casing and collapsing
whitespace. Near: word shingles -> MinHash signature (``num_perm`` multiply-shift hash functions,
((a*x + b) mod 2^64) >> 32, over CRC32 shingle hashes, so signatures are the same in every process)
-> LSH buckets of ``bands`` bands; candidates sharing a bucket are confirmed by their estimated
Jaccard similarity >= ``threshold``. Samples are offered in a fixed order (seeds, then each round
by sample id), so which one of a pair survives never depends on timing.
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def shingles(text: str, size: int) -> set[str]:
    toks = _WORD.findall(text.lower())
    if len(toks) <= size:
        return {" ".join(toks)}
    return {" ".join(toks[i : i + size]) for i in range(len(toks) - size + 1)}


class MinHasher:
    def __init__(self, num_perm: int = 128, seed: int = 1, shingle: int = 5):
        rng = np.random.default_rng(seed)
        # Multiply-shift hashing: uint64 arithmetic wraps mod 2^64 (wanted); the high 32 bits are the hash.
        self.a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
        self.b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
        self.shingle = shingle

    def signature(self, text: str) -> np.ndarray:
        hashes = np.fromiter((zlib.crc32(s.encode("utf-8", "surrogatepass")) for s in shingles(text, self.shingle)),
                             dtype=np.uint64)
        if hashes.size == 0:
            hashes = np.zeros(1, dtype=np.uint64)
        values = (hashes[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)
        return values.min(axis=0).astype(np.uint32)


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))


class Deduplicator:
    """Offer samples one by one; ``offer`` says whether a sample duplicates one already kept."""

    def __init__(self, exact: bool = True, near: bool = True, threshold: float = 0.8, num_perm: int = 128,
                 bands: int = 16, shingle: int = 5, seed: int = 1):
        self.exact, self.near, self.threshold = exact, near, threshold
        self.hasher = MinHasher(num_perm, seed, shingle)
        self.bands, self.rows = bands, num_perm // bands
        self.seen_exact: dict[str, str] = {}  # normalized-text hash -> sample id kept
        self.buckets: dict[tuple[int, bytes], list[int]] = {}
        self.signatures: list[np.ndarray] = []
        self.ids: list[str] = []

    @classmethod
    def from_config(cls, cfg) -> "Deduplicator":
        return cls(cfg.exact, cfg.near, cfg.threshold, cfg.num_perm, cfg.bands, cfg.shingle, cfg.seed)

    def _band_keys(self, sig: np.ndarray) -> list[tuple[int, bytes]]:
        return [(b, sig[b * self.rows : (b + 1) * self.rows].tobytes()) for b in range(self.bands)]

    def offer(self, sample_id: str, text: str) -> tuple[str, str] | None:
        """None: new, now remembered. Else (kind 'exact'|'near', id of the sample it duplicates)."""
        if self.exact:
            digest = hashlib.sha1(normalize(text).encode("utf-8", "surrogatepass")).hexdigest()
            if digest in self.seen_exact:
                return "exact", self.seen_exact[digest]
        if self.near:
            sig = self.hasher.signature(text)
            keys = self._band_keys(sig)
            candidates = {i for k in keys for i in self.buckets.get(k, ())}
            for i in sorted(candidates):
                if jaccard_estimate(sig, self.signatures[i]) >= self.threshold:
                    return "near", self.ids[i]
            idx = len(self.signatures)
            self.signatures.append(sig)
            self.ids.append(sample_id)
            for k in keys:
                self.buckets.setdefault(k, []).append(idx)
        if self.exact:
            self.seen_exact[digest] = sample_id
        return None
