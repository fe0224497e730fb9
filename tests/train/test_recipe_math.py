"""The training math and the metrics history, without a cluster: lr_at, loss normalisation, the step
plan, TrainState, and metrics.jsonl after a resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from raywiz.config import parse_job
from raywiz.training.engine_base import lr_at
from raywiz.training.metrics import RECORD_KEYS, JsonlLogger
from raywiz.train.recipe import TrainState, loss_scale, step_plan


def _train(workers=1, global_batch=8, micro=1, epochs=3, max_steps=None, **optim):
    job = parse_job({"name": "t", "train": {"data": {}, "scaling": {"num_workers": workers},
                                            "optim": {"global_batch_size": global_batch, "micro_batch_size": micro,
                                                      "epochs": epochs, "max_steps": max_steps, **optim}}})
    return job.train


def test_lr_warms_up_linearly_then_follows_the_schedule():
    o = _train(lr=1e-3, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1).optim
    assert [lr_at(s, o, 20) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lr_at(4, o, 20) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(12, o, 20) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # halfway
    assert lr_at(20, o, 20) == pytest.approx(1e-4)  # the floor
    lin = _train(lr=1e-3, warmup_steps=0, schedule="linear").optim
    assert lr_at(5, lin, 10) == pytest.approx(5e-4)
    const = _train(lr=1e-3, warmup_steps=2, schedule="constant").optim
    assert lr_at(0, const, 10) == pytest.approx(5e-4) and lr_at(9, const, 10) == 1e-3


@pytest.mark.parametrize("accum,world", [(1, 1), (4, 1), (2, 3)])
def test_loss_scale_makes_the_update_the_mean_over_all_label_tokens(accum, world):
    """DeepSpeed divides each backward by accum and averages gradients over ranks; with loss_scale on each
    micro-batch's summed loss, what reaches the optimizer is sum(all token losses) / global label tokens."""
    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    micro = [[torch.randn(int(torch.randint(1, 9, ())), 5) for _ in range(accum)] for _ in range(world)]
    global_labels = sum(x.shape[0] for rank in micro for x in rank)
    grads = []
    for rank in micro:  # each rank's accumulated gradient, as DeepSpeed forms it
        w.grad = None
        for x in rank:
            ((x @ w).pow(2).sum() * loss_scale(global_labels, accum, world) / accum).backward()
        grads.append(w.grad.clone())
    update = torch.stack(grads).mean(0)  # the all-reduce average
    w.grad = None
    (torch.cat([x for rank in micro for x in rank]) @ w).pow(2).mean().backward()
    torch.testing.assert_close(update, w.grad)
    # the device-tensor form (several workers) gives the same factor
    assert float(loss_scale(torch.tensor(float(global_labels)), accum, world)) == pytest.approx(
        loss_scale(global_labels, accum, world))
    assert loss_scale(0, accum, world) == world * accum  # an all-prompt batch: no division by zero


def test_step_plan_takes_whole_global_batches_per_worker():
    tc = _train(workers=2, global_batch=8, micro=2, epochs=3)  # accum 2
    plan = step_plan(37, tc, n_params=10)
    assert tc.grad_accum_steps == 2
    assert plan.steps_per_epoch == 4  # 18 rows per worker // (2 rows x 2 micro-batches) per worker-step
    assert plan.total_steps == 12 and plan.rows_per_step == 8 and plan.rows_dropped_per_epoch == 37 - 32
    assert step_plan(37, _train(workers=2, global_batch=8, micro=2, epochs=3, max_steps=5), 10).total_steps == 5
    assert step_plan(7, tc, 10).steps_per_epoch == 0  # the driver turns this into a ConfigError


def test_train_state_advances_through_epochs_and_round_trips():
    s = TrainState()
    for _ in range(5):
        s.advance(steps_per_epoch=2)
    assert (s.step, s.epoch, s.step_in_epoch) == (5, 2, 1)
    back = TrainState.from_json(json.loads(json.dumps({**s.__dict__, "total_steps": 9})))
    assert back == s or (back.step, back.epoch, back.step_in_epoch) == (5, 2, 1)
    assert math.isnan(TrainState.from_json({"step": 1, "epoch": 0, "step_in_epoch": 1}).loss)


def _record(step):
    return {k: float(step) for k in RECORD_KEYS} | {"step": step, "eta_s": 3.0}


def test_metrics_jsonl_is_a_true_history_after_a_resume(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    first = JsonlLogger(path, resume_step=0)
    for step in range(1, 8):  # checkpoint at 5, killed after 7 (and a torn last line)
        first.log(_record(step))
    first.close()
    with open(path, "a") as f:
        f.write('{"step": 8, "lo')
    again = JsonlLogger(path, resume_step=5)  # the rerun resumes from checkpoint 5: steps 6.. come again
    for step in range(6, 10):
        again.log(_record(step))
    again.close()
    rows = [json.loads(line) for line in open(path)]
    assert [r["step"] for r in rows] == list(range(1, 10))
    assert all(list(r) == list(RECORD_KEYS) for r in rows)  # the keys a progress display reads, nothing else
    for key in ("step", "total_steps", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "data_wait",
                "elapsed_s"):
        assert key in RECORD_KEYS
