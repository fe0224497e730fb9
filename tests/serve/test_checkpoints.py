"""Finding and vetting checkpoints: layout, manifests, targets, eval scores (no model loading)."""

from __future__ import annotations

import json
import os

import pytest

from raywiz.artifacts import write_json_atomic
from raywiz.serve.checkpoints import (
    CheckpointRef,
    eval_scores,
    list_run_checkpoints,
    resolve_target,
    verify,
)

from .conftest import make_checkpoint, truncate_weights


def test_list_run_checkpoints_orders_by_step_and_keeps_the_run(run_dir):
    make_checkpoint(run_dir, 20)
    make_checkpoint(run_dir, 3)
    (run_dir / "train" / "not_a_checkpoint").mkdir()
    refs = list_run_checkpoints(str(run_dir))
    assert [r.name for r in refs] == ["checkpoint_00000003", "checkpoint_00000020"]
    assert [r.step for r in refs] == [3, 20]
    assert all(r.run_dir == str(run_dir) and r.path.endswith("/hf") for r in refs)


def test_verify_complete_pending_truncated_and_plain(run_dir, tmp_path):
    ok = make_checkpoint(run_dir, 1)
    verdict = verify(list_run_checkpoints(str(run_dir))[0])
    assert verdict.ok and verdict.info["step"] == 1 and verdict.info["template"] == "wizardcoder"

    # Still being written: files there, manifest not yet.
    partial = run_dir / "train" / "checkpoint_00000002" / "hf"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")
    pending = verify(CheckpointRef("checkpoint_00000002", str(partial), 2, str(run_dir)))
    assert not pending.ok and pending.pending and "manifest" in pending.reason

    truncated = make_checkpoint(run_dir, 3)
    truncate_weights(truncated)
    refused = verify(CheckpointRef("checkpoint_00000003", truncated, 3, str(run_dir)))
    assert not refused.ok and not refused.pending
    assert "model.safetensors" in refused.reason and "manifest says" in refused.reason

    # A user's own model dir: no manifest, no raywiz.json, still servable.
    plain = tmp_path / "my-model"
    plain.mkdir()
    for name in os.listdir(ok):
        if name not in ("manifest.json", "raywiz.json"):
            (plain / name).write_bytes((open(os.path.join(ok, name), "rb")).read())
    assert verify(CheckpointRef("my-model", str(plain))).ok
    os.remove(plain / "config.json")
    missing = verify(CheckpointRef("my-model", str(plain)))
    assert not missing.ok and "config.json" in missing.reason


def test_resolve_target_accepts_model_checkpoint_run_dirs_and_run_names(run_dir, tmp_path):
    hf = make_checkpoint(run_dir, 7)
    storage = str(run_dir.parent)

    by_hf = resolve_target(hf, "unused", storage)
    assert by_hf.model.name == "checkpoint_00000007" and by_hf.model.step == 7 and by_hf.run_dir == str(run_dir)

    by_ckpt = resolve_target(os.path.dirname(hf), "unused", storage)
    assert by_ckpt.model.path == hf

    by_run = resolve_target(str(run_dir), "unused", storage)
    assert by_run.model is None and by_run.run_dir == str(run_dir)

    by_name = resolve_target("demo", "unused", storage)
    assert by_name.model is None and by_name.run_dir == str(run_dir)

    default = resolve_target(None, "/the/jobs/run", storage)
    assert default.model is None and default.run_dir == "/the/jobs/run"

    hub = resolve_target("bigcode/starcoder", "unused", storage)
    assert hub.model.path == "bigcode/starcoder" and hub.run_dir is None

    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        resolve_target(str(tmp_path / "no-such-dir"), "unused", storage)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        resolve_target(str(tmp_path / "empty"), "unused", storage)


def test_eval_scores_reads_pass_at_1_of_complete_results_only(run_dir):
    from raywiz.artifacts import EvalDir, RunLayout

    layout = RunLayout(str(run_dir))
    for bench, score in (("humaneval", 0.25), ("mbpp", 0.5), ("mbpp+", 0.75)):
        results = EvalDir(layout.eval_dir("checkpoint_00000004", bench))
        write_json_atomic(results.summary, {"benchmark": bench, "n_tasks": 4, "pass@1": score})
        if bench != "mbpp+":  # mbpp+ is still being written: no manifest yet, so no score
            results.seal("f" * 16, bench)
    broken = EvalDir(layout.eval_dir("checkpoint_00000004", "ds1000"))
    os.makedirs(broken.path)
    with open(broken.summary, "w") as f:
        f.write("{not json")
    broken.seal("f" * 16, "ds1000")
    assert eval_scores(str(run_dir), "checkpoint_00000004") == {"humaneval": 0.25, "mbpp": 0.5}
    assert eval_scores(str(run_dir), "checkpoint_00000009") == {}
    assert eval_scores(None, "checkpoint_00000004") == {}
    assert json.loads(open(EvalDir(layout.eval_dir("checkpoint_00000004", "mbpp")).summary).read())["pass@1"] == 0.5
