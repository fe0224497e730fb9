import json

import pyarrow as pa
import pyarrow.parquet as pq

from raywiz.data.pipeline import read_shard_batch
from raywiz.data.shards import iter_rows, validate


def _write_jsonl(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_bad_rows_are_reported_with_file_and_line(tmp_path):
    f = tmp_path / "d.jsonl"
    _write_jsonl(f, [
        json.dumps({"instruction": "a", "output": "b"}).encode(),
        json.dumps({"instruction": "a"}).encode(),  # missing output
        json.dumps({"instruction": "a", "output": "  "}).encode(),  # empty output
        b'{"instruction": "a", "output": "\xff\xfe"}',  # not UTF-8
        b"{not json",
        json.dumps({"instruction": "c", "output": "d", "source": "x"}).encode(),
    ])
    out = read_shard_batch({"path": [str(f)]}, "auto")
    bad = [(w, r) for w, r in zip(out["where"], out["bad_reason"]) if r]
    assert [w for w, _ in bad] == [f"{f}:line 2", f"{f}:line 3", f"{f}:line 4", f"{f}:line 5"]
    assert "missing field 'output'" in bad[0][1]
    assert "empty 'output'" in bad[1][1]
    assert "UTF-8" in bad[2][1]
    assert "JSON" in bad[3][1]
    good = [s for s, r in zip(out["sample_id"], out["bad_reason"]) if not r]
    assert len(good) == 2 and len(set(good)) == 2


def test_parquet_rows_keep_ids_and_provenance(tmp_path):
    f = tmp_path / "s.parquet"
    pq.write_table(pa.table({"sample_id": ["a1", "a2"], "instruction": ["i", "j"], "output": ["o", None],
                             "source": ["seed", "evol"]}), f)
    rows = [validate(r) for r in iter_rows(str(f))]
    assert rows[0].record["source"] == "seed" and not rows[0].bad_reason
    assert rows[1].bad_reason == "missing field 'output'" and rows[1].row == 1


def test_sample_ids_are_stable_without_an_id_column(tmp_path):
    f = tmp_path / "d.jsonl"
    _write_jsonl(f, [json.dumps({"instruction": "a", "output": "b"}).encode()])
    ids1 = read_shard_batch({"path": [str(f)]}, "auto")["sample_id"]
    ids2 = read_shard_batch({"path": [str(f)]}, "jsonl")["sample_id"]
    assert ids1 == ids2 and len(ids1[0]) == 16
