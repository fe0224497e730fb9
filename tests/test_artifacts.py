import os

import pytest

from raywiz.artifacts import check_manifest, expand_paths, write_manifest
from raywiz.train.checkpoint import latest_complete_checkpoint


def _ckpt(root, step, files):
    d = root / f"checkpoint_{step:08d}"
    for name, data in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    return d


def test_manifest_seals_a_directory_and_detects_damage(tmp_path):
    d = _ckpt(tmp_path, 1, {"zero/a.pt": b"x" * 100, "hf/model.safetensors": b"y" * 50})
    assert not check_manifest(str(d)).complete  # no manifest yet: still being written
    write_manifest(str(d), kind="train_checkpoint", meta={"step": 1}, checksums=True)
    ok = check_manifest(str(d), kind="train_checkpoint", verify_checksums=True)
    assert ok.complete and ok.manifest["meta"]["step"] == 1
    assert not check_manifest(str(d), kind="hf_export").complete  # wrong kind
    (d / "hf/model.safetensors").write_bytes(b"y" * 20)  # truncated
    bad = check_manifest(str(d))
    assert not bad.complete and "model.safetensors has 20 bytes" in bad.reason
    (d / "hf/model.safetensors").write_bytes(b"z" * 50)  # same size, other bytes
    assert check_manifest(str(d)).complete
    assert not check_manifest(str(d), verify_checksums=True).complete
    os.remove(d / "zero/a.pt")
    assert "missing" in check_manifest(str(d)).reason


def test_latest_complete_checkpoint_skips_partial_ones(tmp_path):
    for step in (10, 20):
        d = _ckpt(tmp_path, step, {"state.bin": b"s" * step})
        write_manifest(str(d), kind="train_checkpoint")
    _ckpt(tmp_path, 30, {"state.bin": b"partial"})  # interrupted: no manifest
    assert latest_complete_checkpoint(str(tmp_path)).endswith("checkpoint_00000020")


def test_expand_paths_globs_dirs_and_package_files(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/1.parquet", "a/2.jsonl", "a/notes.txt", "b.jsonl"):
        (tmp_path / name).write_text("{}")
    assert [os.path.basename(p) for p in expand_paths([str(tmp_path / "a")])] == ["1.parquet", "2.jsonl"]
    assert expand_paths([str(tmp_path / "*.jsonl")]) == [str(tmp_path / "b.jsonl")]
    assert expand_paths(["raywiz:quickstart/instructions.jsonl"])[0].endswith("assets/quickstart/instructions.jsonl")
    with pytest.raises(FileNotFoundError, match="no data files match"):
        expand_paths([str(tmp_path / "*.parquet")])
