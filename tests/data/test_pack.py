"""Packing: rows are full, nothing is lost, and a packed row computes what each sample computes alone."""

import random

import pytest
import torch
import torch.nn.functional as F

from raywiz.data.pack import IGNORE_INDEX, build_row, first_fit_decreasing, pack
from raywiz.modeling import build_model


def _samples(n, seed=0, vocab=2048):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(5, 60)
        ids = [rng.randrange(2, vocab) for _ in range(length)]
        prompt = rng.randint(1, length - 1)
        out.append((f"s{i}", ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def test_first_fit_decreasing_respects_capacity_and_keeps_everything():
    lengths = [random.Random(1).randint(1, 100) for _ in range(200)]
    bins = first_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(200))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert len(bins) <= 1.25 * sum(lengths) / 128 + 1  # FFD is near-optimal
    with pytest.raises(ValueError):
        first_fit_decreasing([129], 128)


def test_packed_rows_layout():
    samples = _samples(30)
    rows = pack(samples, 128, pad_id=1)
    assert sorted(s for r in rows for s in r["sample_ids"]) == sorted(s for s, _, _ in samples)
    for r in rows:
        assert len(r["input_ids"]) == len(r["labels"]) == len(r["position_ids"]) == 128
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        # every sample (and the padding block) restarts positions and masks its first label
        assert all(r["labels"][i] == IGNORE_INDEX for i in starts)
        assert r["n_tokens"] == sum(len(ids) for s, ids, _ in samples if s in r["sample_ids"])


@pytest.mark.parametrize("model_name", ["tiny-gpt-bigcode", "tiny-llama"])
def test_packed_row_loss_equals_each_sample_alone(model_name):
    torch.manual_seed(0)
    model = build_model(model_name, dtype=torch.float32, attn_implementation="sdpa").eval()
    samples = _samples(4, seed=3)
    row = build_row(samples, 256, pad_id=1)
    ids = torch.tensor([row["input_ids"]])
    pos = torch.tensor([row["position_ids"]])
    labels = torch.tensor([row["labels"]])
    with torch.no_grad():
        # use_cache=False: transformers only reads packing from position_ids when no KV cache is built
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        packed = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="none")
        offset = 0
        for _, s_ids, s_labels in samples:
            n = len(s_ids)
            alone = model(input_ids=torch.tensor([s_ids])).logits
            ref = F.cross_entropy(alone[0, :-1], torch.tensor(s_labels[1:]), ignore_index=IGNORE_INDEX, reduction="none")
            # packed[offset + t] predicts token offset+t+1, i.e. the sample's token t+1
            got = packed[offset : offset + n - 1]
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
            offset += n
        # and a row that lets samples see each other (no position restarts) differs: the test can fail
        leaky = model(input_ids=ids).logits
        assert not torch.allclose(leaky[0, 60:120], logits[0, 60:120], atol=1e-3)
