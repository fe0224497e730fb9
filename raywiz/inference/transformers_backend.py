"""The transformers backend: offline batches through static-cache ``generate``, streams through
transformers' continuous batching.

Offline (eval, evolve): rows (prompt x sample) are sorted by prompt length and cut into buckets of
at most ``max_batch_size`` rows, left-padded, and decoded with ``cache_implementation="static"``;
on GPU transformers compiles the decode step (CUDA graphs), so one bucket shape costs one compile
and every later bucket of that shape is a graph replay. Sorting keeps padding small; a bucket ends
when its last row does, so rows that finish early still ride along (that waste is bounded by the
bucket: serve's continuous batching is the path that frees them at once).

Streaming (serve): ``ContinuousBatchingManager`` (paged KV cache, iteration-level scheduling) runs on
its own thread; a request that arrives mid-batch is prefilled and joins at the next step. A
dispatcher thread turns its outputs into text deltas (incremental detokenisation, stop sequences
held back until they can no longer match, max_tokens), and cancels a request whose client left or
whose stop sequence appeared. Mixed greedy and sampled requests share a batch: greedy is top_k=1
per request. A seeded request samples with its own noise (raywiz.inference.seeded_sampling): the same
seed gives the same text alone or in any batch; an unseeded one samples from the global RNG.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
import uuid
from typing import AsyncIterator, Sequence

from raywiz.inference import Completion, Delta, EngineSpec, SamplingParams, truncate_at_stop

log = logging.getLogger("raywiz.inference")
PAD_MULTIPLE = 64  # GPU: prompt widths rounded up so that buckets share compiled shapes


def eos_ids_of(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(i for i in ids if i is not None and i >= 0)


class TransformersEngine:
    def __init__(self, model, tokenizer, max_batch_size: int | None = None, compile: bool | None = None,
                 add_special_tokens: bool = False, stream_options: dict | None = None,
                 emit_interval_s: float = 0.0):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        on_gpu = self.device.type == "cuda"
        self.max_batch_size = max_batch_size or (256 if on_gpu else 16)
        self.compile = on_gpu if compile is None else compile
        self.add_special_tokens = add_special_tokens
        self.emit_interval_s = emit_interval_s
        self.eos_ids = eos_ids_of(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        config = model.config
        self.context_length = next((v for k in ("max_position_embeddings", "n_positions", "seq_length")
                                    if isinstance(v := getattr(config, k, None), int) and v > 0), None)
        self.stream_options = dict(stream_options or {})  # ContinuousBatchingConfig fields
        if not on_gpu:
            # transformers sizes the paged cache from free memory when these are unset; on a CPU that
            # allocation took over a minute here. 64 pages of 256 tokens are plenty for CPU serving.
            self.stream_options.setdefault("num_blocks", 64)
            self.stream_options.setdefault("max_batch_tokens", 1024)
        self._streamer: ContinuousScheduler | None = None
        self._stream_lock = threading.Lock()
        self._score_lock = threading.Lock()
        self.stats = {"compile_and_first_bucket_s": None, "buckets": 0, "rows": 0}

    @classmethod
    def from_spec(cls, spec: EngineSpec) -> "TransformersEngine":
        import torch

        from raywiz.modeling import build_model, load_tokenizer, torch_dtype

        device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = load_tokenizer(spec.model, spec.tokenizer, trust_remote_code=spec.trust_remote_code)
        model = build_model(spec.model, dtype=torch_dtype(spec.dtype, device == "cuda"),
                            trust_remote_code=spec.trust_remote_code, seed=0)
        model.to(device).eval()
        return cls(model, tokenizer, spec.max_batch_size, spec.compile)

    # ------------------------------------------------------------ offline batches

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=self.add_special_tokens)["input_ids"]

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """n completions per prompt, in prompt order."""
        return self.generate_ids([self.encode(p) for p in prompts], params)

    def generate_ids(self, prompt_ids: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        import torch

        if self.context_length:  # keep the end of an over-long prompt
            keep = max(1, self.context_length - params.max_tokens)
            prompt_ids = [p[-keep:] for p in prompt_ids]
        samples = 1 if params.greedy else params.n  # greedy samples are identical: decode once, copy
        rows = sorted(((i, j) for i in range(len(prompt_ids)) for j in range(samples)),
                      key=lambda r: len(prompt_ids[r[0]]))
        out: list[list[Completion | None]] = [[None] * samples for _ in prompt_ids]
        if params.seed is not None:
            torch.manual_seed(params.seed)
        for start in range(0, len(rows), self.max_batch_size):
            bucket = rows[start:start + self.max_batch_size]
            started = time.perf_counter()
            done = self._generate_bucket([prompt_ids[i] for i, _ in bucket], params)
            if self.stats["compile_and_first_bucket_s"] is None:
                self.stats["compile_and_first_bucket_s"] = time.perf_counter() - started
            self.stats["buckets"] += 1
            self.stats["rows"] += len(bucket)
            for (i, j), completion in zip(bucket, done):
                out[i][j] = completion
        return [row * params.n if samples != params.n else row for row in out]  # type: ignore[operator]

    def _generate_bucket(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        import torch
        from transformers import GenerationConfig

        width = max(len(p) for p in prompts)
        if self.compile:
            width = -(-width // PAD_MULTIPLE) * PAD_MULTIPLE
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        sampling = (dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
                    if not params.greedy else dict(do_sample=False))
        config = GenerationConfig(max_new_tokens=params.max_tokens, pad_token_id=self.pad_id,
                                  eos_token_id=self.eos_ids, cache_implementation="static",
                                  disable_compile=not self.compile, **sampling)
        stopping = [_StopOnText(self.tokenizer, params.stop, width)] if params.stop else None
        with torch.inference_mode():
            generated = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                            stopping_criteria=stopping)
        results = []
        for prompt, row in zip(prompts, generated[:, width:].tolist()):
            results.append(self._finish(row, len(prompt), params))
        return results

    def _finish(self, ids: list[int], prompt_tokens: int, params: SamplingParams) -> Completion:
        eos = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
        finished = eos is not None
        if finished:
            ids = ids[:eos]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, stopped = truncate_at_stop(text, params.stop)
        if stopped:  # count only the tokens up to the stop sequence's start
            ids = ids[:_tokens_covering(self.tokenizer, ids, len(text))]
        return Completion(text, ids, "stop" if finished or stopped else "length", prompt_tokens)

    # ------------------------------------------------------------ log-probabilities

    def score(self, token_ids: list[int], top: int = 0) -> list[tuple[float | None, dict[int, float]]]:
        """Per token: (log p(token | the tokens before it), the `top` most likely ids at that place).
        The first token has no context: (None, {})."""
        import torch

        with self._score_lock, torch.inference_mode():
            ids = torch.tensor([token_ids], device=self.device)
            logits = self.model(input_ids=ids).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)
            chosen = logp.gather(1, ids[0, 1:, None])[:, 0].tolist()
            tops = torch.topk(logp, top, dim=-1) if top else None
        out: list[tuple[float | None, dict[int, float]]] = [(None, {})]
        for k, lp in enumerate(chosen):
            alts = dict(zip(tops.indices[k].tolist(), tops.values[k].tolist())) if tops is not None else {}
            out.append((lp, alts))
        return out

    # ------------------------------------------------------------ streaming

    def stream(self, prompt: str | list[int], params: SamplingParams) -> AsyncIterator[list[Delta]]:
        with self._stream_lock:
            if self._streamer is None:
                self._streamer = ContinuousScheduler(self.model, self.tokenizer, self.eos_ids, self.pad_id,
                                                     **self.stream_options)
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        return self._streamer.stream(ids, params, self.emit_interval_s)

    @property
    def scheduler(self) -> "ContinuousScheduler | None":
        return self._streamer

    def status(self) -> dict:
        """Counters for serve's /status and benches: offline buckets and rows, streams and their outputs."""
        streamer = self._streamer
        return {**self.stats, "streams": streamer.streams if streamer else 0,
                "stream_outputs": streamer.steps_seen if streamer else 0}

    def close(self) -> None:
        with self._stream_lock:
            if self._streamer is not None:
                self._streamer.close()
                self._streamer = None


class _StopOnText:
    """Rows stop once a stop sequence appears in their generated text (never across the prompt, which
    transformers' own stop_strings does). Only the last few tokens are decoded each step."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_width: int):
        self.tokenizer, self.stops, self.width = tokenizer, tuple(stops), prompt_width
        self.window = max(len(s) for s in stops) + 2  # a token decodes to at least one character

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        generated = input_ids[:, self.width:]
        if generated.shape[1] == 0:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        tails = self.tokenizer.batch_decode(generated[:, -self.window:].tolist(), skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in tails], dtype=torch.bool,
                            device=input_ids.device)


def _tokens_covering(tokenizer, ids: list[int], chars: int) -> int:
    """How many of `ids` it takes to decode to at least `chars` characters."""
    for k in range(len(ids) + 1):
        if len(tokenizer.decode(ids[:k], skip_special_tokens=True)) >= chars:
            return k
    return len(ids)


# ---------------------------------------------------------------- continuous batching


class _Row:
    """One streamed choice: tokens -> text deltas, stop sequences, max_tokens."""

    def __init__(self, stream: "_Stream", index: int, request_id: str, params: SamplingParams,
                 emit_interval_s: float = 0.0):
        self.stream, self.index, self.request_id = stream, index, request_id
        # Text goes out at most this often (the first piece at once): under Ray Serve every event is
        # a hop to the proxy, and one per token crowds out decoding.
        self.emit_interval_s, self._last_emit = emit_interval_s, 0.0
        self.max_tokens, self.stop = params.max_tokens, params.stop
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self._prefix = self._read = 0  # incremental detokenisation window (as vLLM does)
        self.finished = False
        self.eos_token: int | None = None  # the EOS that ended this row, if one did

    def feed(self, tokens: list[int], tokenizer, eos_ids: set[int]) -> bool:
        """New tokens in; True when this row is done (the caller cancels it in the manager)."""
        for token in tokens:
            if self.finished:
                return True
            if token in eos_ids:
                self.eos_token = token
                self.finish("stop", tokenizer)
                return True
            self.tokens.append(token)
            self.text += self._decode(tokenizer, final=False)
            if self.stop and self._apply_stop():
                return True
            if len(self.tokens) >= self.max_tokens:
                self.finish("length", tokenizer)
                return True
        if time.monotonic() - self._last_emit >= self.emit_interval_s:
            self._send(len(self.text) - self._held_back())
        return False

    def finish(self, reason: str, tokenizer=None) -> None:
        if self.finished:
            return
        if tokenizer is not None:
            self.text += self._decode(tokenizer, final=True)
        self._send(len(self.text))
        self.finished = True
        self.stream.put(Delta(self.index, "", reason, len(self.tokens)), self)

    def _decode(self, tokenizer, final: bool) -> str:
        prev = tokenizer.decode(self.tokens[self._prefix:self._read], skip_special_tokens=True)
        new = tokenizer.decode(self.tokens[self._prefix:], skip_special_tokens=True)
        if len(new) > len(prev) and (final or not new.endswith("\ufffd")):
            self._prefix, self._read = self._read, len(self.tokens)
            return new[len(prev):]
        return ""

    def _apply_stop(self) -> bool:
        start = max(0, self.sent - max(len(s) for s in self.stop))
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if not hits:
            return False
        self.text = self.text[:min(hits)]
        self.finish("stop")
        return True

    def _held_back(self) -> int:
        """Characters at the end that may begin a stop sequence: not sent yet."""
        for k in range(min(len(self.text), max((len(s) for s in self.stop), default=0)), 0, -1):
            if any(s.startswith(self.text[-k:]) for s in self.stop):
                return k
        return 0

    def _send(self, upto: int) -> None:
        if upto > self.sent:
            self.stream.put(Delta(self.index, self.text[self.sent:upto]), self)
            self.sent = upto
            self._last_emit = time.monotonic()


class _Stream:
    """The asyncio side of one request: deltas cross from the dispatcher thread to its loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False

    def put(self, item, row: _Row | None = None) -> None:
        if row is not None and isinstance(item, Delta) and item.finish_reason:
            item.token_ids = list(row.tokens)
            item.eos_token_id = row.eos_token
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is gone: the client left long ago
            pass


class ContinuousScheduler:
    """transformers' ContinuousBatchingManager, plus text streaming, stop sequences and cancellation."""

    def __init__(self, model, tokenizer, eos_ids: list[int], pad_id: int, **cb_options):
        from transformers import ContinuousBatchingConfig, GenerationConfig

        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        # Sampling on, with every warper present, so each request sets its own temperature/top_p/top_k
        # (CB builds per-request processors only for warpers the config turns on).
        config = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.95, top_k=50, max_new_tokens=256,
                                  eos_token_id=list(eos_ids) or -1, pad_token_id=pad_id)
        self.vocab = model.config.vocab_size
        cb_config = ContinuousBatchingConfig(per_request_processors=True, **cb_options)
        self.manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=cb_config)
        from raywiz.inference import seeded_sampling  # imports torch: not at module import

        self.sampler = seeded_sampling.install(self.manager)
        self.manager.start()
        self._rows: dict[str, _Row] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.steps_seen = 0  # outputs routed (one per request per decoding step)
        self.streams = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._dispatch, name="raywiz-cb-dispatch", daemon=True)
        self._thread.start()

    def _request_kwargs(self, params: SamplingParams, index: int) -> dict:
        if params.greedy:
            return dict(temperature=1.0, top_p=1.0, top_k=1)
        return dict(temperature=float(params.temperature), top_p=float(params.top_p), top_k=int(self.vocab),
                    **self.sampler.request_kwargs(params.seed, index))

    async def stream(self, prompt_ids: list[int], params: SamplingParams,
                     emit_interval_s: float = 0.0) -> AsyncIterator[list[Delta]]:
        """Deltas for one request until each of its n choices finished; whatever piled up since the
        last read comes as one list (a slow reader gets fewer, larger pieces)."""
        if not prompt_ids:
            raise ValueError("empty prompt")
        stream = _Stream(asyncio.get_running_loop())
        base = f"raywiz-{uuid.uuid4().hex[:12]}"
        rows = [_Row(stream, i, f"{base}-{i}", params, emit_interval_s) for i in range(params.n)]
        with self._lock:
            self.streams += 1
            for row in rows:
                self._rows[row.request_id] = row
        for row in rows:
            rid = self.manager.add_request(prompt_ids, request_id=row.request_id, max_new_tokens=params.max_tokens,
                                           streaming=True, **self._request_kwargs(params, row.index))
            if rid is None:
                raise RuntimeError("the continuous batching manager refused the request (stopped)")
        remaining = params.n
        try:
            while remaining:
                items = [await stream.queue.get()]
                while not stream.queue.empty():
                    items.append(stream.queue.get_nowait())
                deltas = []
                for item in items:
                    if isinstance(item, Exception):
                        raise item
                    deltas.append(item)
                    if item.finish_reason:
                        remaining -= 1
                yield deltas
        finally:
            for row in rows:  # the client left, or we are done: free what is still decoding
                with self._lock:
                    live = self._rows.pop(row.request_id, None)
                if live is not None and not live.finished:
                    live.finished = True
                    self.manager.cancel_request(row.request_id)
                self.sampler.forget(row.request_id)

    def _dispatch(self) -> None:
        """Route the manager's outputs to their rows (one thread: rows are touched only here)."""
        output_queue = self.manager.output_router.output_queue
        while not self._closed.is_set():
            try:
                out = output_queue.get(timeout=0.05)
            except queue.Empty:
                continue
            self.steps_seen += 1
            with self._lock:
                row = self._rows.get(out.request_id)
            if row is None or row.finished:
                continue
            try:
                if out.error:
                    row.finished = True
                    row.stream.put(RuntimeError(f"generation failed: {out.error}"))
                    continue
                done = row.feed(out.generated_tokens[len(row.tokens):], self.tokenizer, self.eos_ids)
                if not done and out.is_finished():
                    reason = "length" if len(row.tokens) >= row.max_tokens else "stop"
                    row.finish(reason, self.tokenizer)
                elif done and not out.is_finished():
                    self.manager.cancel_request(out.request_id)  # stop sequence: free its slot now
            except Exception as e:  # a broken row must not stop the others
                log.exception("streaming a row failed")
                row.finished = True
                row.stream.put(RuntimeError(f"generation failed: {type(e).__name__}: {e}"))

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            rows, self._rows = list(self._rows.values()), {}
        for row in rows:
            if not row.finished:
                row.finished = True
                row.stream.put(RuntimeError("model was unloaded"))
        self.manager.stop(block=True, timeout=10, hard_stop=True)
        self._thread.join(timeout=5)
