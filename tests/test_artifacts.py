import json
import os

import pytest

from raywiz.artifacts import (MODEL_INFO, Kind, ModelInfo, RunLayout, check_manifest, checkpoint_of, expand_paths,
                              export_of, write_manifest)


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


def test_run_layout_lists_checkpoints_and_skips_partial_ones(tmp_path):
    layout = RunLayout.of(str(tmp_path), "run")
    train = tmp_path / "run" / "train"
    for step in (10, 20, 9):
        d = _ckpt(train, step, {"state.bin": b"s" * step, "hf/model.safetensors": b"w"})
        write_manifest(str(d / "hf"), kind=Kind.HF_EXPORT)
        write_manifest(str(d), kind=Kind.TRAIN_CHECKPOINT)
    _ckpt(train, 30, {"state.bin": b"partial"})  # interrupted: no manifest
    (train / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray's own file: not a checkpoint
    (train / "checkpoint_00000040.tmp").mkdir()
    assert [c.step for c in layout.checkpoints()] == [9, 10, 20, 30]  # by step, not by name
    assert [c.step for c in layout.checkpoints(complete=True)] == [9, 10, 20]
    latest = layout.latest_checkpoint()
    assert latest == layout.checkpoint(20) and latest.path == str(train / "checkpoint_00000020")
    assert latest.hf == str(train / "checkpoint_00000020" / "hf") and latest.run == layout
    assert checkpoint_of(latest.hf) == latest and checkpoint_of(latest.path) == latest
    assert export_of(latest.hf) == export_of(latest.adapter) == latest and export_of(latest.path) is None
    assert checkpoint_of(str(tmp_path / "models" / "hf")) is None
    assert layout.eval_dir(latest.name, "humaneval") == str(tmp_path / "run" / "eval" / latest.name / "humaneval")
    assert RunLayout.of("s3://bucket/runs", "r").checkpoint(3).hf == "s3://bucket/runs/r/train/checkpoint_00000003/hf"
    assert checkpoint_of("s3://bucket/runs/r/train/checkpoint_00000003/hf").run.root == "s3://bucket/runs/r"
    # The manifest stores the kind's plain string, and a wrong kind is refused.
    assert check_manifest(latest.path, kind="train_checkpoint").complete
    assert not check_manifest(latest.path, kind=Kind.HF_EXPORT).complete


def test_expand_paths_globs_dirs_and_package_files(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/1.parquet", "a/2.jsonl", "a/notes.txt", "b.jsonl"):
        (tmp_path / name).write_text("{}")
    assert [os.path.basename(p) for p in expand_paths([str(tmp_path / "a")])] == ["1.parquet", "2.jsonl"]
    assert expand_paths([str(tmp_path / "*.jsonl")]) == [str(tmp_path / "b.jsonl")]
    assert expand_paths(["raywiz:quickstart/instructions.jsonl"])[0].endswith("assets/quickstart/instructions.jsonl")
    with pytest.raises(FileNotFoundError, match="no data files match"):
        expand_paths([str(tmp_path / "*.parquet")])


def test_checkpoint_dir_names_every_part_and_staging_keeps_the_checkpoint_name(tmp_path):
    layout = RunLayout(str(tmp_path / "run"))
    ckpt = layout.checkpoint(12)
    assert ckpt.rng(3) == os.path.join(ckpt.path, "rng", "rank_3.pt")
    assert {os.path.dirname(p) for p in (ckpt.zero, ckpt.fsdp2, ckpt.train_state, ckpt.hf, ckpt.adapter)} == {ckpt.path}
    staged = layout.staged_checkpoint(12, 1)
    assert staged.path.startswith(layout.train_staging) and staged.name == f"{ckpt.name}.rank_1"
    assert staged.rng(1) != ckpt.rng(1) and staged.step is None  # not a checkpoint of the run until moved


def test_model_info_round_trips_and_is_empty_for_other_models(tmp_path):
    hf = str(tmp_path / "hf")
    assert ModelInfo.read(hf) == ModelInfo() and ModelInfo().to_dict() == {}  # a user's own model: none
    info = ModelInfo(step=7, run="r", base_model="tiny-gpt-bigcode", template="custom", prompt="Q: {instruction}\nA:")
    info.write(hf)
    assert ModelInfo.read(hf) == info
    assert json.loads((tmp_path / "hf" / MODEL_INFO).read_text()) == info.to_dict()  # unset fields stay out
    (tmp_path / "hf" / MODEL_INFO).write_text(json.dumps({"step": 9, "written_by": "a later raywiz"}))
    assert ModelInfo.read(hf) == ModelInfo(step=9)  # unknown keys are ignored
    for broken in ("{", "[1, 2]"):
        (tmp_path / "hf" / MODEL_INFO).write_text(broken)
        assert ModelInfo.read(hf) == ModelInfo()
    assert ModelInfo.read("org/model") == ModelInfo()  # a hub id


def test_rl_has_its_own_training_dir_and_checkpoints_are_found_under_it(tmp_path):
    layout = RunLayout(str(tmp_path / "r"))
    rl_ckpt = layout.training("rl").checkpoint(7)
    assert rl_ckpt.path == str(tmp_path / "r" / "rl" / "checkpoint_00000007")
    assert layout.training("rl").metrics == str(tmp_path / "r" / "rl" / "metrics.jsonl")
    assert checkpoint_of(rl_ckpt.hf) == rl_ckpt and rl_ckpt.stage == "rl" and rl_ckpt.run == layout
    assert layout.checkpoint(3).stage == "train"  # the layout's own checkpoint paths are train's
    with pytest.raises(ValueError, match="eval"):
        layout.training("eval")
    for ckpt in (layout.checkpoint(2), rl_ckpt):
        os.makedirs(ckpt.path)
    assert [c.stage for c in layout.all_checkpoints()] == ["train", "rl"]
