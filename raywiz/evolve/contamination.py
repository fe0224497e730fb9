"""What a decontamination check finds: one training row matching one benchmark task (a leaf module, shared
by the n-gram/embedding check in decontam.py and the execution check in decontam_exec.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Contamination:
    benchmark: str
    task_id: str
    field: str
    score: float  # n-gram overlap fraction, or cosine similarity
    method: str  # "ngram", "embedding" or "exec"

    def to_dict(self) -> dict:
        return dict(benchmark=self.benchmark, task_id=self.task_id, field=self.field,
                    score=round(self.score, 4), method=self.method)
