"""Read instruction shards (Parquet, JSONL, JSON) into rows that remember their file and row number.

Every row is validated here, once: a bad row (missing field, empty output, text that is not valid
UTF-8) keeps its file and row so the report can point at it. Provenance columns are kept.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Iterator

import pyarrow.parquet as pq

from raywiz.artifacts import filesystem, stable_sample_id


class BadRowError(ValueError):
    """Raised with on_bad_row=error: the message names the file and row."""


@dataclass
class Row:
    file: str
    row: int  # 1-based line number for JSONL, 0-based row index for Parquet/JSON arrays
    record: dict | None
    bad_reason: str = ""


def _open_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        data = f.read()
    return gzip.decompress(data) if path.endswith(".gz") else data


def _detect_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    raise ValueError(f"{path}: cannot tell the format from the name; set train.data.format")


def iter_rows(path: str, fmt: str = "auto") -> Iterator[Row]:
    """Yield every row of one shard, bad ones included (marked, with a reason)."""
    kind = _detect_format(path, fmt)
    if kind == "parquet":
        fs, p = filesystem(path)
        table = pq.read_table(p, filesystem=fs)
        for i, record in enumerate(table.to_pylist()):
            yield Row(path, i, record)
    elif kind == "jsonl":
        for lineno, raw in enumerate(_open_bytes(path).split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Row(path, lineno, None, f"undecodable text (not UTF-8): {e.reason} at byte {e.start}")
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield Row(path, lineno, None, f"not valid JSON: {e.msg} (column {e.colno})")
                continue
            yield Row(path, lineno, record if isinstance(record, dict) else None,
                      "" if isinstance(record, dict) else "not a JSON object")
    else:  # a JSON array of objects, as Code Alpaca ships
        try:
            records = json.loads(_open_bytes(path).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            yield Row(path, 0, None, f"file is not a valid UTF-8 JSON array: {e}")
            return
        if not isinstance(records, list):
            yield Row(path, 0, None, "a .json shard must hold a JSON array of objects")
            return
        for i, record in enumerate(records):
            yield Row(path, i, record if isinstance(record, dict) else None,
                      "" if isinstance(record, dict) else "not a JSON object")


def validate(row: Row) -> Row:
    """Fill row.bad_reason for rows that cannot train."""
    if row.bad_reason:
        return row
    rec = row.record or {}
    for field in ("instruction", "output"):
        value = rec.get(field)
        if value is None:
            row.bad_reason = f"missing field '{field}'"
            return row
        if not isinstance(value, str):
            row.bad_reason = f"field '{field}' is {type(value).__name__}, expected text"
            return row
        if not value.strip():
            row.bad_reason = f"empty '{field}'"
            return row
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            row.bad_reason = f"field '{field}' holds undecodable text (lone surrogates)"
            return row
    inp = rec.get("input")
    if inp is not None and not isinstance(inp, str):
        row.bad_reason = f"field 'input' is {type(inp).__name__}, expected text"
    return row


def sample_id_of(row: Row, conversation: str = "") -> str:
    """The shard's own sample_id, else one derived from the content (stable across runs)."""
    rec = row.record or {}
    sid = rec.get("sample_id")
    if isinstance(sid, str) and sid:
        return sid
    if conversation:
        return stable_sample_id(conversation)
    return stable_sample_id(rec.get("instruction", ""), rec.get("input") or "", rec.get("output", ""))


def where(row: Row) -> str:
    unit = "line" if row.file.endswith((".jsonl", ".jsonl.gz")) else "row"
    return f"{row.file}:{unit} {row.row}"
