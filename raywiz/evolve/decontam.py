"""Decontamination: flag training samples that hold benchmark text (HumanEval, MBPP, DS-1000).

The check is word n-gram overlap: a sample is contaminated by a benchmark text (a task's prompt or
its reference solution) when it contains at least ``threshold`` of that text's distinct n-grams
(default: half of its 10-grams). Texts shorter than n words but at least ``min_tokens`` long count
as one n-gram of their own length; shorter ones are ignored (they match everything). An optional
second check embeds texts with a transformers model and flags cosine similarity above a threshold.

The same check runs on any dataset: ``raywiz evolve decontam DATASET`` (see ``decontaminate_file``).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

from raywiz.evolve.contamination import Contamination

if TYPE_CHECKING:
    from raywiz.evolve.decontam_exec import ExecDecontaminator

TOKEN = re.compile(r"\w+")


@dataclass(frozen=True)
class ReferenceText:
    benchmark: str
    task_id: str
    field: str  # "prompt" or "solution"
    text: str


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def ngrams(toks: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}


# ---------------------------------------------------------------- benchmark texts


def references_from_tasks(benchmark: str, tasks: Iterable) -> list[ReferenceText]:
    """Prompts and reference solutions of benchmark tasks (raywiz.benchmarks.Task objects)."""
    refs = []
    for task in tasks:
        for name in ("prompt", "solution"):
            text = getattr(task, name, None)
            if text:
                refs.append(ReferenceText(benchmark, str(task.task_id), name, text))
    return refs


def load_references(benchmarks: Sequence[str], data_paths: dict[str, str] | None = None,
                    on_missing: str = "warn") -> tuple[list[ReferenceText], dict[str, str]]:
    """Benchmark texts via raywiz.benchmarks.load_tasks; returns (texts, {skipped benchmark: why})."""
    refs: list[ReferenceText] = []
    skipped: dict[str, str] = {}
    from raywiz.benchmarks import load_tasks

    for name in benchmarks:
        try:
            tasks = load_tasks(name, (data_paths or {}).get(name))
        except Exception as e:  # noqa: BLE001 - reported per benchmark, or raised below
            if on_missing == "error":
                raise RuntimeError(f"decontamination: cannot load benchmark {name!r}: {e}") from e
            skipped[name] = f"{type(e).__name__}: {e}"
            continue
        refs.extend(references_from_tasks(name, tasks))
    return refs, skipped


# ---------------------------------------------------------------- n-gram index


class NgramIndex:
    def __init__(self, references: Sequence[ReferenceText], n: int = 10, min_tokens: int = 8):
        self.n = n
        self.references: list[ReferenceText] = []
        self.sizes: list[int] = []
        # gram length -> gram -> reference indices (lengths below n come from short references)
        self.grams: dict[int, dict[tuple[str, ...], list[int]]] = defaultdict(lambda: defaultdict(list))
        for ref in references:
            toks = tokens(ref.text)
            if len(toks) < min_tokens:
                continue
            length = min(n, len(toks))
            grams = ngrams(toks, length)
            idx = len(self.references)
            self.references.append(ref)
            self.sizes.append(len(grams))
            for g in grams:
                self.grams[length][g].append(idx)

    def __len__(self) -> int:
        return len(self.references)

    def matches(self, text: str, threshold: float) -> list[Contamination]:
        toks = tokens(text)
        hits: Counter[int] = Counter()
        for length, table in self.grams.items():
            for g in ngrams(toks, length) & table.keys():
                hits.update(table[g])
        found = []
        for idx, count in hits.items():
            score = count / self.sizes[idx]
            if score >= threshold:
                ref = self.references[idx]
                found.append(Contamination(ref.benchmark, ref.task_id, ref.field, score, "ngram"))
        return sorted(found, key=lambda c: -c.score)


# ---------------------------------------------------------------- optional embedding check


class EmbeddingIndex:
    """Mean-pooled last hidden states of a transformers model; cosine similarity to benchmark texts."""

    def __init__(self, model_name_or_path: str, references: Sequence[ReferenceText], batch_size: int = 16,
                 max_length: int = 512):
        from raywiz.modeling import build_model, load_tokenizer

        self.tokenizer = load_tokenizer(model_name_or_path)
        self.model = build_model(model_name_or_path, seed=0).eval()
        self.batch_size, self.max_length = batch_size, max_length
        self.references = list(references)
        self.matrix = self.embed([r.text for r in self.references])

    def embed(self, texts: Sequence[str]):
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[start : start + self.batch_size]), return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length)
            with torch.no_grad():
                hidden = self.model(**enc, output_hidden_states=True).hidden_states[-1]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 1)

    def matches(self, texts: Sequence[str], threshold: float) -> list[Contamination | None]:
        if not self.references:
            return [None] * len(texts)
        sims = self.embed(texts) @ self.matrix.T
        best, where = sims.max(dim=1)
        result: list[Contamination | None] = []
        for score, idx in zip(best.tolist(), where.tolist()):
            ref = self.references[idx]
            result.append(Contamination(ref.benchmark, ref.task_id, ref.field, score, "embedding")
                          if score >= threshold else None)
        return result


# ---------------------------------------------------------------- the check, for samples and for files


@dataclass
class Decontaminator:
    """Checks texts against benchmark references; built once per run from a DecontamConfig."""

    ngram_index: NgramIndex
    threshold: float
    embedding_index: EmbeddingIndex | None = None
    embedding_threshold: float = 0.95
    skipped: dict[str, str] = field(default_factory=dict)
    executor: "ExecDecontaminator | None" = None  # decontam.exec: answers run against benchmark tests

    @classmethod
    def from_config(cls, cfg, references: Sequence[ReferenceText] | None = None) -> "Decontaminator":
        skipped: dict[str, str] = {}
        if references is None:
            references, skipped = load_references(cfg.benchmarks, cfg.data_paths, cfg.on_missing_benchmark)
        embedding = EmbeddingIndex(cfg.embedding_model, references) if cfg.embedding_model else None
        executor = None
        if cfg.exec:
            from raywiz.evolve.decontam_exec import ExecDecontaminator

            executor = ExecDecontaminator.from_config(cfg)
        return cls(NgramIndex(references, cfg.ngram, cfg.min_tokens), cfg.threshold, embedding,
                   cfg.embedding_threshold, skipped, executor)

    def check(self, texts: Sequence[str], answers: Sequence[str | None] | None = None) -> list[Contamination | None]:
        """The strongest contamination of each text, or None. With an executor, the `answers` (each
        text's answer) that pass a benchmark task's tests are contamination first: that is proof."""
        if self.executor is not None and answers is not None:
            passed = self.executor.check(answers)
            texts_left = [t for t, hit in zip(texts, passed) if hit is None]
            rest = iter(self._check_text(texts_left))
            return [hit if hit is not None else next(rest) for hit in passed]
        return self._check_text(texts)

    def _check_text(self, texts: Sequence[str]) -> list[Contamination | None]:
        found: list[Contamination | None] = []
        for text in texts:
            hits = self.ngram_index.matches(text, self.threshold)
            found.append(hits[0] if hits else None)
        if self.embedding_index is not None:
            for i, hit in enumerate(self.embedding_index.matches(texts, self.embedding_threshold)):
                if found[i] is None and hit is not None:
                    found[i] = hit
        return found

    def benchmarks_checked(self) -> dict[str, int]:
        """benchmark -> number of tasks with at least one indexed text."""
        tasks: dict[str, set] = defaultdict(set)
        for ref in self.ngram_index.references:
            tasks[ref.benchmark].add(ref.task_id)
        return {name: len(ids) for name, ids in sorted(tasks.items())}


def sample_text(record: dict) -> str:
    """A row's instruction, input and answer (the first of its answer columns, see decontam_exec)."""
    from raywiz.evolve.decontam_exec import answer_text

    return "\n".join([str(record.get(k) or "") for k in ("instruction", "input")] + [answer_text(record) or ""])


def decontaminate_file(paths: Sequence[str], decontaminator: Decontaminator, fmt: str = "auto",
                       clean_output: str | None = None, batch: int = 256) -> dict:
    """Check every row of a dataset; returns the report (and writes the clean rows if asked)."""
    from raywiz.artifacts import expand_paths, write_bytes_atomic
    from raywiz.data.shards import iter_rows, where
    from raywiz.evolve.decontam_exec import answer_text

    flagged: list[dict] = []
    kept: list[dict] = []
    n_rows = 0
    pending: list[tuple[str, dict]] = []

    def flush() -> None:
        hits = decontaminator.check([sample_text(rec) for _, rec in pending],
                                    answers=[answer_text(rec) for _, rec in pending])
        for (place, rec), hit in zip(pending, hits):
            if hit is None:
                kept.append(rec)
            else:
                flagged.append(dict(where=place, instruction=str(rec.get("instruction", ""))[:200], **hit.to_dict()))
        pending.clear()

    for path in expand_paths(paths):
        for row in iter_rows(path, fmt):
            if row.record is None:
                raise ValueError(f"{where(row)}: {row.bad_reason}")
            n_rows += 1
            pending.append((where(row), row.record))
            if len(pending) >= batch:
                flush()
    flush()
    tasks_hit: dict[str, set] = defaultdict(set)
    for f in flagged:
        tasks_hit[f["benchmark"]].add(f["task_id"])
    checked = decontaminator.benchmarks_checked()
    executed = decontaminator.executor.report()["benchmark_tasks"] if decontaminator.executor else {}
    report = {
        "rows": n_rows,
        "contaminated_rows": len(flagged),
        "benchmark_tasks_hit": {b: len(tasks_hit.get(b, ())) for b in sorted({**checked, **executed})},
        "benchmark_tasks_checked": checked,
        "benchmarks_skipped": decontaminator.skipped,
        "ngram": decontaminator.ngram_index.n,
        "threshold": decontaminator.threshold,
        "flagged": flagged,
    }
    if decontaminator.executor is not None:
        report["exec"] = decontaminator.executor.report()
    if clean_output:
        import json

        write_bytes_atomic(clean_output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept).encode())
    return report
