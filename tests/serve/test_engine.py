"""The batching engine on a real tiny model: same answers as `generate`, limits, stop sequences, n."""

from __future__ import annotations

import asyncio

import pytest
import torch

from raywiz.serve.engine import BatchEngine, PerRowSampling, RowState, SamplingParams


@pytest.fixture(scope="module")
def tiny():
    from raywiz.modeling import build_model, load_tokenizer

    model = build_model("tiny-gpt-bigcode", seed=0).eval()
    return model, load_tokenizer("tiny-gpt-bigcode")


async def _collect(engine, prompt_ids, params):
    texts, reasons, tokens = [""] * params.n, [None] * params.n, [0] * params.n
    async for events in engine.stream(prompt_ids, params):
        for ev in events:
            assert ev.kind != "error", ev.text
            if ev.kind == "delta":
                texts[ev.index] += ev.text
            else:
                reasons[ev.index], tokens[ev.index] = ev.finish_reason, ev.completion_tokens
    return texts, reasons, tokens


def test_batched_greedy_matches_generate_and_respects_max_tokens(tiny):
    model, tok = tiny
    prompts = ["def add(a, b):", "import os\nprint(", "x = 1"]
    engine = BatchEngine(model, tok, max_batch_size=8, batch_wait_s=0.2)

    async def all_at_once():
        return await asyncio.gather(*[
            _collect(engine, tok(p)["input_ids"], SamplingParams(max_tokens=4 + 3 * i)) for i, p in enumerate(prompts)
        ])

    results = asyncio.run(all_at_once())
    engine.close()
    assert engine.stats.largest_batch == 3  # decoded together, left-padded
    for i, (prompt, (texts, reasons, tokens)) in enumerate(zip(prompts, results)):
        ids = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=4 + 3 * i, do_sample=False, pad_token_id=tok.pad_token_id)
        expected = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert texts[0] == expected
        assert reasons[0] == "length" and tokens[0] == 4 + 3 * i


def test_n_choices_and_sampling_rows_share_a_batch(tiny):
    model, tok = tiny
    engine = BatchEngine(model, tok, max_batch_size=8, batch_wait_s=0.2)
    ids = tok("def f(x):")["input_ids"]

    async def mixed():
        return await asyncio.gather(
            _collect(engine, ids, SamplingParams(max_tokens=6, n=2)),
            _collect(engine, ids, SamplingParams(max_tokens=6, temperature=1.5, n=3)),
        )

    (greedy, _, _), (sampled, reasons, _) = asyncio.run(mixed())
    engine.close()
    assert engine.stats.largest_batch == 5
    assert greedy[0] == greedy[1] != ""  # greedy rows stay greedy next to sampled ones
    assert len(sampled) == 3 and reasons == ["length"] * 3


class _Recorder:
    """Stands in for GenerationRequest: records what a row emits."""

    def __init__(self, params):
        self.params, self.events, self.cancelled = params, [], False

    def emit(self, event):
        self.events.append(event)


def _feed_text(row, tok, text):
    for token in tok(text, add_special_tokens=False)["input_ids"]:
        row.feed(token)
        if row.done:
            break


def test_stop_sequence_cuts_text_and_never_leaks_its_start(tiny):
    _, tok = tiny
    req = _Recorder(SamplingParams(max_tokens=100, stop=("\n\n", "STOP")))
    row = RowState(req, 0, tok, eos_ids={tok.eos_token_id})
    _feed_text(row, tok, "def f():\n    return 1\n\nprint(f())")
    deltas = "".join(e.text for e in req.events if e.kind == "delta")
    assert deltas == "def f():\n    return 1"
    assert req.events[-1].kind == "finish" and req.events[-1].finish_reason == "stop"


def test_eos_finishes_with_stop_and_length_with_length(tiny):
    _, tok = tiny
    req = _Recorder(SamplingParams(max_tokens=100))
    row = RowState(req, 0, tok, eos_ids={tok.eos_token_id})
    _feed_text(row, tok, "hello world")
    row.feed(tok.eos_token_id)
    row.feed(tok("more")["input_ids"][0])  # after EOS: ignored
    assert "".join(e.text for e in req.events if e.kind == "delta") == "hello world"
    assert [e.finish_reason for e in req.events if e.kind == "finish"] == ["stop"]

    req = _Recorder(SamplingParams(max_tokens=2))
    row = RowState(req, 0, tok, eos_ids={tok.eos_token_id})
    _feed_text(row, tok, "a b c d e f")
    assert [e.finish_reason for e in req.events if e.kind == "finish"] == ["length"]
    assert len(row.tokens) == 2


def test_per_row_sampling_greedy_rows_and_top_p():
    scores = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [1.0, 3.0, 2.9]])
    out = PerRowSampling([0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.5, 0.5], "cpu")(None, scores.clone())
    assert torch.isfinite(out[0]).tolist() == [False, True, False]  # greedy: argmax only
    assert torch.isfinite(out[1]).all()  # top_p 1: everything stays
    assert torch.isfinite(out[2]).tolist() == [False, True, False]  # top token alone has p 0.67 >= 0.5
    assert torch.isfinite(out[3]).tolist() == [False, True, True]  # top token has p 0.49: the next one is needed
