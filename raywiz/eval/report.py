"""What eval shows of the results: the printed table, the per-task W&B rows and the pass@1 plot
(summaries and result files themselves: raywiz.benchmarks.evaluate)."""

from __future__ import annotations

import os
from typing import Iterable

from raywiz.benchmarks.evaluate import PLUS_BENCHMARKS


def task_rows(results: list[dict], summary: dict) -> list[dict]:
    """One row per task for the W&B table: task_id, passed (every sample passed; the verdict when
    greedy), n_samples, n_passed, the task's pass@1, and for HumanEval+/MBPP+ the base/plus verdicts
    (evalplus's statuses; a list when a task has several samples) and base pass@1.
    `results` are results.jsonl rows; `summary` is the benchmark's summary (its per-task pass@k)."""
    by_task: dict[str, list[dict]] = {}
    for r in results:
        by_task.setdefault(str(r["task_id"]), []).append(r)
    plus = summary["benchmark"] in PLUS_BENCHMARKS
    rows = []
    for task_id, rs in by_task.items():
        per_task = summary.get("per_task", {}).get(task_id, {})
        row = {"checkpoint": summary.get("checkpoint"), "step": summary.get("step"),
               "benchmark": summary["benchmark"], "task_id": task_id,
               "passed": all(r["passed"] for r in rs), "n_samples": len(rs),
               "n_passed": sum(bool(r["passed"]) for r in rs), "pass@1": per_task.get("pass@1")}
        if plus:
            statuses = lambda key: rs[0].get(key) if len(rs) == 1 else [r.get(key) for r in rs]  # noqa: E731
            row.update({"base_passed": all(r.get("base_passed") for r in rs), "base_status": statuses("base_status"),
                        "plus_status": statuses("plus_status"), "base_pass@1": per_task.get("base_pass@1")})
        rows.append(row)
    return rows


def format_table(summaries: list[dict], ks: Iterable[int] = (1, 10, 100)) -> str:
    """A plain-text table: one row per (checkpoint, benchmark)."""
    ks = [k for k in ks if any(f"pass@{k}" in s for s in summaries)]
    header = ["checkpoint", "benchmark", "tasks", *[f"pass@{k}" for k in ks], "base pass@1"]
    rows = []
    for s in summaries:
        rows.append([
            str(s.get("checkpoint", "-")), s["benchmark"], str(s["n_tasks"]),
            *[f"{100 * s[f'pass@{k}']:.1f}" if f"pass@{k}" in s else "-" for k in ks],
            f"{100 * s['base_pass@1']:.1f}" if "base_pass@1" in s else "-",
        ])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def plot_pass_at_1(summaries: list[dict], path: str) -> str:
    """pass@1 (%) per checkpoint, one line per benchmark; x is the training step when known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_benchmark: dict[str, list[tuple]] = {}
    order = list(dict.fromkeys(s.get("checkpoint", "?") for s in summaries))
    for s in summaries:
        x = s.get("step")
        if x is None:
            x = order.index(s.get("checkpoint", "?"))
        by_benchmark.setdefault(s["benchmark"], []).append((x, 100 * s.get("pass@1", 0.0)))
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in sorted(by_benchmark.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    uses_steps = all(s.get("step") is not None for s in summaries)
    ax.set_xlabel("training step" if uses_steps else "checkpoint")
    if not uses_steps:
        ax.set_xticks(range(len(order)), [os.path.basename(str(c)) for c in order], rotation=20)
    ax.set_ylabel("pass@1 (%)")
    ax.set_title("pass@1 per checkpoint")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
