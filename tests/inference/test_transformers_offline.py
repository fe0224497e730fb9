"""The offline path (eval, evolve): the slot decoder gives what unbatched generate gives."""

import pytest
import torch

from raywiz.inference import SamplingParams

PROMPTS = ["def add(a, b):", "import os\n", "class Stack:\n    def push(self, x):", "x", "print('hi')\n" * 3,
           "# sort a list\ndef sort(xs):"]


def unbatched_greedy(engine, prompt: str, max_new: int) -> list[int]:
    ids = engine.encode(prompt)
    with torch.inference_mode():
        out = engine.model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False,
                                    pad_token_id=engine.pad_id, eos_token_id=engine.eos_ids)
    row = out[0, len(ids):].tolist()
    return row[: row.index(engine.eos_ids[0])] if engine.eos_ids[0] in row else row


def test_greedy_lanes_equal_unbatched_generate_token_for_token(engine):
    params = SamplingParams(max_tokens=24)
    got = engine.generate(PROMPTS, params)  # 6 prompts, 4 lanes: two rows join as others end
    assert engine.max_batch_size < len(PROMPTS)
    for prompt, (completion,) in zip(PROMPTS, got):
        assert completion.token_ids == unbatched_greedy(engine, prompt, 24), prompt
        assert completion.text == engine.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        assert completion.prompt_tokens == len(engine.encode(prompt))
        assert completion.finish_reason == ("length" if len(completion.token_ids) == 24 else "stop")


def test_n_samples_seeded_reproducible_and_distinct(engine):
    params = SamplingParams(n=3, temperature=1.0, top_p=1.0, max_tokens=16, seed=7)
    a = engine.generate(PROMPTS[:2], params)
    b = engine.generate(PROMPTS[:2], params)
    c = engine.generate(PROMPTS[:2], params.with_(seed=8))
    assert [len(x) for x in a] == [3, 3]
    ids = lambda res: [[s.token_ids for s in row] for row in res]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert len({tuple(s.token_ids) for s in a[0]}) > 1  # three samples, not three copies


def test_greedy_n_copies_one_decode(engine):
    (row,) = engine.generate(PROMPTS[:1], SamplingParams(n=2, max_tokens=8))
    assert row[0].token_ids == row[1].token_ids


def test_stop_sequence_cuts_text_and_tokens(engine):
    (full,) = engine.generate(PROMPTS[:1], SamplingParams(max_tokens=24))[0]
    text = full[0].text if isinstance(full, list) else full.text
    assert len(text) > 6
    stop = text[3:6]
    (cut,) = engine.generate(PROMPTS[:1], SamplingParams(max_tokens=24, stop=(stop,)))[0]
    assert cut.text == text[: text.find(stop)]
    assert stop not in cut.text
    assert cut.finish_reason == "stop"
    assert len(cut.token_ids) <= len(full.token_ids)


def test_bad_params_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop=("",))


def test_attention_windows_change_no_token(engine):
    """Steps over a window of the ring (the last W positions) decode what whole-lane steps decode,
    with sequences joining while others run, and lanes wrapping round the ring."""
    from raywiz.inference.slot_decoding import LaneSampling, SlotDecoder

    ids = [engine.encode(p) for p in PROMPTS]

    def decode(windows):
        dec = SlotDecoder(engine.model, slots=3, lane_len=48, windows=windows)
        out, lanes, queue = {}, {}, list(range(len(ids)))
        while queue or lanes:
            entries = []
            for lane in range(dec.slots):
                if lane not in lanes and queue:
                    i = queue.pop(0)
                    lanes[lane], out[i] = i, []
                    entries.append((lane, ids[i], LaneSampling()))
            for (lane, _, _), token in zip(entries, dec.prefill(entries) if entries else []):
                out[lanes[lane]].append(token)
            tokens = dec.step()
            for lane, i in list(lanes.items()):
                out[i].append(tokens[lane])
                if len(out[i]) >= 12 + 4 * (i % 3):  # rows of different lengths: lanes free at different steps
                    del lanes[lane]
                    dec.release(lane)
        return out, dec.stats["window_steps"]

    whole, steps_whole = decode(None)
    windowed, steps_windowed = decode([8, 16, 32])
    assert windowed == whole
    assert set(steps_whole) == {48}
    assert len(steps_windowed) > 1 and min(steps_windowed) < 48  # the small windows did run
