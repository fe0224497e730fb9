"""Training progress on the driver's console: rank 0 posts each step's metrics, the driver shows them.

Ray workers' own output stays in Ray's log files (see raywiz.log), so the progress a user sees
comes from the driver: rank 0 posts each logged step's metrics to a small Ray actor
(fire-and-forget, nothing waits on it), and a thread in the driver takes them and draws
raywiz's progress display (a bar on a terminal: step, loss, tok/s, MFU, ETA; plain lines elsewhere).
This works on any storage and any cluster, unlike tailing ``metrics.jsonl``.

    board = ProgressBoard.create()                 # driver, before fit()
    with TrainProgress(board, total_steps):        # driver: shows the steps while fit() runs
        trainer.fit()
    board.post(metrics)                            # rank 0, once per logged step (in the recipe)
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from raywiz.log import ProgressDisplay

POLL_S = 0.5


class _Board:
    """The actor: a list of posted records, taken in order."""

    def __init__(self):
        self.records: list[dict] = []

    def post(self, record: dict) -> None:
        self.records.append(record)

    def take(self) -> list[dict]:
        records, self.records = self.records, []
        return records


class ProgressBoard:
    """A handle both sides share; it pickles into the train loop's config."""

    def __init__(self, actor):
        self.actor = actor

    @classmethod
    def create(cls) -> "ProgressBoard":
        import ray

        # num_cpus=0: it must never take a CPU slot the train workers or Ray Data need.
        return cls(ray.remote(num_cpus=0)(_Board).remote())

    def post(self, record: dict[str, Any]) -> None:
        self.actor.post.remote(record)  # fire-and-forget: the training step never waits for the console

    def take(self) -> list[dict]:
        import ray

        return ray.get(self.actor.take.remote())

    def close(self) -> None:
        import ray

        ray.kill(self.actor)


def describe(record: dict[str, Any]) -> str:
    """The detail shown for one step: loss, lr, tokens/s, MFU."""
    parts = [f"loss {record['loss']:.4f}"]
    if record.get("lr") is not None:
        parts.append(f"lr {record['lr']:.2e}")
    if record.get("tokens_per_s") is not None:
        parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
    if record.get("mfu") is not None:
        parts.append(f"MFU {record['mfu']:.1%}")
    return " | ".join(parts)


class TrainProgress:
    """Draws the posted steps while ``fit()`` runs (a context manager around it)."""

    def __init__(self, board: ProgressBoard, total_steps: int, every: int = 1, stage: str = "train",
                 detail: Callable[[dict], str] = describe):
        self.board, self.stage, self.detail = board, stage, detail  # detail: the text shown after each step
        self.display = ProgressDisplay(stage, total_steps, unit="step", every=every)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raywiz-train-progress", daemon=True)

    def __enter__(self) -> "TrainProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self._show(self.board.take())  # the last steps, posted just before fit() returned
        except Exception:  # noqa: BLE001 - the console must never fail a finished run
            pass
        self.display.close()
        try:
            self.board.close()
        except Exception:  # noqa: BLE001
            pass

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self._show(self.board.take())
            except Exception:  # noqa: BLE001 - e.g. Ray shutting down; the run's own error surfaces from fit()
                return

    def _show(self, records: list[dict]) -> None:
        for record in records:  # in the order rank 0 posted them
            if "event" in record:  # e.g. "resumed from step 20 ...": a restart, shown as it happens
                self.display.note(f"{self.stage}: {record['event']}")
                continue
            if record["step"] <= self.display.done:  # a restarted worker re-runs steps: show each once
                continue
            self.display.update(done=record["step"], detail=self.detail(record), eta_s=record.get("eta_s"))

