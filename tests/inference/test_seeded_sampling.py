"""raywiz's per-lane sampling: seeded choices follow softmax(logits / temperature) within top-p, greedy
lanes take the argmax, and the hash in tensor ops equals the Python one."""

import torch

from raywiz.inference.seeded_sampling import mix32, mix32_tensor
from raywiz.inference.slot_decoding import sample_tokens


def test_hash_in_tensor_ops_equals_python():
    xs = [0, 1, 7, 2**31 - 1, 2**32 - 1, 123456789]
    assert mix32_tensor(torch.tensor(xs)).tolist() == [mix32(x) for x in xs]


def _sample(logits, rows, greedy=False, temperature=1.0, top_p=1.0):
    n = rows
    return sample_tokens(logits.repeat(n, 1), torch.full((n,), greedy), torch.full((n,), temperature),
                         torch.full((n,), top_p), torch.arange(n), torch.zeros(n, dtype=torch.long))


def test_sampled_tokens_follow_the_distribution_top_p_and_greedy():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = torch.log(probs)[None]
    freq = torch.bincount(_sample(logits, 20000), minlength=4).float() / 20000
    assert torch.allclose(freq, probs, atol=0.015), freq
    # top_p 0.8: 0.5 + 0.3 reach it, so only tokens 0 and 1 stay, renormalised to 5/8 and 3/8
    freq = torch.bincount(_sample(logits, 20000, top_p=0.8), minlength=4).float() / 20000
    assert freq[2:].sum() == 0 and abs(freq[0].item() - 0.625) < 0.015, freq
    # a low temperature sharpens towards the argmax; greedy lanes take it outright
    assert (_sample(logits, 2000, temperature=0.05) == 0).float().mean() > 0.99
    assert (_sample(logits, 50, greedy=True) == 0).all()


def test_the_same_key_and_count_give_the_same_token_whatever_the_batch():
    logits = torch.randn(6, 50)
    args = (torch.zeros(6, dtype=torch.bool), torch.ones(6), torch.ones(6), torch.arange(6) * 977, torch.arange(6))
    together = sample_tokens(logits, *args)
    alone = [sample_tokens(logits[i:i + 1], *(a[i:i + 1] for a in args)).item() for i in range(6)]
    assert together.tolist() == alone


def test_a_top_p_1_row_samples_the_same_with_or_without_the_top_p_sort():
    """Steps sort for top-p only when some lane asks for it; a lane without top-p must not notice
    (else its tokens would depend on what shares its batch)."""
    logits = torch.randn(6, 50)
    top_p = torch.tensor([1.0, 0.9, 1.0, 0.5, 1.0, 1.0])
    args = (torch.zeros(6, dtype=torch.bool), torch.full((6,), 0.7), top_p, torch.arange(6) * 31, torch.arange(6))
    mixed = sample_tokens(logits, *args, nucleus=True)
    plain = sample_tokens(logits, *args, nucleus=False)
    keep = top_p == 1.0
    assert mixed[keep].tolist() == plain[keep].tolist()
    alone = [sample_tokens(logits[i:i + 1], *(a[i:i + 1] for a in args), nucleus=bool(top_p[i] < 1)).item()
             for i in range(6)]
    assert mixed.tolist() == alone


def test_rows_sharing_one_prompts_logits_sample_as_if_each_had_its_own_copy():
    logits = torch.randn(3, 50)
    rows = torch.tensor([0, 0, 2, 1, 2, 0])
    args = (torch.tensor([False, True, False, False, False, False]), torch.tensor([0.7, 1.0, 1.3, 0.7, 0.9, 1.0]),
            torch.tensor([0.9, 1.0, 1.0, 0.5, 0.8, 1.0]), torch.arange(6) * 13, torch.arange(6))
    for nucleus in (True, False):
        shared = sample_tokens(logits, *args, nucleus=nucleus, rows=rows)
        assert shared.tolist() == sample_tokens(logits[rows], *args, nucleus=nucleus).tolist()
