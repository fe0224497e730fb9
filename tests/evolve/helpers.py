"""Small seed files for the evolve tests."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq

from raywiz.artifacts import SHARD_SCHEMA

# Seeds long enough that different seeds' evolutions are not near-duplicates of each other.
TOPICS = [
    "parses a CSV file of employee records and returns the average salary for every department name",
    "merges two sorted lists of integers into a single sorted list without using the built-in sort",
    "counts how many times each word appears in a paragraph, ignoring punctuation and letter case",
    "finds the longest substring without repeating characters in a given string of ascii letters",
    "validates whether a string of brackets such as parentheses and braces is properly balanced",
    "converts a Roman numeral written in capital letters into the matching positive integer value",
    "rotates a square matrix of numbers by ninety degrees clockwise and returns the rotated copy",
    "returns the first n prime numbers using a sieve and checks the input is a positive integer",
]


def seed_records() -> list[dict]:
    return [{"instruction": f"Write a Python function that {t}.", "input": "",
             "output": f"```python\ndef solve(data):\n    return data  # {i}\n```"} for i, t in enumerate(TOPICS)]


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def read_shards(out_dir) -> list[dict]:
    """Every row of an evolve output's Parquet shards, in file order (each file checked for the schema)."""
    rows = []
    for name in sorted(os.listdir(out_dir)):
        if name.endswith(".parquet"):
            table = pq.read_table(os.path.join(out_dir, name))
            assert table.schema.equals(SHARD_SCHEMA, check_metadata=False)
            rows.extend(table.to_pylist())
    return rows
