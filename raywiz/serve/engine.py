"""Generation for one loaded model: requests are decoded together in batches, output streams back.

One thread per model runs `model.generate` on a batch of waiting requests (dynamic batching: the
first request waits `batch_wait_s` for others to join). Every token of every row flows through a
streamer into that row's `RowState`, which turns tokens into text deltas, applies stop sequences
and `max_tokens`, and hands events to the request's asyncio queue. A row that is done (EOS, stop,
length, or its client went away) is reported to `generate` through a stopping criterion, so
finished rows stop costing compute and the batch ends when its last row does.

Why not vLLM: it is not installable here and does not load arbitrary checkpoint dirs on CPU; this
keeps serve usable with any `AutoModelForCausalLM`. Requests that arrive during a batch wait for the
next one (no iteration-level joining), which bounds time to first token by the longest batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

log = logging.getLogger("raywiz.serve")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()


@dataclass
class Event:
    kind: str  # "delta" | "finish" | "error"
    index: int = 0  # which of the request's n choices
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length"
    completion_tokens: int = 0


class GenerationRequest:
    """One request: its prompt, its parameters, and the queue its events go back on."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop):
        self.prompt_ids = prompt_ids
        self.params = params
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.submitted = time.monotonic()
        self._loop = loop
        self.cancelled = False

    def emit(self, event: Event) -> None:
        # Called from the engine thread: hand over to the request's event loop.
        self._loop.call_soon_threadsafe(self.events.put_nowait, event)


class RowState:
    """One sequence being decoded: tokens -> text deltas, stop sequences, max_tokens."""

    def __init__(self, request: GenerationRequest, index: int, tokenizer, eos_ids: set[int],
                 emit_interval_s: float = 0.0):
        self.request, self.index = request, index
        # Text goes out at most this often (the first piece at once): every event costs the replica
        # a hop through Ray Serve, and at one event per token those hops crowd out decoding.
        self.emit_interval_s = emit_interval_s
        self._last_emit = 0.0
        self.tokenizer, self.eos_ids = tokenizer, eos_ids
        self.max_tokens = request.params.max_tokens
        self.stop = request.params.stop
        self.tokens: list[int] = []
        self.text = ""  # decoded so far
        self.sent = 0  # characters of `text` already emitted
        # Incremental detokenization (as vLLM does): decode a short window so that multi-byte
        # characters and merged pieces come out whole.
        self._prefix_offset = 0
        self._read_offset = 0
        self.finished = False

    @property
    def done(self) -> bool:
        return self.finished or self.request.cancelled

    def feed(self, token: int) -> None:
        if self.done:
            return
        if token in self.eos_ids:
            self.finish("stop")
            return
        self.tokens.append(token)
        self.text += self._decode_delta(final=False)
        if self.stop and self._apply_stop():
            return
        if time.monotonic() - self._last_emit >= self.emit_interval_s:
            self._send(len(self.text) - self._held_back())
        if len(self.tokens) >= self.max_tokens:
            self.finish("length")

    def finish(self, reason: str) -> None:
        if self.finished:
            return
        if reason != "stop-sequence":
            self.text += self._decode_delta(final=True)
            self._send(len(self.text))
        self.finished = True
        self.request.emit(Event("finish", self.index, finish_reason="stop" if reason == "stop-sequence" else reason,
                                completion_tokens=len(self.tokens)))

    def fail(self, message: str) -> None:
        if not self.finished:
            self.finished = True
            self.request.emit(Event("error", self.index, text=message))

    def _decode_delta(self, final: bool) -> str:
        decode = self.tokenizer.decode
        prev = decode(self.tokens[self._prefix_offset:self._read_offset], skip_special_tokens=True)
        new = decode(self.tokens[self._prefix_offset:], skip_special_tokens=True)
        if len(new) > len(prev) and (final or not new.endswith("\ufffd")):
            self._prefix_offset, self._read_offset = self._read_offset, len(self.tokens)
            return new[len(prev):]
        return ""

    def _apply_stop(self) -> bool:
        """Cut the text at the first stop sequence; True when one was found (the row is done)."""
        longest = max(len(s) for s in self.stop)
        start = max(0, self.sent - longest)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if not hits:
            return False
        self.text = self.text[: min(hits)]
        self._send(len(self.text))
        self.finish("stop-sequence")
        return True

    def _held_back(self) -> int:
        """Characters at the end that may be the start of a stop sequence: not sent yet."""
        for k in range(min(len(self.text), max((len(s) for s in self.stop), default=0)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0

    def _send(self, upto: int) -> None:
        if upto > self.sent:
            self.request.emit(Event("delta", self.index, text=self.text[self.sent:upto]))
            self.sent = upto
            self._last_emit = time.monotonic()


class _RowStreamer(BaseStreamer):
    """Receives each decoding step's tokens (one per row) from `generate`."""

    def __init__(self, rows: list[RowState], stats: "EngineStats"):
        self.rows, self.stats = rows, stats
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:  # generate first passes the prompt itself
            self._prompt_seen = True
            return
        self.stats.steps += 1
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            row.feed(token)

    def end(self):
        for row in self.rows:
            if not row.done:
                row.finish("length")


class _RowsDone(StoppingCriteria):
    """Per-row stop flags for `generate`: rows finish on our terms (stop strings, own max_tokens, cancel)."""

    def __init__(self, rows: list[RowState]):
        self.rows = rows

    def __call__(self, input_ids, scores, **kwargs):
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


class MaskUntokenizable(LogitsProcessor):
    """Never pick ids the tokenizer has no text for: embeddings padded past the tokenizer's size
    (common: vocabularies rounded up to a multiple of 64) would otherwise produce invisible tokens."""

    def __init__(self, first_unused: int):
        self.first_unused = first_unused

    def __call__(self, input_ids, scores):
        scores[:, self.first_unused:] = float("-inf")
        return scores


class PerRowSampling(LogitsProcessor):
    """Temperature and top-p per row, so requests with different settings share a batch.

    Rows with temperature 0 become greedy: everything but the argmax is masked out.
    """

    def __init__(self, temperatures: list[float], top_ps: list[float], device):
        self.temperature = torch.tensor(temperatures, dtype=torch.float32, device=device).unsqueeze(1)
        self.top_p = torch.tensor(top_ps, dtype=torch.float32, device=device).unsqueeze(1)

    def __call__(self, input_ids, scores):
        greedy = self.temperature == 0
        scores = scores / self.temperature.clamp(min=1e-5)
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - self.top_p)
        remove_sorted[..., -1:] = False  # always keep the most likely token
        remove = remove_sorted.scatter(1, order, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
        if bool(greedy.any()):
            only_argmax = torch.full_like(scores, float("-inf")).scatter(1, scores.argmax(-1, keepdim=True), 0.0)
            scores = torch.where(greedy, only_argmax, scores)
        return scores


@dataclass
class EngineStats:
    batches: int = 0
    rows: int = 0
    largest_batch: int = 0
    steps: int = 0  # decoding steps (one token for every row of a batch)
    busy_s: float = 0.0


class BatchEngine:
    """Decodes the requests for one model, a batch at a time, on its own thread."""

    def __init__(self, model, tokenizer, max_batch_size: int = 16, batch_wait_s: float = 0.005,
                 emit_interval_s: float = 0.0, name: str = "model"):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.emit_interval_s = emit_interval_s
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
        vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else 0
        self.first_unused = len(tokenizer) if len(tokenizer) < vocab else None
        self.stats = EngineStats()
        self._queue: queue.Queue[GenerationRequest | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- asyncio side

    async def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[list[Event]]:
        """Events for one request, until each of its n choices finished (or an error), in lists:
        whatever piled up since the last read comes at once, so a slow reader sends fewer, larger
        chunks instead of falling further behind (each chunk costs a hop through Ray Serve)."""
        request = GenerationRequest(prompt_ids, params, asyncio.get_running_loop())
        self._queue.put(request)
        try:
            remaining = params.n
            while remaining:
                events = [await request.events.get()]
                while not request.events.empty():
                    events.append(request.events.get_nowait())
                for i, event in enumerate(events):
                    if event.kind == "finish":
                        remaining -= 1
                    elif event.kind == "error":
                        yield events[: i + 1]
                        return
                yield events
        finally:
            request.cancelled = True  # the client left or we are done: free its rows

    def close(self) -> None:
        self._queue.put(None)

    # ---------------------------------------------------------------- engine thread

    def _next_batch(self) -> list[GenerationRequest] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch, rows = [first], first.params.n
        deadline = time.monotonic() + self.batch_wait_s
        while rows < self.max_batch_size:
            try:
                nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)  # close after this batch
                break
            if rows + nxt.params.n > self.max_batch_size:
                self._queue.put(nxt)  # goes to the back; fine for a rare oversize request
                break
            batch.append(nxt)
            rows += nxt.params.n
        return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [r for r in batch if not r.cancelled]
            if not live:
                continue
            rows = [RowState(req, i, self.tokenizer, self.eos_ids, self.emit_interval_s)
                    for req in live for i in range(req.params.n)]
            self.stats.batches += 1
            self.stats.rows += len(rows)
            self.stats.largest_batch = max(self.stats.largest_batch, len(rows))
            started = time.monotonic()
            try:
                self._generate(rows)
            except Exception as e:  # a failing batch must not take the engine down
                log.exception("generation failed")
                for row in rows:
                    row.fail(f"generation failed: {type(e).__name__}: {e}")
            finally:
                self.stats.busy_s += time.monotonic() - started
        # Closed: whatever is still queued will never run.
        while True:
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                break
            if req is not None:
                req.emit(Event("error", text="model was unloaded"))

    @torch.inference_mode()
    def _generate(self, rows: list[RowState]) -> None:
        prompts = [row.request.prompt_ids for row in rows]
        width = max(len(p) for p in prompts)
        # Left padding: every row's next token lands in the same column.
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        params = [row.request.params for row in rows]
        sample = any(p.temperature > 0 for p in params)
        # Sampling settings live in PerRowSampling; switch off generate's own (top_k=0: no top-k warper).
        warpers = dict(temperature=1.0, top_k=0, top_p=1.0) if sample else {}
        config = GenerationConfig(
            max_new_tokens=max(p.max_tokens for p in params), do_sample=sample, num_beams=1,
            pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids), **warpers,
        )
        processors = LogitsProcessorList()
        if self.first_unused is not None:
            processors.append(MaskUntokenizable(self.first_unused))
        if sample:
            processors.append(PerRowSampling([p.temperature for p in params], [p.top_p for p in params], self.device))
        self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
            logits_processor=processors, stopping_criteria=[_RowsDone(rows)], streamer=_RowStreamer(rows, self.stats),
        )
