"""Writes instruction shards: Parquet files with raywiz.artifacts.SHARD_SCHEMA, one round at a time.

Each file is written whole under a temporary name and renamed (``write_bytes_atomic``), so a killed
run leaves only complete files; the directory counts as done only once the recipe seals it with a
manifest. Names say the round: ``round-01-00000.parquet``.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raywiz.artifacts import MANIFEST, SHARD_SCHEMA, filesystem, join, write_bytes_atomic
from raywiz.evolve.samples import Sample


def clear_unsealed(directory: str) -> int:
    """Remove what a killed run left in an unsealed output directory; returns how many files."""
    fs, root = filesystem(directory)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return 0
    infos = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.type == pafs.FileType.File]
    for info in infos:
        if not info.path.endswith(MANIFEST):
            fs.delete_file(info.path)
    return len(infos)


def messages_of(row: dict, system: str | None = None) -> str:
    """A shard row as OpenAI-style turns (JSON text): the question (input folded in) and the answer."""
    question = f"{row['instruction']}\n{row['input']}" if row.get("input") else row["instruction"]
    turns = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": row["output"]}]
    return json.dumps(turns, ensure_ascii=False)


class ShardWriter:
    def __init__(self, directory: str, rows_per_shard: int, write_messages: bool = False,
                 system_prompt: str | None = None):
        self.directory = directory
        self.rows_per_shard = rows_per_shard
        self.schema = SHARD_SCHEMA.append(pa.field("messages", pa.string())) if write_messages else SHARD_SCHEMA
        self.write_messages, self.system_prompt = write_messages, system_prompt
        self.files: dict[str, int] = {}  # file name -> rows
        fs, root = filesystem(directory)
        fs.create_dir(root, recursive=True)

    def write_round(self, evol_round: int, samples: list[Sample]) -> list[str]:
        names = []
        for index, start in enumerate(range(0, len(samples), self.rows_per_shard)):
            chunk = samples[start : start + self.rows_per_shard]
            rows = [s.row() for s in chunk]
            if self.write_messages:
                rows = [dict(r, messages=messages_of(r, self.system_prompt)) for r in rows]
            table = pa.Table.from_pylist(rows, schema=self.schema)
            buffer = io.BytesIO()
            pq.write_table(table, buffer, compression="zstd")
            name = f"round-{evol_round:02d}-{index:05d}.parquet"
            write_bytes_atomic(join(self.directory, name), buffer.getvalue())
            self.files[name] = len(chunk)
            names.append(name)
        return names
