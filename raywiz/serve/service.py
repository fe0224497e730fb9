"""What one serve replica does besides answering requests: decide which checkpoints are loaded.

- follow a run: every `watch_interval_s`, list {run_dir}/train/checkpoint_* and {run_dir}/rl/checkpoint_*;
  the most trained complete one (rl's newest, else train's newest) past the model being served is loaded
  in the background and swapped in (`follow_once`): a new rl checkpoint replaces a train one, a later
  train checkpoint never replaces a served rl one;
- pin a checkpoint (`set_checkpoint`, which Ray Serve's `reconfigure(user_config)` calls);
- load an older checkpoint on demand when a request names it (`acquire`), for side-by-side use.

A checkpoint that fails verification or loading is refused: the reason is logged and kept in
`status()`, the model being served keeps serving, and the same files are not tried again.
No Ray in here: the Ray Serve deployment (app.py) wraps one ModelService per replica.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from raywiz.artifacts import MANIFEST, ModelInfo, filesystem, join
from raywiz.serve.checkpoints import (
    CheckpointRef,
    ServeTarget,
    eval_scores,
    list_run_checkpoints,
    resolve_target,
    training_order,
    verify,
)
from raywiz.serve.config import ServeConfig
from raywiz.serve.pool import CheckpointRefused, LoadedModel, ModelPool, UnknownModel, load_model

log = logging.getLogger("raywiz.serve")

CURRENT_ALIASES = ("", "latest", "current", "default")


@dataclass
class ServiceSettings:
    """Everything a replica needs, JSON-serialisable (it travels as the deployment's init argument)."""

    serve: ServeConfig
    run_dir: str | None  # the run to follow; None when serving a fixed model
    storage: str
    trust_remote_code: bool = False

    def to_dict(self) -> dict:
        return {"serve": self.serve.model_dump(mode="json"), "run_dir": self.run_dir, "storage": self.storage,
                "trust_remote_code": self.trust_remote_code}

    @classmethod
    def from_dict(cls, d: dict) -> "ServiceSettings":
        return cls(ServeConfig.model_validate(d["serve"]), d.get("run_dir"), d["storage"],
                   bool(d.get("trust_remote_code", False)))


class ModelService:
    def __init__(self, settings: ServiceSettings):
        import torch

        self.settings = settings
        self.cfg = settings.serve
        self.run_dir = settings.run_dir
        on_gpu = torch.cuda.is_available()
        self.device = "cuda" if on_gpu else "cpu"
        max_bytes = int(self.cfg.max_model_memory_gb * 2**30) if self.cfg.max_model_memory_gb else None
        self.pool = ModelPool(self.cfg.max_models, max_bytes)
        self.cache_dir = self.cfg.cache_dir or os.path.join(tempfile.gettempdir(), "raywiz-serve-cache")
        self.pinned: CheckpointRef | None = None  # set: serve this model, do not follow the run
        self.refused: dict[str, dict] = {}  # checkpoint path -> {name, reason, at, fingerprint}
        self.events: deque[dict] = deque(maxlen=100)  # loads, swaps and refusals, newest last
        self.started = time.time()
        self._load_lock = threading.Lock()  # one load at a time: memory for two models, not three
        self._swap_lock = threading.Lock()  # status() sees a new current model together with its "loaded" event
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start_watching(self) -> None:
        if self.run_dir is None or not self.cfg.watch or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, name="checkpoint-watcher", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        self.pool.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.cfg.watch_interval_s):
            try:
                self.follow_once()
            except Exception:  # a listing error (e.g. storage briefly unreachable) must not stop watching
                log.exception("watching %s failed; trying again in %.0fs", self.run_dir, self.cfg.watch_interval_s)

    # ---------------------------------------------------------------- choosing what is served

    def set_checkpoint(self, spec: str | None, wait: bool = False) -> None:
        """Pin `spec` (a model path or hub id), follow a run (a run dir or name), or with None follow
        this job's run again. Loads in the background unless nothing is served yet (or `wait`)."""
        background = self.pool.current is not None and not wait
        if spec is None:
            self.run_dir, self.pinned = self.settings.run_dir, None
            self._run(self.follow_once, background)
            return
        target: ServeTarget = resolve_target(spec, self.run_dir or "", self.settings.storage)
        if target.model is None:  # a run: follow it
            self.run_dir, self.pinned = target.run_dir, None
            self._run(self.follow_once, background)
            return
        self.pinned = target.model
        current = self.pool.current
        if current is None or current.ref.path != target.model.path:
            self._run(lambda: self.load(target.model, make_current=True), background)

    @staticmethod
    def _run(fn, background: bool) -> None:
        if background:
            threading.Thread(target=fn, name="checkpoint-loader", daemon=True).start()
        else:
            fn()

    def follow_once(self) -> LoadedModel | None:
        """Load and swap in the run's most trained complete checkpoint if it is past the served one."""
        if self.run_dir is None or self.pinned is not None:
            return None
        current = self.pool.current
        # The served model is replaced by anything more trained of this run; a model of another run (one
        # followed before) or none at all by this run's most trained checkpoint.
        of_this_run = current is not None and (current.ref.run_dir or "").rstrip("/") == self.run_dir.rstrip("/")
        served = training_order(current.ref.stage, current.step) if of_this_run else (-1, -1)
        for ref in reversed(list_run_checkpoints(self.run_dir)):
            if training_order(ref.stage, ref.step) <= served:
                return None
            if self._already_refused(ref):
                continue
            loaded = self.load(ref, make_current=True)
            if loaded is not None:
                return loaded
        return None

    def load(self, ref: CheckpointRef, make_current: bool) -> LoadedModel | None:
        """Verify, load and insert one checkpoint; None if it is not ready or was refused."""
        with self._load_lock:
            if self.pinned is not None and make_current and ref.path != self.pinned.path:
                return None  # pinned while we waited for the lock
            if ref.name in self.pool and self._same_files(ref):
                if make_current:
                    self.pool.set_current(ref.name)
                return self.pool.current if make_current else None
            verdict = verify(ref, self.cfg.verify_checksums)
            if verdict.pending:
                log.debug("%s not ready: %s", ref.name, verdict.reason)
                return None
            if not verdict.ok:
                self._refuse(ref, verdict.reason)
                return None
            try:
                loaded = load_model(ref, verdict.info, device=self.device, cache_dir=self.cache_dir,
                                    engine=self.cfg.engine, trust_remote_code=self.settings.trust_remote_code)
            except CheckpointRefused as e:
                self._refuse(ref, str(e))
                return None
            except Exception as e:  # out of memory, storage errors ...: refuse, keep serving the old one
                log.exception("loading %s failed", ref.path)
                self._refuse(ref, f"{ref.path}: loading failed: {type(e).__name__}: {e}")
                return None
            with self._swap_lock:
                previous = self.pool.add(loaded, make_current)
                self._record("loaded", loaded.name, step=loaded.step, seconds=round(loaded.load_seconds, 3),
                             current=make_current)
            self.refused.pop(ref.path, None)
            if make_current:
                log.info("now serving %s (step %s, loaded in %.1fs)%s", loaded.name, loaded.step,
                         loaded.load_seconds, f"; {previous.name} finishes its requests" if previous else "")
            return loaded

    @contextmanager
    def acquire(self, name: str | None, load: bool = True) -> Iterator[LoadedModel]:
        """Pin a model for one request: a loaded one by name, the current one for None/"latest",
        or (with `load`) a checkpoint of the run that is loaded now, which blocks: call that off
        the event loop. Raises UnknownModel for names that are neither."""
        key = None if (name is None or name in CURRENT_ALIASES) else name
        if load and key is not None and key not in self.pool:
            ref = self._find(key)
            if ref is None:
                raise UnknownModel(name)
            if self.load(ref, make_current=False) is None and key not in self.pool:
                reason = self.refused.get(ref.path, {}).get("reason") or "not complete yet"
                raise CheckpointRefused(f"{key}: cannot be loaded: {reason}")
        with self.pool.use(key) as loaded:
            yield loaded

    # ---------------------------------------------------------------- what the API shows

    def checkpoints(self) -> list[dict]:
        """The run's checkpoints with their state, plus loaded models that are not part of the run."""
        loaded = {m.name: m for m in self.pool.snapshot()}
        current = self.pool.current
        rows = []
        refs = list_run_checkpoints(self.run_dir) if self.run_dir else []
        for ref in refs:
            if ref.name in loaded:
                state, reason = "loaded", ""
            elif ref.path in self.refused:
                state, reason = "refused", self.refused[ref.path]["reason"]
            else:
                verdict = verify(ref)
                state = "available" if verdict.ok else ("pending" if verdict.pending else "refused")
                reason = verdict.reason
            rows.append({"id": ref.name, "stage": ref.stage, "step": ref.step, "state": state, "reason": reason,
                         "current": current is not None and current.name == ref.name})
        names = {r["id"] for r in rows}
        for m in loaded.values():
            if m.name not in names:
                rows.append({"id": m.name, "stage": m.ref.stage, "step": m.step, "state": "loaded", "reason": "",
                             "current": current is not None and current.name == m.name})
        return rows

    def model_cards(self) -> list[dict]:
        """/v1/models entries: loaded checkpoints with step and eval scores (pass@1) where known."""
        current = self.pool.current
        cards = []
        for m in self.pool.snapshot():
            cards.append({
                "id": m.name, "object": "model", "created": int(m.loaded_at), "owned_by": "raywiz",
                "stage": m.ref.stage, "step": m.step, "eval": eval_scores(m.ref.run_dir, m.name),
                "current": current is not None and current.name == m.name,
                "template": m.template, "context_length": m.context_length,
            })
        return cards

    def status(self) -> dict:
        with self._swap_lock:
            current, events = self.pool.current, list(self.events)
        return {
            "pid": os.getpid(), "started": self.started, "device": self.device, "run_dir": self.run_dir,
            "watching": self._watcher is not None and self.pinned is None,
            "pinned": self.pinned.path if self.pinned else None,
            "current": current.name if current else None,
            "current_stage": current.ref.stage if current else None,
            "current_step": current.step if current else None,
            "loaded": [{"id": m.name, "stage": m.ref.stage, "step": m.step, "users": m.users, "bytes": m.nbytes,
                        "load_seconds": round(m.load_seconds, 3), **m.engine.status()}
                       for m in self.pool.snapshot()],
            "refused": [dict(v, path=k) for k, v in self.refused.items()],
            "events": events,
        }

    def template_of(self, name: str | None) -> str | None:
        """The prompt template a model was trained with (raywiz.json), without loading it."""
        if name is None or name in CURRENT_ALIASES:
            current = self.pool.current
            return current.template if current else None
        loaded = next((m for m in self.pool.snapshot() if m.name == name), None)
        if loaded is not None:
            return loaded.template
        ref = self._find(name)
        return ModelInfo.read(ref.path).template if ref is not None else None

    def tokenizer_of(self, name: str | None):
        """A model's tokenizer (it renders the chat template the model was trained with); loads the model."""
        with self.acquire(name) as loaded:
            return loaded.tokenizer

    # ---------------------------------------------------------------- helpers

    def _find(self, name: str) -> CheckpointRef | None:
        if self.pinned is not None and self.pinned.name == name:
            return self.pinned
        if self.run_dir:
            for ref in list_run_checkpoints(self.run_dir):
                if ref.name == name:
                    return ref
        return None

    def _fingerprint(self, ref: CheckpointRef) -> str:
        """Changes when the checkpoint is rewritten (a new manifest), so a fixed one is tried again."""
        fs, p = filesystem(join(ref.path, MANIFEST))
        info = fs.get_file_info(p)
        return f"{info.mtime_ns}:{info.size}" if info.is_file else "none"

    def _same_files(self, ref: CheckpointRef) -> bool:
        loaded = next((m for m in self.pool.snapshot() if m.name == ref.name), None)
        return loaded is not None and loaded.ref.path == ref.path

    def _already_refused(self, ref: CheckpointRef) -> bool:
        entry = self.refused.get(ref.path)
        return entry is not None and entry["fingerprint"] == self._fingerprint(ref)

    def _refuse(self, ref: CheckpointRef, reason: str) -> None:
        log.warning("refusing checkpoint %s: %s (still serving %s)", ref.name, reason,
                    self.pool.current.name if self.pool.current else "nothing")
        self.refused[ref.path] = {"name": ref.name, "reason": reason, "at": time.time(),
                                  "fingerprint": self._fingerprint(ref)}
        self._record("refused", ref.name, reason=reason)

    def _record(self, kind: str, name: str, **details) -> None:
        self.events.append({"event": kind, "id": name, "at": time.time(), **details})
