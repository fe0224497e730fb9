"""The evolve report: what was kept and what was dropped, per round and in total, and why.

Written to ``{run_dir}/evolve_report/`` (report.json + dropped.jsonl), next to the shards rather
than among them, so that training never reads it. Its totals also go into the shard manifest.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from raywiz.artifacts import join, write_bytes_atomic, write_json_atomic
from raywiz.evolve.rounds import Dropped
from raywiz.evolve.samples import Sample


class EvolveReport:
    def __init__(self):
        self.rounds: dict[int, dict] = defaultdict(lambda: {"candidates": 0, "kept": 0, "verified": 0,
                                                          "dropped": Counter(), "methods_kept": Counter()})
        self.dropped: list[Dropped] = []
        self.tasks_hit: dict[str, set] = defaultdict(set)

    def candidates(self, evol_round: int, n: int) -> None:
        self.rounds[evol_round]["candidates"] += n

    def drop(self, items: list[Dropped]) -> None:
        for d in items:
            self.rounds[d.evol_round]["dropped"][f"{d.stage}:{d.reason}"] += 1
            if d.stage == "decontam" and d.detail:
                self.tasks_hit[d.detail["benchmark"]].add(d.detail["task_id"])
        self.dropped.extend(items)

    def keep(self, evol_round: int, samples: list[Sample]) -> None:
        self.rounds[evol_round]["kept"] += len(samples)
        self.rounds[evol_round]["verified"] += sum(s.verified for s in samples)
        self.rounds[evol_round]["methods_kept"].update(s.method for s in samples)

    def summary(self) -> dict:
        dropped_total: Counter = Counter()
        for r in self.rounds.values():
            dropped_total.update(r["dropped"])
        return {
            "kept": sum(r["kept"] for r in self.rounds.values()),
            "kept_by_round": {str(k): r["kept"] for k, r in sorted(self.rounds.items())},
            "verified": sum(r["verified"] for r in self.rounds.values()),
            "dropped": sum(dropped_total.values()),
            "dropped_by_reason": dict(sorted(dropped_total.items())),
            "benchmark_tasks_hit": {b: len(ids) for b, ids in sorted(self.tasks_hit.items())},
        }

    def write(self, directory: str, extra: dict) -> str:
        rounds = [
            {"round": k, "candidates": r["candidates"], "kept": r["kept"], "verified": r["verified"],
             "dropped": dict(sorted(r["dropped"].items())), "methods_kept": dict(sorted(r["methods_kept"].items()))}
            for k, r in sorted(self.rounds.items())
        ]
        report = {**extra, "totals": self.summary(), "rounds": rounds}
        lines = "".join(json.dumps(d.to_dict(), ensure_ascii=False) + "\n" for d in self.dropped)
        write_bytes_atomic(join(directory, "dropped.jsonl"), lines.encode("utf-8", "surrogatepass"))
        path = join(directory, "report.json")
        write_json_atomic(path, report)
        return path
