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
  positions before it ends.
- **Shared prompts.** A prompt is prefilled once however many lanes take it (pass@k's n samples): the
  others get its keys/values copied from a lane that holds it (one gather per layer) and sample their
  first token from its kept logits. A lane keeps its prompt intact for lane_len - n steps, even once
  released, so copies admitted steps later (more samples than free lanes) still share it; a prompt no
  lane holds any longer is forgotten (at most one kept prompt per lane).
- **Windows.** A lane's tokens are the last ones written before the ring position, so a step only
  needs the ring's last W positions, W the longest busy lane + 1: it attends over the smallest of a
  few windows (powers of two from 512, and the whole lane; window_sizes) that holds them, gathered
  from the ring. Serve's 8k-token lanes with prompts of a few hundred tokens read 1/16 of the cache.
- **One step, one CUDA graph.** The step (forward, per-lane sampling, the buffers' advance) is captured
  as a CUDA graph per (greedy or sampled, window) the first time it is needed, or all at once
  (capture_all: serve, at load), and replayed; nothing is compiled. Capturing runs the step twice
  for real, so what that writes (buffers, and the keys/values at those positions) is saved and put
  back: lanes may be live meanwhile. On CPU, or where capture fails (logged), the step runs eagerly.
- **A step in flight.** launch() queues a step and returns; its tokens land in pinned host memory.
  Callers launch step k+1 before reading step k, so routing tokens to rows, stop checks and
  detokenisation run while the device decodes.
- **Sampling per lane**, inside the step: greedy lanes take the argmax; sampled lanes apply temperature
  and top-p and pick by the Gumbel-max trick with noise hashed from (the lane's key, its token count,
  the vocabulary id) (raywiz.inference.seeded_sampling's hash). A seed therefore fixes a sequence's
  tokens whatever else shares the batch.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache

from raywiz.inference.seeded_sampling import mix32, mix32_tensor, row_seed

log = logging.getLogger("raywiz.inference")
PREFILL_TOKENS = {"cuda": 65536, "cpu": 8192}  # padded prompt tokens per prefill forward (its activations)
PREFILL_WIDTH_ROUND = {"cuda": 32, "cpu": 1}  # GPU: fewer distinct prefill shapes
WINDOW_MIN = 512  # the smallest attention window a step runs over (see window_sizes)


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
                  key: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """One token per row of `logits` [n, V]: tensor ops only (graph-capturable), no host sync."""
    logits = logits.float()
    best = logits.argmax(dim=-1)
    scaled = logits / temperature.clamp(min=1e-5)[:, None]
    probs = scaled.softmax(dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    # top-p: drop a token once the more likely ones before it already hold top_p of the mass
    drop_sorted = (sorted_p.cumsum(dim=-1) - sorted_p) >= top_p[:, None]
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    scaled = scaled.masked_fill(drop, float("-inf"))
    step_keys = mix32_tensor(mix32_tensor(key) ^ count)  # a fresh key per (lane, token)
    vocab = torch.arange(logits.shape[-1], device=logits.device, dtype=torch.int64)
    bits = mix32_tensor(step_keys[:, None] ^ vocab[None, :])
    uniform = ((bits >> 8).float() + 0.5) / float(1 << 24)  # in (0, 1)
    sampled = (scaled - torch.log(-torch.log(uniform))).argmax(dim=-1)
    return torch.where(greedy, best, sampled)


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

    def tokens_of(self, owners_now: dict) -> list[tuple[int, int]]:
        """(lane, token) for the lanes whose owner is still the one at launch: a lane freed, or
        given to another sequence, since then decoded a token nobody wants."""
        tokens = self.tokens()
        return [(lane, tokens[lane]) for lane, owner in self.owners.items()
                if lane in owners_now and owners_now[lane] == owner]


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
        layers = []
        for key_shape, value_shape, dtype in shapes or kv_shapes(model):
            keys = torch.zeros((slots, key_shape[1], lane_len, key_shape[3]), dtype=dtype, device=dev)
            values = torch.zeros((slots, value_shape[1], lane_len, value_shape[3]), dtype=dtype, device=dev)
            layers.append(_RingLayer(keys, values, self.write_at, self._view))
        self.cache = RingCache(layers)
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
        self.use_graphs = dev.type == "cuda" if graphs is None else graphs and dev.type == "cuda"
        self._graphs: dict[tuple[bool, int], torch.cuda.CUDAGraph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None  # one pool: graphs never overlap
        # prompts held in lanes, so that more samples of one prompt copy its keys/values, not recompute them
        self._lane_prompt: dict[int, tuple[tuple, int, int]] = {}  # lane -> (prompt ids, first ring position, step)
        self._prompt_lanes: dict[tuple, set[int]] = {}  # prompt ids -> the busy lanes holding it
        self._prompt_logits: dict[tuple, torch.Tensor] = {}  # prompt ids -> its last position's logits
        self.stats = {"graph_capture_s": 0.0, "graphs": self.use_graphs, "graphs_captured": 0, "graph_error": None,
                      "prefill_s": 0.0, "prefills": 0, "prefill_tokens": 0, "prefill_shared": 0, "steps": 0,
                      "window_steps": {}, "prefill_groups": []}

    # ------------------------------------------------------------ prefill

    def prefill(self, entries: list[tuple[int, list[int], LaneSampling]]) -> list[int]:
        """Put each (lane, prompt ids, sampling) into its lane; returns each one's first token.

        A prompt is run through the model once: entries with the same prompt (the n samples of one
        request), and entries whose prompt a lane still holds (copies admitted after the first ones),
        get its keys/values copied lane to lane and their first token sampled from its kept last
        logits, each with its own sampling (so a seed gives the same text alone or shared)."""
        started = time.perf_counter()
        keys = [tuple(ids) for _, ids, _ in entries]
        held, fresh, late = [], {}, []  # copies from lanes holding the prompt; prompts to run; copies of those
        for i, key in enumerate(keys):
            holder = self._holder(key)
            if holder is not None:
                held.append((entries[i][0], holder, key))
            elif key in fresh:
                late.append(i)
            else:
                fresh[key] = i
        logits = {key: self._prompt_logits[key] for _, _, key in held}
        self._copy_prompts(held)  # first: the lanes read may be among those given a new prompt now
        groups: list[list[int]] = [[]]
        budget = PREFILL_TOKENS.get(self.device.type, PREFILL_TOKENS["cpu"])
        for i in sorted(fresh.values(), key=lambda i: len(keys[i])):  # shortest first: little padding
            if groups[-1] and len(keys[i]) * (len(groups[-1]) + 1) > budget:
                groups.append([])
            groups[-1].append(i)
        for group in groups if groups[0] else []:
            t = time.perf_counter()
            width, last = self._prefill_group([entries[i] for i in group])
            logits.update((keys[i], row) for i, row in zip(group, last))
            self.stats["prefill_tokens"] += sum(len(keys[i]) for i in group)
            if len(self.stats["prefill_groups"]) < 8:  # the first few (rows, width, s): where a cold start goes
                self.stats["prefill_groups"].append([len(group), width, round(time.perf_counter() - t, 4)])
        self._copy_prompts([(entries[i][0], entries[fresh[keys[i]]][0], keys[i]) for i in late], just_written=True)
        for (lane, _, _), key in zip(entries, keys):
            self._forget(lane)
            self._hold_prompt(lane, key, logits[key])
            self.filled[lane] = len(key)
        firsts = self._start_lanes(entries, torch.stack([logits[key] for key in keys]))
        self.stats["prefill_s"] += time.perf_counter() - started
        self.stats["prefills"] += len(entries)
        self.stats["prefill_shared"] += len(entries) - len(fresh)
        return firsts

    def _prefill_group(self, entries) -> tuple[int, list[torch.Tensor]]:
        """One forward over these prompts (all distinct); each one's keys/values go into its own lane,
        just behind the ring position. Returns the padded width and each prompt's last logits."""
        dev = self.device
        lens = [len(ids) for _, ids, _ in entries]
        if max(lens) + 1 > self.lane_len:
            raise ValueError(f"a prompt of {max(lens)} tokens does not fit a {self.lane_len}-token lane")
        round_to = PREFILL_WIDTH_ROUND.get(dev.type, 1)
        width = min(-(-max(lens) // round_to) * round_to, self.lane_len - 1)
        pad = 0
        input_ids = torch.tensor([[pad] * (width - n) + ids for (_, ids, _), n in zip(entries, lens)], device=dev)
        attn = torch.tensor([[0] * (width - n) + [1] * n for n in lens], device=dev)
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids,
                             use_cache=True, logits_to_keep=1, **{self.cache_kw: cache})
            # Each prompt's real tokens go just behind the ring position, in its own lane.
            rows_t, slots_t = self._spans([lane for lane, _, _ in entries], None, lens)
            src_r, src_c = self._spans(range(len(entries)), [width - n for n in lens], lens, wrap=False)
            for ring, layer in zip(self.cache.layers, cache.layers):
                ring.keys[rows_t, :, slots_t] = layer.keys[src_r, :, src_c]
                ring.values[rows_t, :, slots_t] = layer.values[src_r, :, src_c]
        return width, [row.clone() for row in out.logits[:, -1]]  # kept apart: not the whole group's logits

    def _spans(self, lanes, starts, lens, wrap: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Index tensors (row, position) of spans: lens[k] positions of row lanes[k] from starts[k] (None:
        the lens[k] just behind the ring position), round the ring if `wrap`. Built on the device: a
        wave of pass@k admissions is tens of thousands of positions."""
        dev, lens = self.device, list(lens)
        lens_t = torch.tensor(lens, dtype=torch.long, device=dev)
        starts_t = (self.ring_pos - lens_t) if starts is None else torch.tensor(list(starts), dtype=torch.long,
                                                                                 device=dev)
        total = sum(lens)  # from the host: no device sync
        rows = torch.repeat_interleave(torch.tensor(list(lanes), dtype=torch.long, device=dev), lens_t,
                                       output_size=total)
        offsets = torch.arange(total, device=dev) - torch.repeat_interleave(lens_t.cumsum(0) - lens_t, lens_t,
                                                                            output_size=total)
        positions = torch.repeat_interleave(starts_t, lens_t, output_size=total) + offsets
        return rows, positions.remainder(self.lane_len) if wrap else positions

    def _copy_prompts(self, copies: list[tuple[int, int, tuple]], just_written: bool = False) -> None:
        """For each (lane, source lane, prompt): the prompt's keys/values, from where the source lane holds
        them (just behind the ring position if `just_written`), to just behind the ring position in lane."""
        if not copies:
            return
        lens = [len(key) for _, _, key in copies]
        with torch.inference_mode():
            rows_t, slots_t = self._spans([lane for lane, _, _ in copies], None, lens)
            src_r, src_s = self._spans([src for _, src, _ in copies],
                                       None if just_written else [self._lane_prompt[src][1] for _, src, _ in copies],
                                       lens)
            for ring in self.cache.layers:  # the right side is gathered (a copy) before anything is written
                ring.keys[rows_t, :, slots_t] = ring.keys[src_r, :, src_s]
                ring.values[rows_t, :, slots_t] = ring.values[src_r, :, src_s]

    def _hold_prompt(self, lane: int, key: tuple, logits: torch.Tensor) -> None:
        """Record that `lane` holds prompt `key` just behind the ring position (for later copies)."""
        self._lane_prompt[lane] = (key, (self.ring_pos - len(key)) % self.lane_len, self.stats["steps"])
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

    def _forget(self, lane: int) -> None:
        """`lane` no longer holds its prompt; a prompt no lane holds drops its logits."""
        held = self._lane_prompt.pop(lane, None)
        if held is not None:
            lanes = self._prompt_lanes[held[0]]
            lanes.discard(lane)
            if not lanes:
                del self._prompt_lanes[held[0]], self._prompt_logits[held[0]]

    def _start_lanes(self, entries, logits: torch.Tensor) -> list[int]:
        """Each entry's lane state (mask, position, sampling) and its first token, sampled from `logits`
        (one row per entry: its prompt's last)."""
        dev = self.device
        with torch.inference_mode():
            lanes = torch.tensor([lane for lane, _, _ in entries], device=dev)
            self.mask[lanes] = False
            rows, slots = self._spans([lane for lane, _, _ in entries], None, [len(ids) for _, ids, _ in entries])
            self.mask[rows, 0, 0, slots] = True
            self.positions[lanes] = torch.tensor([len(ids) for _, ids, _ in entries], device=dev)
            sampling = [s for _, _, s in entries]
            self.greedy[lanes] = torch.tensor([s.greedy for s in sampling], device=dev)
            self.temperature[lanes] = torch.tensor([s.temperature for s in sampling], device=dev)
            self.top_p[lanes] = torch.tensor([s.top_p for s in sampling], device=dev)
            self.key[lanes] = torch.tensor([s.key for s in sampling], device=dev)
            self.count[lanes] = 0
            first = sample_tokens(logits, self.greedy[lanes], self.temperature[lanes], self.top_p[lanes],
                                  self.key[lanes], self.count[lanes])
            self.count[lanes] = 1
            self.tokens[lanes] = first
        return first.tolist()

    def release(self, lane: int) -> None:
        """The lane's sequence is done: the windows no longer need to cover it (its prompt stays there to
        copy until the lane is reused or the ring reaches it: _holder)."""
        self.filled[lane] = 0

    # ------------------------------------------------------------ decode

    def _step_body(self, sampled: bool, window: int) -> None:
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
        if sampled:
            nxt = sample_tokens(logits, self.greedy, self.temperature, self.top_p, self.key, self.count)
        else:
            nxt = logits.argmax(dim=-1)
        self.tokens.copy_(nxt)
        self.positions.add_(1).clamp_(max=self.max_position)  # idle lanes must not run off the embeddings
        self.count.add_(1)
        self.write_at.add_(1).remainder_(self.lane_len)

    def window_for(self) -> int:
        """The smallest window holding every busy lane and the position written now."""
        need = max(self.filled) + 1
        return next(w for w in self.windows if w >= need)

    def launch(self, owners: dict | None = None, sampled: bool = False) -> StepTokens:
        """Queue one decode step for every lane (idle lanes too: their tokens are ignored) and return at
        once; the tokens come with .tokens(), or .tokens_of() for the lanes still held by `owners`
        (the caller's lane -> sequence map at launch). The caller may launch the next step before reading them
        (what it then does on the host overlaps the device's step), but reads each step before
        launching the one after next."""
        window = self.window_for()
        with torch.inference_mode():
            graph = self._graph(sampled, window) if self.use_graphs else None
            if graph is not None:
                graph.replay()
            else:
                self._step_body(sampled, window)
            host = self._host[self._flip]
            self._flip ^= 1
            host.copy_(self.tokens, non_blocking=host.is_pinned())
            event = None
            if self.device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
        self.ring_pos = (self.ring_pos + 1) % self.lane_len
        self.filled = [min(f + 1, self.lane_len) if f else 0 for f in self.filled]
        self.stats["steps"] += 1
        self.stats["window_steps"][window] = self.stats["window_steps"].get(window, 0) + 1
        return StepTokens(host, event, owners or {})

    def step(self, sampled: bool = False) -> list[int]:
        """One decode step, waited for: every lane's next token."""
        return self.launch(sampled=sampled).tokens()

    def capture_all(self, sampled_too: bool = True) -> None:
        """Capture every window's graphs now (serve: at load, not on a request's path)."""
        if self.use_graphs:
            for sampled in (False, True) if sampled_too else (False,):
                for window in self.windows:
                    self._graph(sampled, window)

    def _graph(self, sampled: bool, window: int):
        key = (sampled, window)
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
                    self._step_body(sampled, window)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: serve captures a new model's graphs while the old one decodes on its thread
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                self._step_body(sampled, window)
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
