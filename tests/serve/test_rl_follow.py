"""Serve follows a run whose rl stage writes checkpoints too ({run}/rl/checkpoint_N/hf): the most trained
complete checkpoint is served (rl's newest over any of train's), a new rl checkpoint is hot-loaded, a later
train checkpoint never replaces a served rl one, and the API says which stage and step is served.
The service itself (as a replica runs it), then the real Ray Serve app of the package."""

from __future__ import annotations

import time

import pytest
import requests
import torch

from raywiz.serve.checkpoints import list_run_checkpoints, resolve_target

from .conftest import latest_step, make_checkpoint
from .test_api import start_service


def _logits(loaded) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(torch.tensor([[5, 17, 99, 3]])).logits


def test_rl_checkpoints_are_listed_after_train_s_with_their_own_ids(run_dir):
    make_checkpoint(run_dir, 4)
    make_checkpoint(run_dir, 1, seed=101, stage="rl")
    make_checkpoint(run_dir, 2, seed=102, stage="rl")
    refs = list_run_checkpoints(str(run_dir))
    assert [(r.name, r.stage, r.step) for r in refs] == [
        ("checkpoint_00000004", "train", 4), ("rl-checkpoint_00000001", "rl", 1), ("rl-checkpoint_00000002", "rl", 2)]
    assert refs[1].path == str(run_dir / "rl" / "checkpoint_00000001" / "hf")

    # An rl checkpoint named directly keeps its id and run; a run with only rl/ is a run to follow.
    target = resolve_target(str(run_dir / "rl" / "checkpoint_00000002"), "", str(run_dir.parent))
    assert (target.model.name, target.model.stage, target.run_dir) == ("rl-checkpoint_00000002", "rl", str(run_dir))
    only_rl = run_dir.parent / "only-rl"
    make_checkpoint(only_rl, 1, stage="rl")
    assert resolve_target("only-rl", "", str(run_dir.parent)).run_dir == str(only_rl)


def test_service_serves_rl_over_train_and_hot_loads_new_rl_checkpoints(run_dir):
    make_checkpoint(run_dir, 1)
    make_checkpoint(run_dir, 3)
    make_checkpoint(run_dir, 1, seed=101, stage="rl")
    service = start_service(run_dir)
    try:
        current = service.pool.current
        assert current.name == "rl-checkpoint_00000001" and current.ref.path.endswith("rl/checkpoint_00000001/hf")
        card = next(c for c in service.model_cards() if c["current"])
        assert (card["id"], card["stage"], card["step"]) == ("rl-checkpoint_00000001", "rl", 1)
        status = service.status()
        assert (status["current"], status["current_stage"], status["current_step"]) == \
            ("rl-checkpoint_00000001", "rl", 1)
        rl_logits = _logits(current)

        make_checkpoint(run_dir, 5)  # train goes on: a higher step, but less trained than rl's model
        assert service.follow_once() is None
        assert service.pool.current.name == "rl-checkpoint_00000001"

        make_checkpoint(run_dir, 2, seed=102, stage="rl", truncated=True)  # an interrupted copy is refused
        assert service.follow_once() is None
        assert "rl-checkpoint_00000002" in {r["name"] for r in service.status()["refused"]}

        make_checkpoint(run_dir, 3, seed=103, stage="rl")
        swapped = service.follow_once()
        assert swapped is not None and swapped.name == "rl-checkpoint_00000003" == service.pool.current.name
        assert (_logits(swapped) - rl_logits).abs().max() > 1e-3  # other weights are being served

        rows = {r["id"]: r for r in service.checkpoints()}
        assert {i: (r["stage"], r["step"]) for i, r in rows.items()} == {
            "checkpoint_00000001": ("train", 1), "checkpoint_00000003": ("train", 3),
            "checkpoint_00000005": ("train", 5), "rl-checkpoint_00000001": ("rl", 1),
            "rl-checkpoint_00000002": ("rl", 2), "rl-checkpoint_00000003": ("rl", 3)}
        assert [i for i, r in rows.items() if r["current"]] == ["rl-checkpoint_00000003"]
        assert rows["rl-checkpoint_00000002"]["state"] == "refused"

        # train's checkpoint of the same step is still reachable by its own id, side by side
        with service.acquire("checkpoint_00000003") as older:
            assert older.ref.stage == "train" and older.ref.path.endswith("train/checkpoint_00000003/hf")
        assert service.pool.current.name == "rl-checkpoint_00000003"
    finally:
        service.close()


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.slow
def test_the_serve_app_follows_an_rl_run_and_hot_loads_its_checkpoints(serve_app):
    """The package's Ray Serve replica is pointed at another run (reconfigured in place, as `raywiz serve
    --checkpoint RUN` does), which has train and rl checkpoints, then back at its own run."""
    from raywiz.cli import main
    from raywiz.serve.app import run_serve

    url = serve_app.url
    rl_run = serve_app.run_dir.parent / "rl-demo"
    make_checkpoint(rl_run, 2)
    make_checkpoint(rl_run, 1, seed=101, stage="rl")

    def served() -> dict:
        return requests.get(f"{url}/api/status", timeout=10).json()

    try:
        assert main(["serve", str(serve_app.job_path), "--checkpoint", "rl-demo", "--detach"]) == 0
        _wait_for(lambda: served()["current"] == "rl-checkpoint_00000001", 60, "rl's checkpoint to be served")
        cards = requests.get(f"{url}/v1/models", timeout=10).json()["data"]
        current = next(c for c in cards if c["current"])
        assert (current["id"], current["stage"], current["step"]) == ("rl-checkpoint_00000001", "rl", 1)

        make_checkpoint(rl_run, 3)  # a later train checkpoint: not swapped in
        make_checkpoint(rl_run, 2, seed=102, stage="rl")  # a new rl checkpoint: hot-loaded
        _wait_for(lambda: served()["current"] == "rl-checkpoint_00000002", 60, "the new rl checkpoint")
        loaded = [e["id"] for e in served()["events"] if e["event"] == "loaded"]
        assert "checkpoint_00000003" not in loaded
        r = requests.post(f"{url}/v1/completions", json={"prompt": "def f(x):", "max_tokens": 4}, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == "rl-checkpoint_00000002"
        page = requests.get(f"{url}/api/checkpoints", timeout=10).json()
        row = next(c for c in page["checkpoints"] if c["current"])
        assert page["current"] == "rl-checkpoint_00000002" and (row["stage"], row["step"]) == ("rl", 2)
    finally:
        run_serve(serve_app.job, blocking=False)  # back to following the package's own run, and its newest
        own = f"checkpoint_{latest_step(serve_app.run_dir):08d}"  # (train) checkpoint, though rl's was served
        _wait_for(lambda: served()["current"] == own, 60, "the job's own run to be followed again")
