"""The request cache: every answered request, keyed by (model, messages, parameters).

It is what makes `raywiz evolve` resumable and idempotent. Each writer (one per Ray worker) appends
JSON lines to its own part file and flushes after every answer, so an answer survives a SIGKILL of
the run the moment it is written, and no two processes ever write the same file. Readers load
every part; a line cut short by a kill is skipped (its request is simply sent again).

The directory must be one that the driver and all workers see (a local disk on one node, a shared
filesystem on several). Failed requests are never cached: a rerun retries them.
"""

from __future__ import annotations

import json
import os
import uuid

from raywiz.inference.chat import ChatResult


def read_parts(paths: list[str], parse) -> dict:
    """key -> value from the JSON lines of append-only part files, `parse(record) -> (key, value)`.
    A line without its newline is the tail of a killed write, and a line `parse` cannot read is
    skipped: its entry is simply made again."""
    out: dict = {}
    for path in paths:
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    continue
                try:
                    key, value = parse(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    continue
                out[key] = value
    return out


class RequestCache:
    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def part_files(self) -> list[str]:
        return sorted(os.path.join(self.directory, f) for f in os.listdir(self.directory) if f.endswith(".jsonl"))

    def load(self) -> dict[str, ChatResult]:
        """key -> answer, from every part file."""
        return read_parts(self.part_files(), lambda rec: (rec["key"], ChatResult.from_cache_record(rec)))

    def writer(self, name: str | None = None) -> "CacheWriter":
        return CacheWriter(os.path.join(self.directory, f"part-{name or uuid.uuid4().hex}.jsonl"))


class CacheWriter:
    """Appends answers to one part file; each line is flushed to the OS before `put` returns."""

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "ab", buffering=0)  # unbuffered: one write() per answer

    def put(self, result: ChatResult) -> None:
        if not result.ok:
            return
        line = json.dumps(result.to_cache_record(), ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"
        self._file.write(line)

    def close(self) -> None:
        self._file.close()
