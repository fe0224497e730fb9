"""Sandbox runs for the verify step: a verdict cache, and a background scorer fed while the LLM works.

A run is one (code, tests) pair scored by the benchmarks' MBPP rule: the tests (plain asserts) run in
the trusted checker, the code in the sandbox (raywiz.benchmarks.score). Its key is the content hash
of what decides the verdict (entry point, code, tests, time limit), so the same pair is never run
twice, in one run or across a resume.

VerdictCache  appends each verdict to a JSON-lines part file the moment it exists (unbuffered, one
              write per verdict, like the request cache), so a SIGKILL loses none. Part files are named
              by the verify config's hash: verdicts made under another verify config are refused,
              not mixed in.
SandboxRunner a thread that takes submitted runs in batches and scores them on the Ray cluster's
              sandbox workers (raywiz.benchmarks.cluster_scoring.ClusterScorer), or in this process
              when Ray has no free CPU; verdicts come back on a queue as each finishes, so the driver
              goes on sending LLM requests meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass

from raywiz.benchmarks import Task
from raywiz.benchmarks.score import ScoreSettings, Verdict
from raywiz.config_base import ConfigError
from raywiz.evolve.cache import read_parts
from raywiz.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class SandboxRun:
    entry_point: str
    code: str
    tests: tuple[str, ...]
    timeout_s: float

    @property
    def key(self) -> str:
        blob = json.dumps([self.entry_point, self.code, list(self.tests), self.timeout_s], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def task(self) -> Task:
        return Task("mbpp", self.key, "", "", entry_point=self.entry_point, test_list=list(self.tests))


class VerdictCache:
    def __init__(self, directory: str, config_hash: str):
        self.directory, self.config_hash = directory, config_hash
        os.makedirs(directory, exist_ok=True)
        others = sorted({f.split("-")[1] for f in os.listdir(directory)
                         if f.startswith("part-") and f.endswith(".jsonl") and f.split("-")[1] != config_hash})
        if others:
            raise ConfigError(
                f"evolve.verify: this run's verdicts ({directory}) were made with another verify config (hash "
                f"{', '.join(others)}, now {config_hash}); put evolve.verify back as it was to resume, or use a new "
                "run name (or delete that directory and the run's evolve output) to verify again")
        self._file = None

    def load(self) -> dict[str, Verdict]:
        """key -> verdict, from this verify config's part files (a killed write's tail is run again)."""
        parts = [os.path.join(self.directory, name) for name in sorted(os.listdir(self.directory))
                 if name.startswith(f"part-{self.config_hash}-") and name.endswith(".jsonl")]
        return read_parts(parts, lambda rec: (rec["key"], Verdict(rec["key"], bool(rec["passed"]), str(rec["result"]))))

    def put(self, verdict: Verdict) -> None:
        if self._file is None:
            path = os.path.join(self.directory, f"part-{self.config_hash}-{uuid.uuid4().hex}.jsonl")
            self._file = open(path, "ab", buffering=0)
        record = {"key": verdict.task_id, "passed": verdict.passed, "result": verdict.result[:300]}
        self._file.write(json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class SandboxRunner:
    """Scores submitted runs on a background thread; `verdicts` is the queue their verdicts arrive on
    (as (key, Verdict); an ("error", exception) item if scoring itself broke)."""

    def __init__(self, cache: VerdictCache, settings: ScoreSettings, workers: int | None = None):
        self.cache, self.settings, self.workers = cache, settings, workers
        self.verdicts: queue.Queue = queue.Queue()
        self._todo: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._scorer = None
        self.executions = 0
        self.busy_s = 0.0  # time the thread spent scoring (overlapped with the LLM or not)
        self.where = "none"  # "cluster" or "local", once the first run is scored

    def submit(self, runs: list[SandboxRun]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="evolve-verify-sandbox", daemon=True)
            self._thread.start()
        self._todo.put(runs)

    def close(self) -> None:
        if self._thread is not None:
            self._todo.put(None)
            self._thread.join()
            self._thread = None
        if self._scorer is not None:
            self._scorer.close()  # give the workers' CPUs back
            self._scorer = None
        self.cache.close()

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        while True:
            batch = self._todo.get()
            if batch is None:
                return
            # Everything submitted meanwhile joins this batch: fewer, fuller scorer calls.
            stop = False
            while not self._todo.empty():
                more = self._todo.get()
                if more is None:
                    stop = True
                    break
                batch = batch + more
            try:
                self._score(batch)
            except Exception as e:  # noqa: BLE001 - the driver raises it
                self.verdicts.put(("error", e))
                return
            if stop:
                return

    def _score(self, runs: list[SandboxRun]) -> None:
        started = time.monotonic()
        tasks = [r.task() for r in runs]
        samples = [{"task_id": r.key, "solution": r.code} for r in runs]

        def save(index: int, verdict: Verdict) -> None:
            self.cache.put(verdict)  # persisted before the driver acts on it
            self.verdicts.put((runs[index].key, verdict))

        scorer = self._get_scorer()
        if scorer is not None:
            scorer.score("mbpp", tasks, samples, allow_partial=True, on_verdict=save)
        else:
            from raywiz.benchmarks.score import score_samples

            score_samples("mbpp", tasks, samples, self.settings, allow_partial=True, on_verdict=save)
        self.executions += len(runs)
        self.busy_s += time.monotonic() - started

    def _get_scorer(self):
        """The cluster's sandbox workers, started on first use; None: score in this process."""
        if self._scorer is None and self.where == "none":
            import ray

            if ray.is_initialized() and ray.available_resources().get("CPU", 0) >= 1:
                from raywiz.benchmarks.cluster_scoring import ClusterScorer

                self._scorer = ClusterScorer(self.settings, workers=self.workers)
                self.where = "cluster"
            else:
                log.warning("evolve verify: no free CPU on the Ray cluster; scoring in this process")
                self.where = "local"
        return self._scorer
