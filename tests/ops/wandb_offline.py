"""Read back what an offline W&B run wrote (its ``run-<id>.wandb`` file).

wandb 0.31 ships no Python reader for its transaction log (the old ``wandb.sdk.internal.datastore``
is gone and ``wandb sync`` has no ``--view``), so this is a small one. The format is LevelDB's log:
a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each
``crc32c:u32 length:u16 type:u8`` + payload (type 1 full, 2 first, 3 middle, 4 last); the
reassembled payloads are ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import time
from dataclasses import dataclass, field

BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(path: str):
    data = open(path, "rb").read()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    pos, pending = 7, b""
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


@dataclass
class OfflineRun:
    path: str
    run_id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    artifacts: list[dict] = field(default_factory=list)  # name, type, metadata, aliases, entries
    files: list[str] = field(default_factory=list)
    exit_code: int | None = None


def _nested_set(d: dict, keys: list[str], value):
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def read_run(wandb_file: str) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    out = OfflineRun(wandb_file)
    for raw in iter_payloads(wandb_file):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.run_id, out.project, out.group, out.job_type = r.run_id, r.project, r.run_group, r.job_type
            for item in r.config.update:
                out.config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                _nested_set(out.config, list(item.nested_key) or [item.key], json.loads(item.value_json))
        elif kind == "history":
            row: dict = {}
            for item in rec.history.item:
                _nested_set(row, list(item.nested_key) or [item.key], json.loads(item.value_json))
            out.history.append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                _nested_set(out.summary, list(item.nested_key) or [item.key], json.loads(item.value_json))
        elif kind == "artifact":
            a = rec.artifact
            out.artifacts.append({
                "name": a.name, "type": a.type, "digest": a.digest, "aliases": list(a.aliases),
                "metadata": json.loads(a.metadata) if a.metadata else {},
                "entries": {e.path: {"ref": e.ref, "digest": e.digest} for e in a.manifest.contents},
            })
        elif kind == "files":
            out.files += [f.path for f in rec.files.files]
        elif kind == "exit":
            out.exit_code = rec.exit.exit_code
    return out


def read_finished_run(wandb_file: str, timeout: float = 30) -> OfflineRun:
    """read_run once the file holds the run's exit record: wandb's core process writes the file
    asynchronously, and can still be flushing it when run.finish() returns on a busy machine."""
    deadline = time.time() + timeout
    while True:
        run = read_run(wandb_file)
        if run.exit_code is not None or time.time() > deadline:
            return run
        time.sleep(0.2)


def find_runs(root: str, run_id: str | None = None) -> list[OfflineRun]:
    """Every offline run under root (a W&B dir's parent), oldest first; optionally one run id's."""
    pattern = os.path.join(root, "**", "offline-run-*", "run-*.wandb")
    runs = [read_finished_run(p) for p in sorted(glob.glob(pattern, recursive=True))]
    return [r for r in runs if run_id is None or r.run_id == run_id]
