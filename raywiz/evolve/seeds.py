"""Seeds: Code Alpaca style records (instruction, input, output) from files or a Hugging Face dataset.

Files may be JSON arrays (as Code Alpaca ships), JSONL or Parquet, local or remote, given as paths,
globs or directories; ``raywiz:quickstart/instructions.jsonl`` is the seed set shipped with raywiz.
A record without an instruction is an error naming its file and row. A seed without an output is
kept: the recipe asks the LLM to answer it. Identical seeds are kept once.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Iterable

from raywiz.artifacts import expand_paths
from raywiz.data.shards import iter_rows, where
from raywiz.evolve.samples import Sample, seed_id


class SeedError(ValueError):
    """A seed record that can't be used; the message names the file and row."""


def _text(record: dict, field: str, place: str, required: bool) -> str:
    value = record.get(field)
    if value is None:
        if required:
            raise SeedError(f"{place}: missing field '{field}'")
        return ""
    if not isinstance(value, str):
        raise SeedError(f"{place}: field '{field}' is {type(value).__name__}, expected text")
    if required and not value.strip():
        raise SeedError(f"{place}: empty '{field}'")
    return value


def _records_from_files(paths: list[str]) -> Iterable[tuple[str, str, dict]]:
    """(source name, place for errors, record) for every row of every seed file."""
    for path in expand_paths(paths):
        source = os.path.basename(path).split(".")[0]
        for row in iter_rows(path):
            if row.record is None:
                raise SeedError(f"{where(row)}: {row.bad_reason}")
            yield source, where(row), row.record


def _records_from_hf(name: str, split: str) -> Iterable[tuple[str, str, dict]]:
    try:
        import datasets
    except ImportError:
        raise SeedError(f"evolve.seeds.hf_dataset {name!r}: needs the `datasets` package "
                        "(pip install datasets)") from None
    dataset = datasets.load_dataset(name, split=split)
    for i, record in enumerate(dataset):
        yield name, f"{name}[{split}] row {i}", dict(record)


def load_seeds(cfg) -> tuple[list[Sample], Counter]:
    """The seed samples (round 0) and counts (read, duplicates dropped, without output)."""
    counts: Counter = Counter()
    records = _records_from_files(cfg.paths) if cfg.paths else iter(())
    sources = [records]
    if cfg.hf_dataset:
        sources.append(_records_from_hf(cfg.hf_dataset, cfg.hf_split))
    seeds: dict[str, Sample] = {}
    for source_records in sources:
        for source, place, record in source_records:
            counts["read"] += 1
            instruction = _text(record, cfg.instruction_field, place, required=True).strip()
            input_ = _text(record, cfg.input_field, place, required=False).strip()
            output = _text(record, cfg.output_field, place, required=False)
            sid = seed_id(instruction, input_)
            if sid in seeds:
                counts["duplicate_seed"] += 1
                continue
            if not output.strip():
                counts["seed_without_output"] += 1
            seeds[sid] = Sample(sid, instruction, input_, output, 0, "seed", None, source, None)
            if cfg.limit and len(seeds) >= cfg.limit:
                return list(seeds.values()), counts
    if not seeds:
        raise SeedError(f"evolve.seeds: no seed records in {cfg.paths or cfg.hf_dataset}")
    return list(seeds.values()), counts
