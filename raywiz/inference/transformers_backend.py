"""The transformers backend: transformers' models under raywiz's slot decoder, for offline batches and
streams alike (raywiz.inference.slot_decoding says why raywiz owns the decode loop).

Offline (eval, evolve): every row (prompt x sample) goes through one SlotDecoder of up to
``max_batch_size`` lanes; a lane whose row ends (EOS, max_tokens, a stop sequence) takes the next row
at the next step, so finished rows waste nothing. The n samples of a prompt sit side by side in the
queue and share one prefill (SlotDecoder.prefill copies the prompt's keys/values lane to lane). On
GPU each decode step is a CUDA-graph replay, captured the first time a (window, greedy or sampled) is
needed (nothing is compiled); the decoder is kept for the next call of the same shape.

Streaming (serve): a scheduler thread owns a second SlotDecoder. A request that arrives mid-batch is
prefilled and joins at the next step; each step's tokens go to their rows, which turn them into text
deltas (incremental detokenisation, stop sequences held back until they can no longer match,
max_tokens); a row whose client left is dropped and its lane freed at the next step. Greedy and
sampled requests share steps; a seed fixes a request's samples whatever shares its batch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from functools import partial
from typing import AsyncIterator, Iterator, Sequence

from raywiz.inference import Completion, Delta, EngineSpec, ModelLoadError, SamplingParams
from raywiz.inference.chat import LocalChat
from raywiz.inference.stops import held_back, stop_index

log = logging.getLogger("raywiz.inference")
LANE_ROUND = 64  # offline lane lengths are rounded up so that calls share a decoder (and its graphs)
STREAM_LANE_MAX = 8192  # serve's lanes hold prompt + max_tokens up to this (or the model's context)
STOP_CHECK_EVERY = 8  # offline: tokens between stop-sequence checks of a row
ADMIT_FRACTION = 32  # offline: rows are admitted once 1/32 of the lanes are free (DecodeLoop.admit_batch)


def eos_ids_of(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(i for i in ids if i is not None and i >= 0)


def lanes_that_fit(model, shapes, lane_len: int, wanted: int, share: float) -> int:
    """How many lanes of `lane_len` tokens fit in `share` of the device's free memory (CPU: 2 GiB)."""
    import torch

    from raywiz.inference.slot_decoding import kv_bytes_per_token

    device = next(model.parameters()).device
    budget = torch.cuda.mem_get_info(device)[0] * share if device.type == "cuda" else 2 * 2**30
    return max(1, min(wanted, int(budget // max(1, kv_bytes_per_token(shapes) * lane_len))))


def load_checked(spec: EngineSpec, device: str):
    """The model and tokenizer `spec` names on `device`, proven to work: weights that match the config
    (transformers would fill missing ones with random values and carry on), a tokenizer that fits the
    embedding, finite outputs of one forward pass (NaN weights or device trouble show now, not per
    request). ModelLoadError says what is wrong."""
    import torch
    from transformers import AutoModelForCausalLM

    from raywiz.modeling import build_model, is_adapter_dir, is_tiny, load_tokenizer, torch_dtype

    dtype = torch_dtype(spec.dtype, device == "cuda")
    try:
        tokenizer = load_tokenizer(spec.model, spec.tokenizer, trust_remote_code=spec.trust_remote_code)
    except Exception as e:
        raise ModelLoadError(f"tokenizer does not load: {type(e).__name__}: {e}") from e
    try:
        if is_adapter_dir(spec.model) or is_tiny(spec.model):  # base + adapter merged, or a random tiny model
            model, loading = build_model(spec.model, dtype=dtype, trust_remote_code=spec.trust_remote_code, seed=0), {}
        else:
            model, loading = AutoModelForCausalLM.from_pretrained(
                spec.model, dtype=dtype, trust_remote_code=spec.trust_remote_code, output_loading_info=True)
    except Exception as e:  # corrupt safetensors, unknown architecture, shape mismatch ...
        raise ModelLoadError(f"model does not load: {type(e).__name__}: {e}") from e
    missing, mismatched = loading.get("missing_keys") or [], loading.get("mismatched_keys") or []
    if missing or mismatched:
        bad = sorted(missing)[:5] + [str(m) for m in mismatched][:5]
        raise ModelLoadError(f"weights do not match the config (missing or mismatched: {bad})")
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ModelLoadError(f"tokenizer has {len(tokenizer)} tokens, the model's embedding {vocab}")
    model.to(device).eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([[tokenizer.eos_token_id or 0]], device=device)).logits
        if not torch.isfinite(logits).all():
            raise ModelLoadError("the model's outputs are not finite (NaN/inf weights)")
    return model, tokenizer


class TransformersEngine(LocalChat):
    def __init__(self, model, tokenizer, max_batch_size: int | None = None, cuda_graphs: bool | None = None,
                 add_special_tokens: bool = False, stream_slots: int | None = None,
                 emit_interval_s: float = 0.0):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        on_gpu = self.device.type == "cuda"
        self.max_batch_size = max_batch_size or (256 if on_gpu else 16)
        self.stream_slots = stream_slots or (64 if on_gpu else 8)
        self.cuda_graphs = on_gpu if cuda_graphs is None else cuda_graphs and on_gpu
        self.add_special_tokens = add_special_tokens
        self.emit_interval_s = emit_interval_s
        self.eos_ids = eos_ids_of(model, tokenizer)
        self._eos = set(self.eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        from raywiz.modeling import context_length

        self.context_length = context_length(model.config)
        self._shapes = None  # per-layer KV shapes, read off the model once
        self._offline = None  # (slots, lane_len) -> SlotDecoder, the last one used
        self._offline_lock = threading.Lock()
        self._streamer: StreamScheduler | None = None
        self._stream_lock = threading.Lock()
        self._score_lock = threading.Lock()
        self.stats = {"rows": 0, "decode_steps": 0, "decoders_built": 0, "decoder_build_s": 0.0, "graph_capture_s": 0.0,
                      "prefill_s": 0.0, "prefill_tokens": 0, "prefill_shared": 0, "admissions": 0,
                      "prefill_forwards": 0}

    @classmethod
    def from_spec(cls, spec: EngineSpec) -> "TransformersEngine":
        import torch

        device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer = load_checked(spec, device)
        return cls.from_model(model, tokenizer, spec)

    @classmethod
    def from_model(cls, model, tokenizer, spec: EngineSpec | None = None) -> "TransformersEngine":
        """An engine over a model already loaded (on its device, as it is): `spec` gives only the
        decoder's settings."""
        spec = spec or EngineSpec()
        engine = cls(model, tokenizer, spec.max_batch_size, spec.cuda_graphs, stream_slots=spec.stream_slots,
                     emit_interval_s=spec.emit_interval_s)
        engine.model_name = spec.model
        return engine

    def _kv_shapes(self):
        if self._shapes is None:
            from raywiz.inference.slot_decoding import kv_shapes

            self._shapes = kv_shapes(self.model)
        return self._shapes

    def _decoder(self, slots: int, lane_len: int):
        from raywiz.inference.slot_decoding import SlotDecoder

        return SlotDecoder(self.model, slots, lane_len, graphs=self.cuda_graphs, max_position=self.context_length,
                           shapes=self._kv_shapes())

    # ------------------------------------------------------------ offline batches

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=self.add_special_tokens)["input_ids"]

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """n completions per prompt, in prompt order."""
        return self.generate_ids([self.encode(p) for p in prompts], params)

    def generate_ids(self, prompt_ids: Sequence[list[int]],
                     params: SamplingParams | Sequence[SamplingParams]) -> list[list[Completion]]:
        """n completions per prompt, in prompt order; `params` is one for all prompts or one per prompt
        (benches give rows their own max_tokens). The n samples of a prompt share its prefill."""
        each = self._params_per_prompt(prompt_ids, params)
        out: list[list[Completion | None]] = [[None] * q.n for q in each]
        for i, k, completion in self.generate_each(prompt_ids, each):
            out[i][k] = completion
        return out  # type: ignore[return-value]

    def generate_each(self, prompt_ids: Sequence[list[int]],
                      params: SamplingParams | Sequence[SamplingParams]) -> Iterator[tuple[int, int, Completion]]:
        """(prompt index, sample index, completion) for every sample, in the order they end: RL scores
        each one while the rest decode. Same rows, sharing and seeds as generate_ids. The engine's
        offline decoder is held until the iterator is exhausted or closed (do not call the engine's
        offline methods from inside the loop over it)."""
        from raywiz.inference.slot_decoding import LaneSampling

        each = self._params_per_prompt(prompt_ids, params)
        prompt_ids = [list(p) or [self.pad_id] for p in prompt_ids]
        if self.context_length:  # keep the end of an over-long prompt
            prompt_ids = [p[-max(1, self.context_length - q.max_tokens):] for p, q in zip(prompt_ids, each)]
        if not prompt_ids:
            return
        samples = [1 if q.greedy else q.n for q in each]  # greedy samples are identical: decode once, copy
        lane_len = -(-max(len(p) + q.max_tokens for p, q in zip(prompt_ids, each)) // LANE_ROUND) * LANE_ROUND
        if self.context_length:
            lane_len = min(lane_len, self.context_length)
        ended: deque = deque()  # rows done in the last step, (prompt, sample) each
        rows = [(i, k, _BatchRow(each[i], self.tokenizer, self._eos, on_end=partial(ended.append, (i, k))))
                for i in range(len(prompt_ids)) for k in range(samples[i])]  # a prompt's samples side by side
        by_key = {(i, k): row for i, k, row in rows}
        with self._offline_lock:
            decoder = self._offline_decoder(len(rows), lane_len)
            before = dict(decoder.settle_stats())
            loop = DecodeLoop(decoder, admit_batch=max(1, decoder.slots // ADMIT_FRACTION), lookahead=True)
            for i, k, row in rows:
                loop.submit(row, prompt_ids[i], LaneSampling.of(each[i], each[i].seed, k, prompt_ids[i]))
            try:
                while not loop.idle:
                    loop.step()
                    while ended:
                        i, k = ended.popleft()
                        completion = self._finish(by_key[i, k].tokens, len(prompt_ids[i]), each[i])
                        for copy in range(k, each[i].n) if samples[i] != each[i].n else (k,):
                            yield i, copy, completion
            finally:
                loop.abandon()  # a consumer that stopped early leaves no lane busy
                self._count(decoder, before, len(rows))

    @staticmethod
    def _params_per_prompt(prompt_ids, params) -> list[SamplingParams]:
        each = [params] * len(prompt_ids) if isinstance(params, SamplingParams) else list(params)
        if len(each) != len(prompt_ids):
            raise ValueError(f"params: {len(each)} given for {len(prompt_ids)} prompts")
        return each

    def weights_changed(self) -> None:
        """The model's weights were updated in place (RL): prompts kept for sharing were computed with
        the old ones, so none is reused. The decoder's graphs read the parameters where they are, so
        they stay valid as long as the update writes into the same tensors (optimizer steps,
        load_state_dict)."""
        with self._offline_lock:
            if self._offline is not None:
                self._offline.forget_prompts()

    def _offline_decoder(self, rows: int, lane_len: int):
        slots = lanes_that_fit(self.model, self._kv_shapes(), lane_len, min(rows, self.max_batch_size), share=0.5)
        if self._offline is not None and self._offline.slots == slots and self._offline.lane_len == lane_len:
            return self._offline
        self._offline = None  # free the old lanes first
        started = time.perf_counter()
        self._offline = self._decoder(slots, lane_len)
        self.stats["decoders_built"] += 1
        self.stats["decoder_build_s"] = round(self.stats["decoder_build_s"] + time.perf_counter() - started, 4)
        return self._offline

    def _count(self, decoder, before: dict, rows: int) -> None:
        decoder.settle_stats()
        self.stats["rows"] += rows
        self.stats["decode_steps"] += decoder.stats["steps"] - before["steps"]
        self.stats["prefill_s"] = round(self.stats["prefill_s"] + decoder.stats["prefill_s"] - before["prefill_s"], 4)
        # prompt tokens run through the model; lanes that copied a prompt; prefill calls
        for key in ("prefill_tokens", "prefill_shared", "admissions", "prefill_forwards"):
            self.stats[key] += decoder.stats[key] - before[key]
        self.stats["graph_capture_s"] = round(self.stats["graph_capture_s"] + decoder.stats["graph_capture_s"]
                                              - before["graph_capture_s"], 4)
        self.stats["prefill_groups"] = decoder.stats["prefill_groups"]
        self.stats["graphs"] = decoder.stats["graphs"]
        self.stats["graphs_captured"] = decoder.stats["graphs_captured"]
        self.stats["window_steps"] = dict(decoder.stats["window_steps"])
        if decoder.stats["graph_error"]:
            self.stats["graph_error"] = decoder.stats["graph_error"]

    def _finish(self, ids: list[int], prompt_tokens: int, params: SamplingParams) -> Completion:
        eos = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
        finished = eos is not None
        ended_on = ids[eos] if finished else None
        if finished:
            ids = ids[:eos]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = stop_index(text, params.stop)
        if cut is not None:  # count only the tokens up to the stop sequence's start
            text = text[:cut]
            ids = ids[:_tokens_covering(self.tokenizer, ids, cut)]
        return Completion(text, ids, "stop" if finished or cut is not None else "length", prompt_tokens,
                          eos_token_id=ended_on)

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

    @property
    def stream_context(self) -> int:
        """The most prompt + max_tokens one stream can hold."""
        return min(self.context_length or STREAM_LANE_MAX, STREAM_LANE_MAX)

    def start_streaming(self) -> "StreamScheduler":
        """The decode thread and its lanes (graphs captured): serve calls this while loading a model, so
        its first request does not pay for them."""
        with self._stream_lock:
            if self._streamer is None:
                lane_len = self.stream_context
                slots = lanes_that_fit(self.model, self._kv_shapes(), lane_len, self.stream_slots, share=0.3)
                decoder = self._decoder(slots, lane_len)
                decoder.capture_all()  # every window's graphs, greedy and sampled: none on a request's path
                self._streamer = StreamScheduler(decoder, self.tokenizer, self.eos_ids)
            return self._streamer

    def stream(self, prompt: str | list[int], params: SamplingParams) -> AsyncIterator[list[Delta]]:
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        return self.start_streaming().stream(ids, params, self.emit_interval_s)

    @property
    def scheduler(self) -> "StreamScheduler | None":
        return self._streamer

    def status(self) -> dict:
        """Counters for serve's /status and benches: offline rows and steps, streams and their lanes."""
        streamer = self._streamer
        return {**self.stats, "streams": streamer.streams if streamer else 0,
                "stream_outputs": streamer.steps_seen if streamer else 0,
                "stream_lanes": streamer.decoder.slots if streamer else 0}

    def close(self) -> None:
        with self._stream_lock:
            if self._streamer is not None:
                self._streamer.close()
                self._streamer = None
        self._offline = None


def _tokens_covering(tokenizer, ids: list[int], chars: int) -> int:
    """How many of `ids` it takes to decode to at least `chars` characters."""
    for k in range(len(ids) + 1):
        if len(tokenizer.decode(ids[:k], skip_special_tokens=True)) >= chars:
            return k
    return len(ids)


# ---------------------------------------------------------------- the decode loop


class DecodeLoop:
    """The one decode loop over a SlotDecoder: admit waiting rows into free lanes, prefill them
    together, launch a step for every busy lane, route the tokens of the step before it. Offline
    batches run it until it is idle; serve's decode thread runs it forever.

    A row is anything with ``finished``, ``tokens_left`` (how many more tokens it may take: max_tokens
    less those it has) and ``feed(token) -> bool`` (True: the row is done and its lane is freed). One
    step is in flight while the host routes the step before it, so a row that ends by EOS or a stop
    sequence in the step being read had one token too many decoded in its lane by the step already
    launched (it is finished: the token is dropped).

    Each call admits twice. At its start, rows that arrived since (serve's new requests) take free lanes,
    and their first tokens are routed in the same call. At its end, after the step is launched and the
    one before it routed, waiting rows take the free lanes and the lanes whose rows take their last token
    (max_tokens) in the step just launched: such a row's end is known a step ahead, so its lane is handed
    on at once, without the wasted step, and the admission is planned on the host while the device
    runs that step (a pass@k wave, whose rows all end at the same step, would otherwise be planned on an
    idle device). Tokens are routed to the row that owned the lane at launch (StepTokens.by_owner), and
    the end admission's first tokens in the next call.

    Offline batches set `admit_batch`: wait for that many free lanes (or for the last waiting rows)
    before admitting, so that rows ending one by one are prefilled in groups (a lane may idle a few
    steps); and `lookahead`: each admission also runs the prompts of the rows waiting next (up to the
    decoder's stash), so pass@k's waves, a few prompts each, share a few large prefills. Serve admits
    at once and runs only what it admits: a request's first token should not wait.
    """

    def __init__(self, decoder, admit_batch: int = 1, lookahead: bool = False):
        self.decoder = decoder
        self.admit_batch = max(1, admit_batch)
        self.lookahead = lookahead
        self.waiting: deque = deque()  # (row, prompt ids, LaneSampling), first come first admitted
        self.lanes: dict[int, object] = {}  # lane -> the row decoding there
        self._sampling: dict[int, object] = {}  # lane -> its LaneSampling
        self.in_flight = None  # the launched step not read yet
        self.admitted_ahead = None  # the first tokens of the last call's end admission, not read yet
        self.tokens_routed = 0

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.lanes and self.in_flight is None and self.admitted_ahead is None

    def submit(self, row, prompt_ids: list[int], sampling) -> None:
        self.waiting.append((row, tuple(prompt_ids), sampling))  # a tuple: the decoder's key for the prompt

    def step(self) -> None:
        for lane, row in list(self.lanes.items()):
            if row.finished:  # cancelled from outside (a stream whose client left)
                self._release(lane)
        firsts = self._admit(ending=[])
        launched = None
        if self.lanes:
            sampling = self._sampling.values()
            sampled = not all(s.greedy for s in sampling)
            nucleus = any(not s.greedy and s.top_p < 1.0 for s in sampling)
            launched = self.decoder.launch(dict(self.lanes), sampled=sampled, nucleus=nucleus)
        # in the order the device made them; a row's first token comes before its later ones either way
        for tokens in (self.in_flight, self.admitted_ahead, firsts):
            if tokens is not None:
                self._route(tokens)
        self.in_flight, self.admitted_ahead = launched, None
        if launched is not None:
            self.admitted_ahead = self._admit(ending=[lane for lane, row in self.lanes.items()
                                                      if row.tokens_left <= 1])

    def abandon(self) -> list:
        """After a failed step: free every lane; returns the rows that were decoding (with those whose lane
        was handed on while their last token was still in flight)."""
        pending = [tokens.owners.values() for tokens in (self.in_flight, self.admitted_ahead) if tokens is not None]
        self.in_flight = self.admitted_ahead = None
        rows = list({id(row): row for row in itertools.chain(self.lanes.values(), *pending)
                     if not row.finished}.values())
        for lane in list(self.lanes):
            self._release(lane)
        return rows

    def _admit(self, ending: list[int]):
        """Waiting rows into free lanes, then into `ending` lanes (each row there takes its last token in
        the step in flight), prefilled together; their first tokens (StepTokens) or None."""
        if not self.waiting:
            return None
        free = [lane for lane in range(self.decoder.slots) if lane not in self.lanes] + ending
        still_busy = len(self.lanes) - len(ending)
        if len(free) < min(self.admit_batch, len(self.waiting)) and still_busy:
            return None
        free.reverse()
        entries = []
        while self.waiting and free:
            row, ids, sampling = self.waiting.popleft()
            if row.finished:
                continue
            lane = free.pop()
            if lane in self.lanes:  # its row ends in the step in flight: the step's token still reaches it
                self._release(lane)
            self.lanes[lane], self._sampling[lane] = row, sampling
            entries.append((lane, ids, sampling))
        if not entries:
            return None
        return self.decoder.admit(entries, {lane: self.lanes[lane] for lane, _, _ in entries}, self._upcoming())

    def _upcoming(self) -> list[tuple]:
        """The distinct prompts of the rows waiting next, in order, as many as the decoder's stash holds
        (looking at most 16 lanes' worth of rows ahead)."""
        if not self.lookahead:
            return []
        prompts: dict[tuple, None] = {}
        tokens = 0
        for _, ids, _ in itertools.islice(self.waiting, 16 * self.decoder.slots):
            if ids not in prompts:
                tokens += len(ids)
                if tokens > self.decoder.stash_tokens:
                    break
                prompts[ids] = None
        return list(prompts)

    def _route(self, tokens) -> None:
        """A step's (or an admission's) tokens to the rows that owned the lanes at launch."""
        for lane, row, token in tokens.by_owner():
            if row.finished:  # ended before this step (or was cancelled): the token is nobody's
                continue
            self.tokens_routed += 1
            if row.feed(token) and self.lanes.get(lane) is row:  # its lane may already be handed on
                self._release(lane)

    def _release(self, lane: int) -> None:
        self.lanes.pop(lane, None)
        self._sampling.pop(lane, None)
        self.decoder.release(lane)


class _BatchRow:
    """One offline row (prompt x sample): its tokens until EOS, max_tokens or a stop sequence. Stop
    sequences are checked every STOP_CHECK_EVERY tokens on the decoded tail (the text is cut exactly
    once the row is done, in TransformersEngine._finish)."""

    def __init__(self, params: SamplingParams, tokenizer, eos_ids: set[int], on_end=None):
        self.max_tokens, self.stop = params.max_tokens, params.stop
        self.tokenizer, self.eos_ids = tokenizer, eos_ids
        self.on_end = on_end  # called once, when the row is done
        self.tokens: list[int] = []
        self.finished = False

    @property
    def tokens_left(self) -> int:
        return self.max_tokens - len(self.tokens)

    def feed(self, token: int) -> bool:
        out = self.tokens
        out.append(token)
        done = token in self.eos_ids or len(out) >= self.max_tokens
        if not done and self.stop and len(out) % STOP_CHECK_EVERY == 0:
            tail = self.tokenizer.decode(out[-(STOP_CHECK_EVERY + max(map(len, self.stop))):],
                                         skip_special_tokens=True)
            done = stop_index(tail, self.stop) is not None
        self.finished = done
        if done and self.on_end is not None:
            self.on_end()
        return done


# ---------------------------------------------------------------- streaming rows


class _Row:
    """One streamed choice: tokens -> text deltas, stop sequences, max_tokens."""

    def __init__(self, stream: "_Stream", index: int, request_id: str, params: SamplingParams,
                 tokenizer, eos_ids: set[int], emit_interval_s: float = 0.0):
        self.stream, self.index, self.request_id = stream, index, request_id
        self.tokenizer, self.eos_ids = tokenizer, eos_ids
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

    @property
    def tokens_left(self) -> int:
        return self.max_tokens - len(self.tokens)

    def feed(self, token: int) -> bool:
        """One new token; True when this row is done (the loop frees its lane)."""
        if self.finished:
            return True
        if token in self.eos_ids:
            self.eos_token = token
            self.finish("stop", self.tokenizer)
            return True
        self.tokens.append(token)
        self.text += self._decode(self.tokenizer, final=False)
        if self.stop and self._apply_stop():
            return True
        if len(self.tokens) >= self.max_tokens:
            self.finish("length", self.tokenizer)
            return True
        if time.monotonic() - self._last_emit >= self.emit_interval_s:
            self._send(len(self.text) - (held_back(self.text, self.stop) if self.stop else 0))
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
        if new == prev and len(self.tokens) - self._prefix > 8:
            # tokens that decode to nothing (skipped specials): move on, or every step re-decodes them all
            self._prefix = self._read = len(self.tokens)
        return ""

    def _apply_stop(self) -> bool:
        cut = stop_index(self.text, self.stop, start=max(0, self.sent - max(len(s) for s in self.stop)))
        if cut is None:
            return False
        self.text = self.text[:cut]
        self.finish("stop")
        return True

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


class StreamScheduler:
    """Serve's side of the decode loop: one thread runs a DecodeLoop; requests join at the next step."""

    def __init__(self, decoder, tokenizer, eos_ids: list[int]):
        self.decoder, self.tokenizer, self.eos_ids = decoder, tokenizer, set(eos_ids)
        self.loop = DecodeLoop(decoder)  # the decode thread's only
        self._inbox: queue.Queue = queue.Queue()  # (row, prompt ids, LaneSampling) from the event loops
        self.streams = 0
        self._ids = itertools.count()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raywiz-decode", daemon=True)
        self._thread.start()

    @property
    def busy_lanes(self) -> int:
        return len(self.loop.lanes)

    @property
    def steps_seen(self) -> int:
        return self.loop.tokens_routed

    async def stream(self, prompt_ids: list[int], params: SamplingParams,
                     emit_interval_s: float = 0.0) -> AsyncIterator[list[Delta]]:
        """Deltas for one request until each of its n choices finished; whatever piled up since the
        last read comes as one list (a slow reader gets fewer, larger pieces)."""
        from raywiz.inference.slot_decoding import LaneSampling

        if not prompt_ids:
            raise ValueError("empty prompt")
        if len(prompt_ids) + params.max_tokens > self.decoder.lane_len:
            raise ValueError(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceed this "
                             f"engine's {self.decoder.lane_len}-token context")
        if self._closed.is_set():
            raise RuntimeError("model was unloaded")
        stream = _Stream(asyncio.get_running_loop())
        request = next(self._ids)
        rows = [_Row(stream, i, f"raywiz-{request}-{i}", params, self.tokenizer, self.eos_ids, emit_interval_s)
                for i in range(params.n)]
        self.streams += 1
        for row in rows:
            self._inbox.put((row, prompt_ids, LaneSampling.of(params, params.seed, row.index, prompt_ids)))
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
        finally:  # the client left, or we are done: the decode loop frees what is still decoding
            for row in rows:
                row.finished = True

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self._take_requests(block=self.loop.idle)
                self.loop.step()
            except Exception as e:  # a failed step fails the rows in it, never the thread
                log.exception("decoding failed")
                for row in self.loop.abandon():
                    if not row.finished:
                        row.finished = True
                        row.stream.put(RuntimeError(f"generation failed: {type(e).__name__}: {e}"))

    def _take_requests(self, block: bool) -> None:
        """New requests from the event loops into the decode loop's queue (waiting a little when idle)."""
        try:
            while True:
                self.loop.submit(*(self._inbox.get(timeout=0.05) if block else self._inbox.get_nowait()))
                block = False
        except queue.Empty:
            pass

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=10)
        pending = list(self.loop.lanes.values()) + [item[0] for item in self.loop.waiting]
        while not self._inbox.empty():
            pending.append(self._inbox.get_nowait()[0])
        for row in pending:
            if not row.finished:
                row.finished = True
                row.stream.put(RuntimeError("model was unloaded"))
