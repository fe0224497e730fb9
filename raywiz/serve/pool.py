"""Loaded models: loading one (and refusing what will not work), and the LRU pool that holds them.

The pool has one "current" model, the one requests without an explicit checkpoint get. Swapping is
one assignment under a lock: a request takes (and pins) its model when it starts, so requests in
flight finish on the model they began with while new ones get the new model. A pinned model is
never freed; one pushed out of the LRU while still in use is freed when its last request ends.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from raywiz.serve.checkpoints import CheckpointRef, fetch_to_local
from raywiz.serve.config import ServeEngineConfig
from raywiz.inference import ModelLoadError, make_engine
from raywiz.inference.config import EngineConfig
from raywiz.inference.transformers_backend import TransformersEngine

log = logging.getLogger("raywiz.serve")


class CheckpointRefused(Exception):
    """A checkpoint that cannot be served; the message says why."""


class UnknownModel(KeyError):
    pass


@dataclass
class LoadedModel:
    ref: CheckpointRef
    engine: TransformersEngine
    info: dict  # raywiz.json + manifest meta: step, template, base_model ...
    nbytes: int
    context_length: int | None
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)
    users: int = 0  # requests using it right now
    evicted: bool = False

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def model(self):
        return self.engine.model

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def step(self) -> int | None:
        step = self.info.get("step", self.ref.step)
        return int(step) if isinstance(step, (int, float)) else self.ref.step

    @property
    def template(self) -> str | None:
        return self.info.get("template")

    def close(self) -> None:
        self.engine.close()


def load_model(ref: CheckpointRef, info: dict, *, device: str, cache_dir: str, engine: EngineConfig | None = None,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a model through raywiz.inference (which proves it works); CheckpointRefused says why not.
    `engine`: serve's generation section (its defaults when None)."""
    started = time.monotonic()
    path = fetch_to_local(ref, cache_dir)
    # Streams decode on the engine's own thread; the section's batch_size bounds the requests decoded together.
    spec = (engine or ServeEngineConfig()).engine_spec(path, trust_remote_code=trust_remote_code, device=device)
    try:
        engine = make_engine(spec)
    except ModelLoadError as e:
        raise CheckpointRefused(f"{ref.path}: {e}") from e
    engine.start_streaming()  # lanes and CUDA graphs now, in the loader, not in the first request
    nbytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    return LoadedModel(ref, engine, info, nbytes, engine.stream_context, time.monotonic() - started)


class ModelPool:
    """Models loaded side by side, least recently used evicted past `max_models` / `max_bytes`."""

    def __init__(self, max_models: int = 3, max_bytes: int | None = None):
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()  # oldest use first
        self._current: str | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        with self._lock:
            return self._models.get(self._current) if self._current else None

    def names(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def snapshot(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._models

    def add(self, loaded: LoadedModel, make_current: bool) -> LoadedModel | None:
        """Insert a freshly loaded model; with make_current, atomically route new requests to it.

        Returns the model that was current before (still loaded unless the LRU bound pushes it out).
        """
        with self._lock:
            previous = self._models.get(self._current) if self._current else None
            old = self._models.pop(loaded.name, None)
            self._models[loaded.name] = loaded
            if make_current or self._current is None:
                self._current = loaded.name
            to_close = self._evict_locked()
            if old is not None and old is not loaded:
                old.evicted = True
                if old.users == 0:
                    to_close.append(old)
        self._close(to_close)
        return previous

    def set_current(self, name: str) -> bool:
        """Route new requests to an already loaded model; False if it is not loaded."""
        with self._lock:
            if name not in self._models:
                return False
            self._current = name
            self._models.move_to_end(name)
            return True

    @contextmanager
    def use(self, name: str | None) -> Iterator[LoadedModel]:
        """Pin a model for one request: None means the current one."""
        with self._lock:
            key = self._current if name is None else name
            loaded = self._models.get(key) if key else None
            if loaded is None:
                raise UnknownModel(name)
            self._models.move_to_end(key)
            loaded.users += 1
        try:
            yield loaded
        finally:
            with self._lock:
                loaded.users -= 1
                to_close = [loaded] if (loaded.evicted and loaded.users == 0) else []
                to_close += self._evict_locked()
            self._close(to_close)

    def _evict_locked(self) -> list[LoadedModel]:
        """Drop least recently used models (never the current one) until within bounds."""
        out = []

        def over() -> bool:
            total = sum(m.nbytes for m in self._models.values())
            return len(self._models) > self.max_models or (self.max_bytes is not None and total > self.max_bytes)

        for name in list(self._models):
            if not over():
                break
            if name == self._current:
                continue
            victim = self._models.pop(name)
            victim.evicted = True
            log.info("unloading %s (least recently used)", name)
            if victim.users == 0:
                out.append(victim)  # else: freed when its last request ends (see use())
        return out

    @staticmethod
    def _close(models: list[LoadedModel]) -> None:
        if not models:
            return
        for m in models:
            m.close()
        del models
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # freeing memory is best effort
            pass

    def close(self) -> None:
        with self._lock:
            models = list(self._models.values())
            self._models.clear()
            self._current = None
        self._close(models)
