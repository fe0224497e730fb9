"""n samples of one prompt share one prefill (pass@k at full speed), and sharing changes no token:
greedy n copies equal one, a seeded choice is the same alone, beside other prompts, or admitted after
its siblings (more samples than lanes)."""

import asyncio

from raywiz.inference import SamplingParams
from raywiz.inference.slot_decoding import LaneSampling, SlotDecoder

PROMPTS = ["def add(a, b):", "import os\n", "class Stack:\n    def push(self, x):"]


def _prefill_counts(engine, prompts, params):
    before = dict(engine.stats)
    out = engine.generate(prompts, params)
    return out, engine.stats["prefill_tokens"] - before["prefill_tokens"], \
        engine.stats["prefill_shared"] - before["prefill_shared"]


def test_a_group_of_n_runs_its_prompt_through_the_model_once(engine):
    prompt_len = len(engine.encode(PROMPTS[2]))
    # 10 samples, 4 lanes: six copies join only after the first ones end, and still copy the prompt
    params = SamplingParams(n=10, temperature=1.0, max_tokens=12, seed=3)
    (row,), tokens, shared = _prefill_counts(engine, PROMPTS[2:], params)
    assert engine.max_batch_size < 10
    assert len(row) == 10 and len({tuple(c.token_ids) for c in row}) > 1
    assert tokens == prompt_len
    assert shared == 9
    # two prompts x 3 samples: each prompt once
    _, tokens, shared = _prefill_counts(engine, PROMPTS[:2], params.with_(n=3))
    assert tokens == sum(len(engine.encode(p)) for p in PROMPTS[:2])
    assert shared == 4


def test_greedy_n_copies_are_identical_to_one(engine):
    params = SamplingParams(max_tokens=16)
    one = [c.token_ids for (c,) in engine.generate(PROMPTS, params)]
    many = engine.generate(PROMPTS, params.with_(n=5))
    assert [[c.token_ids for c in row] for row in many] == [[ids] * 5 for ids in one]

    async def streamed():  # serve's streams run the n greedy rows as n lanes, sharing one prefill
        tokens = {}
        async for deltas in engine.stream(PROMPTS[0], params.with_(n=5)):
            for d in deltas:
                if d.finish_reason:
                    tokens[d.index] = d.token_ids
        return tokens

    assert asyncio.run(streamed()) == {i: one[0] for i in range(5)}


def test_seeded_samples_are_the_same_alone_or_in_a_shared_batch(engine):
    params = SamplingParams(n=6, temperature=0.8, top_p=0.95, max_tokens=14, seed=11)
    ids = lambda rows: [[c.token_ids for c in row] for row in rows]  # noqa: E731
    shared = ids(engine.generate(PROMPTS, params))  # 18 rows through 4 lanes: copies admitted late
    alone = [ids(engine.generate([p], params))[0] for p in PROMPTS]
    assert shared == alone
    # choice 0 of six is the n=1 request's only choice: the same lane key, its own noise
    assert [row[0] for row in shared] == [ids(engine.generate([p], params.with_(n=1)))[0][0] for p in PROMPTS]
    assert len({tuple(t) for t in shared[0]}) > 1


def test_copies_read_the_prompt_from_a_released_lane_until_the_ring_reaches_it(engine):
    """The decoder level: a copy admitted after its source lane ended gets exactly the source's
    keys/values; once the ring has overwritten them the prompt is prefilled again."""
    ids = engine.encode(PROMPTS[2])
    dec = SlotDecoder(engine.model, slots=2, lane_len=len(ids) + 8)

    def run(lane, steps):
        tokens = [dec.prefill([(lane, ids, LaneSampling())])[0]]
        for _ in range(steps):
            tokens.append(dec.step()[lane])
        dec.release(lane)
        return tokens

    first = run(0, 4)
    assert dec.stats["prefill_tokens"] == len(ids)
    assert run(1, 4) == first and dec.stats["prefill_shared"] == 1  # copied from released lane 0
    for _ in range(8):  # the ring passes over both lanes' prompts
        dec.step()
    assert run(0, 4) == first and dec.stats["prefill_tokens"] == 2 * len(ids)


def test_the_benchs_varied_lengths_end_rows_at_realistic_varied_lengths():
    """bench/generation_throughput.py's varied_length rows: lognormal lengths of mean ~358 within the
    clip, many distinct (rows end at different steps), the same for the same seed."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "generation_throughput.py"
    spec = importlib.util.spec_from_file_location("generation_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lengths = bench.varied_max_tokens(4000, 512, 358.0)
    assert min(lengths) >= 16 and max(lengths) == 512
    assert 300 < sum(lengths) / len(lengths) < 358  # the clip at 512 takes a little off the mean
    assert len(set(lengths)) > 200
    assert lengths == bench.varied_max_tokens(4000, 512, 358.0)


def test_rows_admitted_in_groups_or_one_by_one_decode_the_same(engine, monkeypatch):
    """Offline batches admit waiting rows once several lanes are free (fewer prefill calls; a lane may
    idle a few steps): no token changes, whether rows end at varied lengths, mix top_p 1 and < 1, or
    run alone."""
    import raywiz.inference.transformers_backend as backend

    ids = [engine.encode(p) for p in PROMPTS] * 3
    # rows that end at different steps (n=2 rows end together), so lanes free up one or two at a time
    params = [SamplingParams(n=n, temperature=0.9, top_p=top_p, max_tokens=m, seed=5)
              for n, top_p, m in ((2, 1.0, 5), (1, 0.9, 13), (1, 1.0, 9), (1, 0.9, 6), (2, 1.0, 11), (1, 1.0, 7),
                                  (1, 0.9, 8), (1, 1.0, 12), (2, 0.9, 4))]

    def run(admit_fraction, rows=ids, each=params):
        monkeypatch.setattr(backend, "ADMIT_FRACTION", admit_fraction)
        before = engine.stats["admissions"]
        out = [[c.token_ids for c in row] for row in engine.generate_ids(rows, each)]
        return out, engine.stats["admissions"] - before

    one_by_one, admissions_one_by_one = run(10**6)  # admit as soon as a lane is free
    grouped, admissions_grouped = run(1)  # wait until every lane is free
    assert grouped == one_by_one
    assert admissions_grouped < admissions_one_by_one
    assert one_by_one == [run(10**6, [i], [p])[0][0] for i, p in zip(ids, params)]


def test_a_wave_ending_at_max_tokens_hands_its_lanes_on_while_its_last_step_runs(engine, monkeypatch):
    """pass@k's rows of a wave all end at max_tokens, known a step ahead: the next wave is admitted right
    after that last step is launched and before its tokens are read (the host plans the admission while
    the device runs the step), with no step wasted between waves, and no token changes."""
    from raywiz.inference import slot_decoding

    params = SamplingParams(n=4, temperature=0.9, top_p=0.95, max_tokens=6, seed=4)
    alone = [[c.token_ids for c in engine.generate([p], params)[0]] for p in PROMPTS]
    events = []
    launch, admit, read = SlotDecoder.launch, SlotDecoder.admit, slot_decoding.StepTokens.tokens

    def logged_launch(self, *a, **k):
        step = launch(self, *a, **k)
        step.name = f"step{sum(e[0] == 'launch' for e in events)}"
        events.append(("launch", step.name))
        return step

    def logged_admit(self, entries, *a, **k):
        events.append(("admit", len(entries)))
        return admit(self, entries, *a, **k)

    def logged_read(self):
        if hasattr(self, "name"):
            events.append(("read", self.name))
        return read(self)

    monkeypatch.setattr(SlotDecoder, "launch", logged_launch)
    monkeypatch.setattr(SlotDecoder, "admit", logged_admit)
    monkeypatch.setattr(slot_decoding.StepTokens, "tokens", logged_read)
    steps = engine.stats["decode_steps"]
    shared = [[c.token_ids for c in row] for row in engine.generate(PROMPTS, params)]  # 3 waves of 4 lanes
    assert shared == alone
    # 5 steps a wave (the first token comes from the admission), one wasted after the last wave only
    assert engine.stats["decode_steps"] - steps == 3 * 5 + 1
    admits = [i for i, e in enumerate(events) if e[0] == "admit"]
    assert [events[i][1] for i in admits] == [4, 4, 4]
    for i in admits[1:]:  # after the wave's last step was launched, before that step was read
        last = next(e for e in reversed(events[:i]) if e[0] == "launch")
        assert ("read", last[1]) in events[i + 1:]


def test_an_offline_batch_runs_the_prompts_waiting_next_in_the_same_prefill(engine):
    """pass@k's first wave fills the lanes with one prompt's samples; the prompts after it are run in
    that wave's forward too (the stash), so later waves only copy: one prefill forward in all."""
    params = SamplingParams(n=6, temperature=0.9, max_tokens=5, seed=2)
    engine.weights_changed()  # no prompt held from an earlier test: the first wave must run one
    before = dict(engine.stats)
    out = engine.generate(PROMPTS, params)  # 18 rows through 4 lanes: five admissions
    assert engine.stats["admissions"] - before["admissions"] >= 4
    assert engine.stats["prefill_forwards"] - before["prefill_forwards"] == 1
    assert engine.stats["prefill_tokens"] - before["prefill_tokens"] == sum(len(engine.encode(p)) for p in PROMPTS)
    assert engine.stats["prefill_shared"] - before["prefill_shared"] == 18 - 3
    assert [[c.token_ids for c in row] for row in out] == \
        [[c.token_ids for c in engine.generate([p], params)[0]] for p in PROMPTS]


def test_prompt_copies_move_whole_words_and_fall_back_to_elements_where_they_cannot():
    import torch

    from raywiz.inference.slot_decoding import _wide_pair

    ring = torch.zeros(2, 3, 1, 8, 16, dtype=torch.bfloat16)
    source = torch.randn(2, 4, 1, 5, 16, dtype=torch.bfloat16)
    wide_ring, wide_source = _wide_pair(ring, source)
    assert wide_ring.dtype == torch.int64 and wide_ring.shape[-1] == 4
    wide_ring[:, [1, 2], :, [3, 4]] = wide_source[:, [0, 3], :, [1, 2]]  # writes through to `ring`, bit for bit
    assert torch.equal(ring[:, 1, :, 3], source[:, 0, :, 1]) and torch.equal(ring[:, 2, :, 4], source[:, 3, :, 2])
    odd = torch.zeros(2, 3, 1, 8, 3, dtype=torch.bfloat16)  # 6-byte head_dim: no word view, the elements as they are
    assert _wide_pair(odd, odd)[0] is odd
    offset = torch.zeros(40, dtype=torch.bfloat16)[1:33].view(2, 16)  # a view not aligned to 8 bytes
    assert _wide_pair(offset, offset)[1] is offset
