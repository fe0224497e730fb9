"""The streaming path (serve): iteration-level batching, token-granular deltas, stop, n, seeds, cancellation."""

import asyncio
import time

from raywiz.inference import SamplingParams


async def collect(engine, prompt, params, on_delta=None):
    texts, reasons, tokens = {}, {}, {}
    async for deltas in engine.stream(prompt, params):
        for d in deltas:
            texts[d.index] = texts.get(d.index, "") + d.text
            if d.finish_reason:
                reasons[d.index] = d.finish_reason
                tokens[d.index] = d.token_ids
        if on_delta:
            on_delta(deltas)
    return texts, reasons, tokens


def test_stream_greedy_equals_offline_generate(engine):
    prompt, params = "def add(a, b):", SamplingParams(max_tokens=20)
    (offline,) = engine.generate([prompt], params)[0]
    pieces = []
    texts, reasons, tokens = asyncio.run(collect(engine, prompt, params, pieces.append))
    assert tokens[0] == offline.token_ids
    assert texts[0] == offline.text
    assert reasons[0] == offline.finish_reason
    assert len(pieces) > 1  # it streamed, not one lump at the end


def test_request_arriving_mid_batch_starts_before_that_batch_ends(engine):
    async def scenario():
        order, long_seen = [], asyncio.Event()

        def on_long(deltas):
            if any(d.text for d in deltas):
                long_seen.set()

        async def long():
            await collect(engine, "import os\n", SamplingParams(max_tokens=300), on_long)
            order.append("long")

        async def short():
            await long_seen.wait()  # the long request is decoding: this one arrives mid-batch
            await collect(engine, "x = ", SamplingParams(max_tokens=4))
            order.append("short")

        await asyncio.gather(long(), short())
        return order

    assert asyncio.run(scenario()) == ["short", "long"]


def test_stop_sequence_n_choices_and_sampling(engine):
    prompt = "class Stack:\n"
    texts, _, _ = asyncio.run(collect(engine, prompt, SamplingParams(max_tokens=24)))
    full = texts[0]
    stop = full[4:7]
    cut, reasons, _ = asyncio.run(collect(engine, prompt, SamplingParams(max_tokens=24, stop=(stop,))))
    assert cut[0] == full[: full.find(stop)] and reasons[0] == "stop"
    sampled, reasons, tokens = asyncio.run(collect(engine, prompt, SamplingParams(n=3, temperature=1.0,
                                                                                  max_tokens=12)))
    assert sorted(sampled) == [0, 1, 2] and set(reasons.values()) <= {"stop", "length"}
    assert len({tuple(t) for t in tokens.values()}) > 1


def test_client_that_goes_away_is_cancelled_and_freed(engine):
    async def leave_early():
        got = 0
        async for deltas in engine.stream("def f():", SamplingParams(max_tokens=400)):
            got += sum(1 for d in deltas if d.text)
            if got >= 2:
                break  # the client went away: the generator's finally cancels the request
        return got

    assert asyncio.run(leave_early()) >= 2
    deadline = time.monotonic() + 10
    while engine.scheduler.busy_lanes and time.monotonic() < deadline:  # freed at the decode thread's next step
        time.sleep(0.01)
    assert engine.scheduler.busy_lanes == 0
    # The engine still serves the next request (its slot was freed, not leaked).
    texts, reasons, _ = asyncio.run(collect(engine, "x", SamplingParams(max_tokens=3)))
    assert reasons[0] in ("stop", "length")


def test_a_seed_fixes_sampled_text_alone_and_in_a_shared_batch(engine):
    def params(seed, n=1):
        return SamplingParams(n=n, temperature=1.0, max_tokens=16, seed=seed)

    (alone7, alone8) = [asyncio.run(collect(engine, "def f(x):", params(s)))[2][0] for s in (7, 8)]
    assert asyncio.run(collect(engine, "def f(x):", params(7)))[2][0] == alone7
    assert alone7 != alone8

    async def together():  # one batch: seeded requests beside each other and beside an unseeded one
        return await asyncio.gather(*(collect(engine, prompt, p) for prompt, p in
                                      [("def f(x):", params(7)), ("def f(x):", params(8)),
                                       ("class A:", params(None)), ("def f(x):", params(7, n=2))]))

    seven, eight, _, pair = [tokens for _, _, tokens in asyncio.run(together())]
    assert seven[0] == alone7 and eight[0] == alone8
    assert pair[0] == alone7 and pair[1] != pair[0]  # choice 0 repeats the seed's text; choice 1 differs


def test_a_failed_admission_fails_every_stream_in_it_and_hangs_none(engine, monkeypatch):
    """A row ending at max_tokens hands its lane to a waiting request while its last step is in flight;
    if that admission fails, every request in the loop gets the error, the one whose row had handed its
    lane on included (none waits forever for a token that will not come), and the decode thread serves
    the next request."""
    lanes = engine.start_streaming().decoder.slots
    assert engine.generate(["def f("], SamplingParams(max_tokens=240))[0][0].finish_reason == "length"
    decoder, admit = engine.scheduler.decoder, engine.scheduler.decoder.admit
    failing_prompt, failed = tuple(engine.encode("x = ")), []

    def failing_admit(entries, *a, **k):
        if any(ids == failing_prompt for _, ids, _ in entries):
            failed.append(len(entries))
            raise RuntimeError("out of memory (test)")
        return admit(entries, *a, **k)

    monkeypatch.setattr(decoder, "admit", failing_admit)

    async def scenario():
        started = asyncio.Event()
        short = SamplingParams(max_tokens=120)
        long = SamplingParams(n=lanes - 1, max_tokens=240)  # greedy: no lane frees early (no EOS, below)

        async def waiting():
            await started.wait()  # every lane is busy: this request waits for the short row's lane
            return await collect(engine, "x = ", SamplingParams(max_tokens=4))

        return await asyncio.wait_for(asyncio.gather(
            collect(engine, "import os\n", short, lambda deltas: started.set()), collect(engine, "def f(", long),
            waiting(), return_exceptions=True), 30)

    results = asyncio.run(scenario())
    assert failed == [1]
    assert all(isinstance(r, RuntimeError) and "generation failed" in str(r) for r in results), results
    monkeypatch.setattr(decoder, "admit", admit)
    assert asyncio.run(collect(engine, "x = ", SamplingParams(max_tokens=4)))[1] == {0: "length"}
