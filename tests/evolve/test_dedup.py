import numpy as np

from raywiz.evolve.dedup import Deduplicator, MinHasher, jaccard_estimate, shingles

A = ("Write a Python function that merges two sorted lists of integers into a single sorted list without using "
     "the built-in sort function and explain the time complexity of the approach")


def test_minhash_estimates_jaccard():
    hasher = MinHasher(num_perm=256, seed=3, shingle=3)
    b = A.replace("explain the time complexity", "describe the memory use")
    sa, sb = shingles(A, 3), shingles(b, 3)
    true = len(sa & sb) / len(sa | sb)
    est = jaccard_estimate(hasher.signature(A), hasher.signature(b))
    assert abs(est - true) < 0.12
    assert np.array_equal(hasher.signature(A), MinHasher(num_perm=256, seed=3, shingle=3).signature(A))


def test_exact_near_and_distinct():
    d = Deduplicator(threshold=0.8)
    assert d.offer("a", A) is None
    assert d.offer("b", "  " + A.upper() + " ") == ("exact", "a")
    assert d.offer("c", A + " carefully") == ("near", "a")  # one extra word
    assert d.offer("d", "Write a SQL query listing customers who ordered more than three times last year") is None
    assert d.offer("e", "Completely unrelated: sort a list of strings by length then alphabetically") is None


def test_exact_only_and_off():
    exact_only = Deduplicator(near=False)
    assert exact_only.offer("a", A) is None
    assert exact_only.offer("c", A + " carefully") is None
    off = Deduplicator(exact=False, near=False)
    assert off.offer("a", A) is None and off.offer("b", A) is None
