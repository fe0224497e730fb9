"""Slot decoding: raywiz's decode loop over a transformers model, for offline batches and streams alike.

Why raywiz owns this loop. On one H200 (StarCoderBase-1B shape, bf16, transformers 5.24) transformers'
continuous batching ran about 100 ms a step (1.4k tok/s for HumanEval's 164 prompts) and died on a
device-side assert with its CUDA graphs for GPT-BigCode; its static-cache ``generate`` decodes fast
once compiled, but compiling took 31 s before the first token (2.3k tok/s for 164 x 512 tokens,
compile included). This module keeps transformers' model code and its ``Cache`` interface and owns only
the loop around them:

- **Lanes.** The KV cache holds ``slots`` lanes of ``lane_len`` positions (``RingCache``, a transformers
  ``Cache``). Each decode step writes every lane's new key/value at one shared ring position, so one
  step is one fixed-shape forward for all lanes, whatever their lengths. A boolean mask per lane says
  which positions are its own; position ids are per lane, so RoPE and learned position embeddings see
  each sequence's true positions (attention itself does not care where in the lane a key sits).
- **Joining.** A waiting sequence is prefilled (eagerly, in a padded batch with the others waiting) and
  its keys/values are copied into a free lane just behind the ring position; it decodes from the next
  step on, beside the lanes already running (iteration-level batching). A lane that finishes is free
  at the next step. A sequence needs prompt + max_tokens <= lane_len, so the ring never reaches its own
  positions before it ends. Joining never waits for the device (admit(): its indices are built on the
  host and go up in one pinned copy per dtype, the prefill mask is built on the device, the first
  tokens come back like a step's),
  so the step in flight keeps running while the host prepares the next.
- **Shared prompts.** A prompt is prefilled once however many lanes take it (pass@k's n samples): its
  keys/values are copied into each lane from the stash (the prefill forward's own, kept while waiting
  rows want it) or from a lane that holds it (one gather for all layers when the layers are alike,
  head_dim moved as 8-byte words),
  and each lane samples its first token from the prompt's kept logits. A lane keeps its prompt intact
  for lane_len - n steps, even once released, so copies admitted steps later (more samples than free
  lanes) still share it; a prompt no lane holds any longer is forgotten (at most one kept prompt per
  lane).
- **Windows.** A lane's tokens are the last ones written before the ring position, so a step only
  needs the ring's last W positions, W the longest busy lane + 1: it attends over the smallest of a
  few windows (powers of two from 512, and the whole lane; window_sizes) that holds them, gathered
  from the ring. Serve's 8k-token lanes with prompts of a few hundred tokens read 1/16 of the cache.
- **One step, one CUDA graph.** The step (forward, per-lane sampling, the buffers' advance) is captured
  as a CUDA graph per (greedy, sampled or sampled with top-p; window) the first time it is needed, or all at once
  (capture_all: serve, at load), and replayed; nothing is compiled. Capturing runs the step twice
  for real, so what that writes (buffers, and the keys/values at those positions) is saved and put
  back: lanes may be live meanwhile. On CPU, or where capture fails (logged), the step runs eagerly.
- **A step in flight.** launch() queues a step and returns; its tokens land in pinned host memory.
  Callers launch step k+1 before reading step k, so routing tokens to rows, stop checks and
  detokenisation run while the device decodes.
- **Sampling per lane**, inside the step: greedy lanes take the argmax; sampled lanes apply temperature
  and top-p and pick by inverse CDF with a uniform hashed from (the lane's key, its token count)
  (raywiz.inference.seeded_sampling's hash). A seed therefore fixes a sequence's tokens whatever else
  shares the batch. The sort top-p needs runs only in steps where some lane asks for top-p < 1.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache

from raywiz.inference.seeded_sampling import mix32, mix32_tensor, row_seed

log = logging.getLogger("raywiz.inference")
PREFILL_TOKENS = {"cuda": 65536, "cpu": 8192}  # padded prompt tokens per prefill forward (its activations)
PREFILL_WIDTH_ROUND = {"cuda": 32, "cpu": 1}  # GPU: fewer distinct prefill shapes
WINDOW_MIN = 512  # the smallest attention window a step runs over (see window_sizes)
STASH_BYTES = {"cuda": 2 << 30, "cpu": 256 << 20}  # keys/values of prompts run ahead (SlotDecoder.admit)


@dataclass(frozen=True)
class LaneSampling:
    """How one sequence picks its tokens: greedy, or temperature/top-p with a noise key."""

    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    key: int = 0  # 31-bit noise key (lane_key): the same key gives the same samples

    @classmethod
    def of(cls, params, seed: int | None, index: int, prompt_ids: list[int]) -> "LaneSampling":
        if params.greedy:
            return cls()
        return cls(False, float(params.temperature), float(params.top_p), lane_key(seed, index, prompt_ids))


def lane_key(seed: int | None, index: int, prompt_ids: list[int]) -> int:
    """The noise key of choice `index` of a prompt under `seed`: the same (seed, prompt, choice) gives the
    same samples alone or in any batch; different prompts of one seed get unrelated noise."""
    if seed is None:
        import random

        seed = random.getrandbits(62)
    prompt_hash = zlib.crc32(b"".join(t.to_bytes(4, "little", signed=True) for t in prompt_ids[-512:]))
    return row_seed(seed, index) ^ mix32(prompt_hash) & 0x7FFFFFFF


def sample_tokens(logits: torch.Tensor, greedy: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                  key: torch.Tensor, count: torch.Tensor, nucleus: bool = True,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of `logits` [n, V]: tensor ops only (graph-capturable), no host sync.

    Sampled rows draw by inverse CDF: one uniform per (row key, token count) is located in the
    cumulative distribution of softmax(logits / temperature), so the token is a pure function of the
    row (its batch does not matter). Rows with top_p 1 walk the vocabulary in id order; rows with
    top_p < 1 walk it sorted by probability (stable: ties in id order), cut where a token's more likely
    predecessors already hold top_p of the mass. `nucleus=False` skips that sort; the caller passes it
    when no sampled row has top_p < 1, and a row's token is the same either way. A few passes over
    [n, V] and one sort, with no noise hashed per vocabulary entry (as the Gumbel-max trick needs).
    `rows` [n]: row i's logits are logits[rows[i]] (admissions: the n samples of a prompt share one
    row, and its argmax and sort)."""
    best = logits.argmax(dim=-1)
    order = logits.sort(dim=-1, descending=True, stable=True).indices if nucleus else None  # own dtype: fewer bytes
    if rows is not None:
        logits, best, order = logits[rows], best[rows], order[rows] if nucleus else None
    probs = (logits.float() / temperature.clamp(min=1e-5)[:, None]).softmax(dim=-1)
    uniform = uniform_of(key, count)[:, None]
    sampled = _inverse_cdf(probs, uniform)
    if nucleus:
        in_top_p = order.gather(-1, _inverse_cdf(probs.gather(-1, order), uniform, top_p))
        sampled = torch.where(top_p[:, None] < 1.0, in_top_p, sampled)
    return torch.where(greedy, best, sampled[:, 0])


def _inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor, top_p: torch.Tensor | None = None) -> torch.Tensor:
    """Per row [n, 1]: the index where `uniform` [n, 1] falls in the cumulative `probs`, over the
    prefix of entries whose predecessors hold less than top_p (all entries when top_p is None)."""
    cdf = probs.cumsum(dim=-1)
    if top_p is None:
        kept = torch.full_like(uniform, probs.shape[-1], dtype=torch.long)
    else:
        kept = ((cdf - probs) < top_p[:, None]).sum(dim=-1, keepdim=True)
    mass = cdf.gather(-1, kept - 1)  # the kept entries' total
    index = torch.searchsorted(cdf, uniform.to(cdf.dtype) * mass, right=True)
    return torch.minimum(index, kept - 1)  # rounding at the top end


def uniform_of(key: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """A uniform in (0, 1) per (lane key, token count), float64 from 32 hashed bits."""
    bits = mix32_tensor(mix32_tensor(key) ^ count)  # a fresh value per (lane, token)
    return (bits.double() + 0.5) / float(1 << 32)


class _RingLayer(CacheLayerMixin):
    """One layer's lanes: keys/values [slots, kv_heads, lane_len, head_dim], written at the ring position.
    While a step runs over a window (`view.index` set), attention sees only those positions."""

    is_compileable = False
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, write_at: torch.Tensor, view: "_Window"):
        super().__init__()
        self.keys, self.values, self.write_at, self.view = keys, values, write_at, view
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:  # allocated up front
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys.index_copy_(2, self.write_at, key_states)
        self.values.index_copy_(2, self.write_at, value_states)
        if self.view.index is None:
            return self.keys, self.values
        return self.keys.index_select(2, self.view.index), self.values.index_select(2, self.view.index)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[2], 0

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return self.keys.shape[2]


class _Window:
    """The ring positions the running step attends to (None: the whole lane)."""

    index: torch.Tensor | None = None


class RingCache(Cache):
    def __init__(self, layers: list[_RingLayer]):
        super().__init__(layers=layers)


def cache_keyword(model) -> str:
    """transformers 5.2x renames forward's `past_key_values` to `cache` (the old name warns)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def kv_shapes(model) -> list[tuple[tuple[int, ...], tuple[int, ...], torch.dtype]]:
    """Per layer: (key shape, value shape, dtype) of one token, read off a one-token forward (so any
    attention layout, multi-query included, is sized by the model itself)."""
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=True,
              **{cache_keyword(model): cache})
    return [(tuple(layer.keys.shape), tuple(layer.values.shape), layer.keys.dtype) for layer in cache.layers]


def kv_bytes_per_token(shapes) -> int:
    def numel(shape):
        n = 1
        for s in shape:
            n *= s
        return n

    return sum((numel(k) + numel(v)) * torch.empty((), dtype=dt).element_size() for k, v, dt in shapes)


def window_sizes(lane_len: int, smallest: int = WINDOW_MIN) -> list[int]:
    """The attention windows a decoder steps over: powers of two from `smallest` while gathering one
    (read + write) still costs at most half of reading the whole lane, then the lane itself."""
    sizes, w = [], smallest
    while w * 4 <= lane_len:
        sizes.append(w)
        w *= 2
    return sizes + [lane_len]


class StepTokens:
    """One launched decode step: its tokens arrive in a host buffer; tokens() waits for them.
    `owners` ({lane: what decoded there}) is the caller's, as it was at launch."""

    def __init__(self, host: torch.Tensor, event, owners: dict):
        self.host, self.event, self.owners = host, event, owners

    def tokens(self) -> list[int]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()

    def by_owner(self) -> list[tuple[int, object, int]]:
        """(lane, its owner at launch, token) for every lane that had one. The caller decides whose tokens
        still count: a sequence that ended before this step decoded one token nobody wants, while one
        whose lane was handed on after the launch (it ends in this step) gets its last token here."""
        tokens = self.tokens()
        return [(lane, owner, tokens[lane]) for lane, owner in self.owners.items()]


@dataclass
class _Stashed:
    """A prompt run through the model and not yet in every lane that wants it: its row of a prefill
    forward's cache (the prompt's keys/values from `start` on) and its last logits."""

    keys: torch.Tensor | list  # its forward's keys/values: all layers (as the lanes' layout), rows x width
    values: torch.Tensor | list
    row: int
    start: int
    logits: torch.Tensor
    taken: bool = False  # a row has taken it (later ones share it)


def _wide_pair(ring: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both tensors' head_dim seen as 8-byte words when both allow it: the index kernels that copy
    prompts into lanes cost per element, and bf16 keys moved 2 bytes at a time ran at ~90 GB/s on an
    H100 (pass@k copies a prompt into every one of its n lanes). The bits are copied unchanged."""
    try:
        return ring.view(torch.int64), source.view(torch.int64)
    except RuntimeError:  # a head_dim of odd bytes, or a view whose offset is not word-aligned
        return ring, source


class _Uploads:
    """Host arrays one admission needs on the device, sent in one copy per dtype. Each small copy costs
    the host a few ops and a pinned block, and an admission's device time waits on its host (pass@k's
    waves are one admission each); built on the host, a wave's tens of thousands of positions are a
    few numpy calls and under a megabyte to send."""

    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}

    def add(self, name: str, values, dtype=np.int64) -> None:
        self._arrays[name] = np.asarray(values, dtype=dtype)

    def spans(self, name: str, rows: list[int], starts: list[int], lens: list[int], lane_len: int) -> None:
        """`name`_rows and `name`_positions: lens[k] positions of row rows[k] from starts[k], round the ring."""
        lens_a = np.asarray(lens, dtype=np.int64)
        offsets = np.arange(int(lens_a.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens_a) - lens_a, lens_a)
        self.add(f"{name}_rows", np.repeat(np.asarray(rows, dtype=np.int64), lens_a))
        self.add(f"{name}_positions", (np.repeat(np.asarray(starts, dtype=np.int64), lens_a) + offsets) % lane_len)

    def send(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Every array as a device tensor (views of one per dtype), without waiting for the device."""
        sent = {}
        for dtype in dict.fromkeys(array.dtype for array in self._arrays.values()):
            names = [name for name, array in self._arrays.items() if array.dtype == dtype]
            flat = torch.from_numpy(np.concatenate([self._arrays[name] for name in names]))
            if device.type == "cuda":  # pinned, so the copy does not wait for the step in flight
                flat = flat.pin_memory().to(device, non_blocking=True)
            at = 0
            for name in names:
                sent[name] = flat[at:at + len(self._arrays[name])]
                at += len(self._arrays[name])
        return sent


class _DeviceTimer:
    """Device time between two points of the stream (CUDA events), read later without stalling now."""

    def __init__(self, begin):
        self.begin, self.end = begin, None

    @classmethod
    def start(cls, device) -> "_DeviceTimer | None":
        if device.type != "cuda":
            return None
        begin = torch.cuda.Event(enable_timing=True)
        begin.record()
        return cls(begin)

    def stop(self) -> "_DeviceTimer":
        self.end = torch.cuda.Event(enable_timing=True)
        self.end.record()
        return self

    def seconds(self) -> float:
        self.end.synchronize()
        return self.begin.elapsed_time(self.end) / 1000.0


class SlotDecoder:
    """`slots` lanes of `lane_len` positions over one model; prefill() puts sequences in, launch() decodes
    one token in every lane, release() says a lane is free."""

    def __init__(self, model, slots: int, lane_len: int, graphs: bool | None = None,
                 max_position: int | None = None, shapes=None, windows: list[int] | None = None):
        self.model, self.slots, self.lane_len = model, slots, lane_len
        self.cache_kw = cache_keyword(model)
        self.device = next(model.parameters()).device
        dev = self.device
        self.write_at = torch.zeros(1, dtype=torch.long, device=dev)  # the ring position the next step writes
        self.ring_pos = 0  # its host mirror
        self.filled = [0] * slots  # host: positions each lane holds (0: free); they sit just behind ring_pos
        self.windows = sorted({w for w in (windows or window_sizes(lane_len)) if 0 < w < lane_len} | {lane_len})
        self._arange = torch.arange(lane_len, dtype=torch.long, device=dev)
        self._view = _Window()
        shapes = shapes or kv_shapes(model)

        def lanes_of(shape, count):
            return torch.zeros((count, slots, shape[1], lane_len, shape[3]), dtype=shapes[0][2], device=dev)

        # Every layer's lanes in one tensor when the layers are alike, so that copying a prompt into
        # lanes is one gather and one write for all layers (per-layer indexing: ~100 ops an admission).
        if len(set(shapes)) == 1:
            self._keys, self._values = lanes_of(shapes[0][0], len(shapes)), lanes_of(shapes[0][1], len(shapes))
        else:  # per layer: a list of [slots, heads, lane_len, head_dim] (the same indexing, layer by layer)
            self._keys = [torch.zeros((slots, k[1], lane_len, k[3]), dtype=dt, device=dev) for k, _, dt in shapes]
            self._values = [torch.zeros((slots, v[1], lane_len, v[3]), dtype=dt, device=dev) for _, v, dt in shapes]
        self.cache = RingCache([_RingLayer(keys, values, self.write_at, self._view)
                                for keys, values in zip(self._keys, self._values)])
        self.mask = torch.zeros((slots, 1, 1, lane_len), dtype=torch.bool, device=dev)
        self.tokens = torch.zeros(slots, dtype=torch.long, device=dev)  # each lane's next input token
        self.positions = torch.zeros(slots, dtype=torch.long, device=dev)
        self.max_position = (max_position or lane_len) - 1
        # sampling state per lane
        self.greedy = torch.ones(slots, dtype=torch.bool, device=dev)
        self.temperature = torch.ones(slots, dtype=torch.float32, device=dev)
        self.top_p = torch.ones(slots, dtype=torch.float32, device=dev)
        self.key = torch.zeros(slots, dtype=torch.long, device=dev)
        self.count = torch.zeros(slots, dtype=torch.long, device=dev)  # tokens each lane has sampled
        # two host buffers: a step's tokens land in one while the caller reads the other's
        pinned = dev.type == "cuda"
        self._host = [torch.zeros(slots, dtype=torch.long, pin_memory=pinned) for _ in range(2)]
        self._flip = 0
        # admit()'s first tokens, two buffers the same way: an admission made while a step runs is read
        # after the next call's own admission
        self._first_host = [torch.zeros(slots, dtype=torch.long, pin_memory=pinned) for _ in range(2)]
        self._first_flip = 0
        self._prefill_timers: list = []  # admissions' device timers, summed into stats by settle_stats
        self.use_graphs = dev.type == "cuda" if graphs is None else graphs and dev.type == "cuda"
        self._graphs: dict[tuple[str, int], torch.cuda.CUDAGraph] = {}  # (mode, window) -> its step
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None  # one pool: graphs never overlap
        # prompts held in lanes, so that more samples of one prompt copy its keys/values, not recompute them
        self._lane_prompt: dict[int, tuple[tuple, int, int]] = {}  # lane -> (prompt ids, first ring position, step)
        self._prompt_lanes: dict[tuple, set[int]] = {}  # prompt ids -> the busy lanes holding it
        self._prompt_logits: dict[tuple, torch.Tensor] = {}  # prompt ids -> its last position's logits
        # prompts run through the model, kept until no waiting row needs them (admit's `upcoming`)
        self._stash: dict[tuple, _Stashed] = {}
        self.stash_tokens = min(PREFILL_TOKENS.get(dev.type, PREFILL_TOKENS["cpu"]),
                                STASH_BYTES.get(dev.type, STASH_BYTES["cpu"]) // max(1, kv_bytes_per_token(shapes)))
        self.stats = {"graph_capture_s": 0.0, "graphs": self.use_graphs, "graphs_captured": 0, "graph_error": None,
                      "prefill_s": 0.0, "prefill_host_s": 0.0, "prefills": 0, "admissions": 0, "prefill_forwards": 0,
                      "prefill_tokens": 0, "prefill_shared": 0, "steps": 0, "window_steps": {}, "prefill_groups": []}

    # ------------------------------------------------------------ prefill

    def prefill(self, entries: list[tuple[int, list[int], LaneSampling]]) -> list[int]:
        """admit(), waited for: each entry's first token, in entry order."""
        tokens = self.admit(entries).tokens()
        return [tokens[lane] for lane, _, _ in entries]

    def admit(self, entries: list[tuple[int, list[int], LaneSampling]], owners: dict | None = None,
              upcoming: list[tuple] = ()) -> "StepTokens":
        """Put each (lane, prompt ids, sampling) into its lane and sample its first token, without waiting
        for the device: the first tokens come like a step's (StepTokens, by lane; `owners` as launch's).
        Read them before the admission after next (two host buffers, as steps have). Admitting into a lane
        whose step is still running is safe: the admission runs after it, in stream order.

        A prompt is run through the model once. Prompts run go to the stash (their keys/values, as the
        forward left them, and their last logits); each entry's lane gets its prompt copied from the stash,
        or from a lane that still holds it (copies admitted after the first ones), and its first token
        sampled from the kept logits with its own sampling (so a seed gives the same text alone or
        shared). `upcoming`: prompts (tuples of ids) of the rows waiting next, in order. When some entry's
        prompt must be run, those not held anywhere are run too while the stash has room, in the same
        forwards, so that the admissions after it only copy (a few large prefills instead of one small
        one per admission: pass@k's waves admit a few prompts each). After the copies the stash keeps
        only upcoming prompts."""
        started = time.perf_counter()
        timer = _DeviceTimer.start(self.device)
        keys = [tuple(ids) for _, ids, _ in entries]
        run: dict[tuple, None] = {}  # prompts to run now, in order (a dict: no repeats)
        holders: dict[tuple, int] = {}  # prompts not in the stash that a lane holds -> that lane
        for key in keys:
            if key in self._stash or key in run or key in holders:
                continue
            holder = self._holder(key)
            if holder is None:
                run[key] = None
            else:
                holders[key] = holder
        room = self.stash_tokens - sum(len(key) for key in self._stash) - sum(len(key) for key in run)
        for key in upcoming if run else ():  # only when a forward runs anyway: then fill the stash
            if key in run or key in self._stash or key in holders or self._holder(key) is not None:
                continue
            if len(key) > room:
                break
            run[key] = None
            room -= len(key)
        self._run_prompts(list(run))
        from_lanes = [(lane, holders[key], key) for (lane, _, _), key in zip(entries, keys) if key in holders]
        logits = {key: self._prompt_logits[key] for _, _, key in from_lanes}
        # Every index this admission needs is built on the host and goes up in one copy per dtype.
        uploads = _Uploads()
        copies = self._plan_copies(from_lanes, [(lane, key) for (lane, _, _), key in zip(entries, keys)
                                                if key in self._stash], uploads)
        shared = 0
        for (lane, _, _), key in zip(entries, keys):
            if key in self._stash:
                stashed = self._stash[key]
                logits[key] = stashed.logits
                shared += stashed.taken  # the first row to take a prompt run is not sharing it
                stashed.taken = True
            else:
                shared += 1
            self._forget(lane)
            self._hold_prompt(lane, key, logits[key])
            self.filled[lane] = len(key)
        distinct = list(dict.fromkeys(keys))
        position = {key: i for i, key in enumerate(distinct)}
        self._plan_start(entries, [position[key] for key in keys], uploads)
        sent = uploads.send(self.device)
        with torch.inference_mode():
            for name, source_keys, source_values in copies:  # in order: copies between lanes first
                self._write_kv(sent[f"{name}_to_rows"], sent[f"{name}_to_positions"], source_keys, source_values,
                               sent[f"{name}_from_rows"], sent[f"{name}_from_positions"])
            self._start_lanes(sent, torch.stack([logits[key] for key in distinct]),
                              nucleus=any(s.top_p < 1.0 and not s.greedy for _, _, s in entries))
        keep = set(upcoming)
        for key in [key for key in self._stash if key not in keep]:
            del self._stash[key]  # a group's keys/values are freed with its last prompt
        host = self._first_host[self._first_flip]
        self._first_flip ^= 1
        firsts = self._to_host(host, owners if owners is not None else {lane: lane for lane, _, _ in entries})
        if timer is not None:
            self._prefill_timers.append(timer.stop())
        self.stats["prefill_host_s"] += time.perf_counter() - started
        self.stats["prefills"] += len(entries)
        self.stats["admissions"] += 1
        self.stats["prefill_shared"] += shared
        return firsts

    def _run_prompts(self, keys: list[tuple]) -> None:
        """Run these prompts through the model, in padded groups of at most PREFILL_TOKENS, into the stash."""
        groups: list[list[tuple]] = [[]]
        budget = PREFILL_TOKENS.get(self.device.type, PREFILL_TOKENS["cpu"])
        for key in sorted(keys, key=len):  # shortest first: little padding
            if groups[-1] and len(key) * (len(groups[-1]) + 1) > budget:
                groups.append([])
            groups[-1].append(key)
        for group in groups if groups[0] else []:
            t = time.perf_counter()
            width, cache, last = self._prefill_group(group)
            keys, values = self._like_lanes([layer.keys for layer in cache.layers]), \
                self._like_lanes([layer.values for layer in cache.layers])
            del cache
            for row, key in enumerate(group):
                self._stash[key] = _Stashed(keys, values, row, width - len(key), last[row])
            self.stats["prefill_tokens"] += sum(len(key) for key in group)
            self.stats["prefill_forwards"] += 1
            if len(self.stats["prefill_groups"]) < 8:  # the first few (rows, width, host s): where a cold start goes
                self.stats["prefill_groups"].append([len(group), width, round(time.perf_counter() - t, 4)])

    def _plan_copies(self, from_lanes: list[tuple[int, int, tuple]], from_stash: list[tuple[int, tuple]],
                     uploads: "_Uploads") -> list[tuple[str, object, object]]:
        """The prompt copies of an admission: each (lane, source lane, prompt) of `from_lanes` copies the
        prompt from where the source lane holds it, each (lane, prompt) of `from_stash` from its prefill
        forward's row; both to just behind the ring position. Their spans go into `uploads` (read the
        source lanes' positions now: a source may be given a new prompt in this admission); returns
        (upload name, source keys, source values) per copy, copies between lanes first."""
        copies = []
        if from_lanes:
            lens = [len(key) for _, _, key in from_lanes]
            uploads.spans("lanes_to", [lane for lane, _, _ in from_lanes], self._behind_ring(lens), lens, self.lane_len)
            uploads.spans("lanes_from", [src for _, src, _ in from_lanes],
                          [self._lane_prompt[src][1] for _, src, _ in from_lanes], lens, self.lane_len)
            copies.append(("lanes", self._keys, self._values))
        by_forward: dict[int, list[tuple[int, tuple]]] = {}  # one gather per prefill forward they came from
        for lane, key in from_stash:
            by_forward.setdefault(id(self._stash[key].values), []).append((lane, key))
        for i, group in enumerate(by_forward.values()):
            stashed = [self._stash[key] for _, key in group]
            lens = [len(key) for _, key in group]
            uploads.spans(f"stash{i}_to", [lane for lane, _ in group], self._behind_ring(lens), lens, self.lane_len)
            uploads.spans(f"stash{i}_from", [st.row for st in stashed], [st.start for st in stashed], lens,
                          self.lane_len)
            copies.append((f"stash{i}", stashed[0].keys, stashed[0].values))
        return copies

    def _behind_ring(self, lens: list[int]) -> list[int]:
        """Where spans of these lengths start so that they end just behind the ring position."""
        return [(self.ring_pos - n) % self.lane_len for n in lens]

    def _like_lanes(self, per_layer: list[torch.Tensor]):
        """A forward's per-layer keys (or values) in the lanes' layout: stacked when the lanes are."""
        return torch.stack(per_layer) if isinstance(self._keys, torch.Tensor) else per_layer

    def _write_kv(self, rows_t, slots_t, keys, values, src_r, src_c) -> None:
        """Lane positions (rows_t, slots_t) of every layer <- positions (src_r, src_c) of `keys`/`values`
        (the lanes themselves, or a forward's, in the lanes' layout). The right side is gathered (a
        copy) before anything is written, so a source may be among the lanes written."""
        if isinstance(self._keys, torch.Tensor):
            pairs = [(self._keys, keys), (self._values, values)]
        else:
            pairs = list(zip(self._keys, keys)) + list(zip(self._values, values))
        for ring, source in pairs:
            ring, source = _wide_pair(ring, source)
            if ring.dim() == 5:  # [layers, lanes, heads, positions, head_dim]
                ring[:, rows_t, :, slots_t] = source[:, src_r, :, src_c]
            else:
                ring[rows_t, :, slots_t] = source[src_r, :, src_c]

    def settle_stats(self) -> dict:
        """stats, with prefill_s brought up to date: on GPU the device time between each admission's first
        and last operation (CUDA events: waits for admissions still running), on CPU the host time."""
        timers, self._prefill_timers = self._prefill_timers, []
        self.stats["prefill_s"] += sum(timer.seconds() for timer in timers)
        if self.device.type != "cuda":
            self.stats["prefill_s"] = self.stats["prefill_host_s"]
        return self.stats

    def _on_device(self, values: list, dtype=torch.long) -> torch.Tensor:
        """A host list as a device tensor without waiting for the device: a plain copy would wait for the
        step in flight (torch synchronizes a blocking host-to-device copy), losing the overlap."""
        host = torch.tensor(values, dtype=dtype)
        if self.device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    def _to_host(self, host: torch.Tensor, owners: dict) -> "StepTokens":
        """self.tokens (every lane's next input token) copied to `host` once the device gets there."""
        host.copy_(self.tokens, non_blocking=host.is_pinned())
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return StepTokens(host, event, owners)

    def _prefill_group(self, keys: list[tuple]) -> tuple[int, DynamicCache, torch.Tensor]:
        """One forward over these prompts (all distinct): the padded width, the keys/values (each prompt
        right-aligned in its row) and each prompt's last logits.

        Prompts are left-padded to one width, and the mask is built here as 4D (causal, padding keys
        hidden, a padding query sees itself so no row of the softmax is empty): given a 2D mask,
        transformers asks the device whether there is padding, a sync per admission."""
        dev = self.device
        lens = [len(key) for key in keys]
        if max(lens) + 1 > self.lane_len:
            raise ValueError(f"a prompt of {max(lens)} tokens does not fit a {self.lane_len}-token lane")
        round_to = PREFILL_WIDTH_ROUND.get(dev.type, 1)
        width = min(-(-max(lens) // round_to) * round_to, self.lane_len - 1)
        pad = 0
        input_ids = self._on_device([[pad] * (width - n) + list(key) for key, n in zip(keys, lens)])
        pads = self._on_device([width - n for n in lens])[:, None]
        columns = torch.arange(width, device=dev)
        position_ids = (columns[None, :] - pads).clamp(min=0)
        query, key_col = columns[:, None], columns[None, :]
        mask = (key_col <= query) & ((key_col[None] >= pads[:, :, None]) | (key_col == query))  # [rows, q, k]
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, attention_mask=mask[:, None], position_ids=position_ids,
                             use_cache=True, logits_to_keep=1, **{self.cache_kw: cache})
        return width, cache, out.logits[:, -1]

    def _hold_prompt(self, lane: int, key: tuple, logits: torch.Tensor) -> None:
        """Record that `lane` holds prompt `key` just behind the ring position (for later copies)."""
        self._lane_prompt[lane] = (key, self._behind_ring([len(key)])[0], self.stats["steps"])
        self._prompt_lanes.setdefault(key, set()).add(lane)
        self._prompt_logits[key] = logits

    def _holder(self, key: tuple) -> int | None:
        """A lane whose ring positions still hold prompt `key`, busy or released: the ring writes one
        position per step, so a prompt of n tokens survives lane_len - n steps after its prefill (a
        sequence's whole life), unless its lane is given another prompt first."""
        for lane in sorted(self._prompt_lanes.get(key, ())):
            if self.stats["steps"] - self._lane_prompt[lane][2] <= self.lane_len - len(key):
                return lane
            self._forget(lane)  # overwritten by now
        return None

    def forget_prompts(self) -> None:
        """Reuse no prompt kept so far (the model's weights changed: its keys/values are stale)."""
        for lane in list(self._lane_prompt):
            self._forget(lane)
        self._stash.clear()

    def _forget(self, lane: int) -> None:
        """`lane` no longer holds its prompt; a prompt no lane holds drops its logits."""
        held = self._lane_prompt.pop(lane, None)
        if held is not None:
            lanes = self._prompt_lanes[held[0]]
            lanes.discard(lane)
            if not lanes:
                del self._prompt_lanes[held[0]], self._prompt_logits[held[0]]

    def _plan_start(self, entries, logit_rows: list[int], uploads: "_Uploads") -> None:
        """What _start_lanes needs of each entry (lane, prompt ids, sampling), into `uploads`."""
        lanes, lens = [lane for lane, _, _ in entries], [len(ids) for _, ids, _ in entries]
        sampling = [s for _, _, s in entries]
        uploads.add("lanes", lanes)
        uploads.spans("prompt", lanes, self._behind_ring(lens), lens, self.lane_len)
        uploads.add("positions", lens)
        uploads.add("logit_rows", logit_rows)
        uploads.add("greedy", [s.greedy for s in sampling], np.bool_)
        uploads.add("temperature", [s.temperature for s in sampling], np.float32)
        uploads.add("top_p", [s.top_p for s in sampling], np.float32)
        uploads.add("key", [s.key for s in sampling])

    def _start_lanes(self, sent: dict[str, torch.Tensor], logits: torch.Tensor, nucleus: bool) -> None:
        """Each entry's lane state (mask, position, sampling; _plan_start's uploads, `sent`) and its first
        token, sampled from its prompt's last logits (logits[logit_rows[i]] for entry i) into the lane's
        next input token."""
        lanes = sent["lanes"]
        self.mask[lanes] = False
        self.mask[sent["prompt_rows"], 0, 0, sent["prompt_positions"]] = True
        self.positions[lanes] = sent["positions"]
        for name in ("greedy", "temperature", "top_p", "key"):
            getattr(self, name)[lanes] = sent[name]
        self.tokens[lanes] = sample_tokens(logits, sent["greedy"], sent["temperature"], sent["top_p"], sent["key"],
                                           torch.zeros_like(sent["key"]), nucleus=nucleus, rows=sent["logit_rows"])
        self.count[lanes] = 1

    def release(self, lane: int) -> None:
        """The lane's sequence is done: the windows no longer need to cover it (its prompt stays there to
        copy until the lane is reused or the ring reaches it: _holder)."""
        self.filled[lane] = 0

    # ------------------------------------------------------------ decode

    def _step_body(self, mode: str, window: int) -> None:
        self.mask.index_fill_(3, self.write_at, True)  # every lane writes its new token here
        mask = self.mask
        if window < self.lane_len:  # the last `window` ring positions, up to the one written now
            index = (self.write_at - (window - 1) + self._arange[:window]).remainder(self.lane_len)
            mask = self.mask.index_select(3, index)
            self._view.index = index
        try:
            out = self.model(input_ids=self.tokens[:, None], position_ids=self.positions[:, None],
                             attention_mask=mask, use_cache=True, logits_to_keep=1, **{self.cache_kw: self.cache})
        finally:
            self._view.index = None
        logits = out.logits[:, -1]
        if mode == "greedy":
            nxt = logits.argmax(dim=-1)
        else:
            nxt = sample_tokens(logits, self.greedy, self.temperature, self.top_p, self.key, self.count,
                                nucleus=mode == "nucleus")
        self.tokens.copy_(nxt)
        self.positions.add_(1).clamp_(max=self.max_position)  # idle lanes must not run off the embeddings
        self.count.add_(1)
        self.write_at.add_(1).remainder_(self.lane_len)

    def window_for(self) -> int:
        """The smallest window holding every busy lane and the position written now."""
        need = max(self.filled) + 1
        return next(w for w in self.windows if w >= need)

    def launch(self, owners: dict | None = None, sampled: bool = False, nucleus: bool = True) -> StepTokens:
        """Queue one decode step for every lane (idle lanes too: their tokens are ignored) and return at
        once; the tokens come with .tokens(), or .by_owner() with `owners` (the caller's lane -> sequence
        map at launch). The caller may launch the next step before reading them
        (what it then does on the host overlaps the device's step), but reads each step before
        launching the one after next. `sampled`: some lane samples; `nucleus`: some sampled lane has
        top_p < 1 (False skips top-p's sort)."""
        window = self.window_for()
        mode = "greedy" if not sampled else "nucleus" if nucleus else "sample"
        with torch.inference_mode():
            graph = self._graph(mode, window) if self.use_graphs else None
            if graph is not None:
                graph.replay()
            else:
                self._step_body(mode, window)
            host = self._host[self._flip]
            self._flip ^= 1
            launched = self._to_host(host, owners or {})
        self.ring_pos = (self.ring_pos + 1) % self.lane_len
        self.filled = [min(f + 1, self.lane_len) if f else 0 for f in self.filled]
        self.stats["steps"] += 1
        self.stats["window_steps"][window] = self.stats["window_steps"].get(window, 0) + 1
        if len(self._prefill_timers) > 1024:  # serve never settles: long done by now
            self.settle_stats()
        return launched

    def step(self, sampled: bool = False, nucleus: bool = True) -> list[int]:
        """One decode step, waited for: every lane's next token."""
        return self.launch(sampled=sampled, nucleus=nucleus).tokens()

    def capture_all(self, sampled_too: bool = True) -> None:
        """Capture every window's graphs now (serve: at load, not on a request's path). Sampling without
        top-p (mode "sample") is captured when first needed."""
        if self.use_graphs:
            for mode in ("greedy", "nucleus") if sampled_too else ("greedy",):
                for window in self.windows:
                    self._graph(mode, window)

    def _graph(self, mode: str, window: int):
        key = (mode, window)
        if key in self._graphs or not self.use_graphs:
            return self._graphs.get(key)
        started = time.perf_counter()
        # Warm-up runs the step for real: save what it writes (the buffers, and every layer's keys and
        # values at the positions written) and put it back, so lanes may be live meanwhile.
        buffers = (self.write_at, self.mask, self.tokens, self.positions, self.count)
        saved = [t.clone() for t in buffers]
        written = (self.write_at + torch.arange(3, device=self.device)).remainder(self.lane_len)
        saved_kv = [(layer.keys.index_select(2, written), layer.values.index_select(2, written))
                    for layer in self.cache.layers]
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the graph (cuBLAS workspaces, lazy inits)
                    self._step_body(mode, window)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: serve captures a new model's graphs while the old one decodes on its thread
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                self._step_body(mode, window)
        except Exception as e:  # capture is an optimisation: decode eagerly rather than fail
            log.warning("CUDA graph capture failed (%s: %s); decoding without graphs", type(e).__name__, e)
            self.use_graphs, graph = False, None
            self.stats.update(graphs=False, graph_error=f"{type(e).__name__}: {e}"[:500])
        for buf, old in zip(buffers, saved):
            buf.copy_(old)
        for layer, (keys, values) in zip(self.cache.layers, saved_kv):
            layer.keys.index_copy_(2, written, keys)
            layer.values.index_copy_(2, written, values)
        torch.cuda.synchronize()
        self.stats["graph_capture_s"] += time.perf_counter() - started
        if graph is not None:
            self._graphs[key] = graph
            self.stats["graphs_captured"] += 1
        return graph
