"""raywiz.log: one console convention; the progress display is a bar on a terminal and plain lines
elsewhere; the driver shows each training step once, whatever rank 0 posts."""

from __future__ import annotations

import io
import logging
import time

import pytest

from raywiz import log


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal_every_n_and_always_the_last():
    out = io.StringIO()
    bar = log.ProgressDisplay("train", total=10, unit="step", every=4, stream=out)
    for step in range(1, 11):
        bar.update(done=step, detail=f"loss {10 - step}.00", eta_s=10 - step)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == ["raywiz: train step 4/10 | loss 6.00 | ETA 0:06",
                     "raywiz: train step 8/10 | loss 2.00 | ETA 0:02",
                     "raywiz: train step 10/10 | loss 0.00 | ETA 0:00"]


def test_a_bar_on_a_terminal(monkeypatch):
    term = Terminal()
    bar = log.ProgressDisplay("train", total=3, unit="step", stream=term)
    bar.update(1, "loss 7.10 | 1,000 tok/s | MFU 41.0%")
    bar.update(2, "loss 6.90 | 1,000 tok/s | MFU 41.0%")
    bar.close()
    text = term.getvalue()
    assert "\r" in text and "3/3" in text and "MFU 41.0%" in text and "step/s" in text  # tqdm's rate and ETA
    assert "raywiz: train step" not in text  # no plain lines besides the bar


def test_nothing_off_rank_zero(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    out = io.StringIO()
    log.ProgressDisplay("train", total=2, stream=out).update(2)
    assert out.getvalue() == ""


def test_say_prints_once_with_the_prefix_and_warnings_are_marked(capsys, monkeypatch):
    log.say("train: done")
    log.get_logger("raywiz.eval.recipe").warning("no data for %s", "mbpp")
    monkeypatch.setenv("RANK", "1")
    log.say("not shown off rank 0")
    assert capsys.readouterr().err.splitlines() == ["raywiz: train: done", "raywiz: warning: no data for mbpp"]


def test_quiet_console_silences_dependencies_and_verbose_does_not(monkeypatch):
    for var in (log.LEVEL_ENV, "PYTHONWARNINGS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(logging.getLogger("ray.data"), "level", logging.INFO)
    log.setup_console(verbose_flag=False)
    assert logging.getLogger("ray.data").level == logging.ERROR and log.ray_log_settings()["log_to_driver"] is False
    log.setup_console(verbose_flag=True)
    assert log.verbose() and log.ray_log_settings() == {"log_to_driver": True}
    assert logging.getLogger(log.ROOT).level == logging.DEBUG


@pytest.mark.slow
def test_train_progress_shows_each_step_once(ray_local, capsys):
    from raywiz.training.progress import ProgressBoard, TrainProgress

    board = ProgressBoard.create()
    shown = []
    with TrainProgress(board, total_steps=4) as progress:
        real_update = progress.display.update

        def update(n=1, detail="", eta_s=None, done=None):
            shown.append((done, detail))
            real_update(n, detail, eta_s, done)

        progress.display.update = update
        for i, step in enumerate((1, 2, 3, 2, 3, 4)):  # a worker restarted from step 1's checkpoint re-runs 2, 3
            if i == 3:
                board.post({"event": "resumed from step 1 (epoch 1, step 1 of 4 in it)", "step": 1})
            board.post({"step": step, "total_steps": 4, "loss": 5.0 - step, "lr": 1e-3, "tokens_per_s": 100.0,
                        "mfu": 0.25})
            time.sleep(0.05)
    assert [s for s, _ in shown] == [1, 2, 3, 4]
    assert shown[-1][1] == "loss 1.0000 | lr 1.00e-03 | 100 tok/s | MFU 25.0%"
    assert "raywiz: train: resumed from step 1 (epoch 1, step 1 of 4 in it)" in capsys.readouterr().err
