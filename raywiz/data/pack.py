"""Pack tokenized samples into fixed-length rows, with no attention across samples.

Each row carries ``position_ids`` that restart at 0 for every sample. transformers reads a restart
of position_ids (with no attention_mask) as a packed-sequence boundary and builds a block-diagonal
causal mask (masking_utils.find_packed_sequence_indices), so a packed row computes exactly what each
sample would alone. Padding at the end of a row forms its own block, labelled -100.
"""

from __future__ import annotations

from typing import Sequence

from raywiz.data.tokenize import IGNORE_INDEX


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of sample indices, each with total length <= capacity. Deterministic: ties keep input order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sample of {n} tokens does not fit a row of {capacity}")
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def build_row(samples: list[tuple[str, list[int], list[int]]], seq_len: int, pad_id: int) -> dict:
    """One packed row from (sample_id, input_ids, labels) triples, padded to seq_len."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for _, ids, labs in samples:
        input_ids += ids
        # A sample's first token can't be predicted from inside its sample.
        labels += [IGNORE_INDEX] + list(labs[1:])
        position_ids += range(len(ids))
    n_tokens = len(input_ids)
    pad = seq_len - n_tokens
    input_ids += [pad_id] * pad
    labels += [IGNORE_INDEX] * pad
    position_ids += range(pad)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "n_tokens": n_tokens,
        "n_label_tokens": sum(1 for x in labels if x != IGNORE_INDEX),
        "sum_sq_len": sum(len(ids) ** 2 for _, ids, _ in samples),  # attention FLOPs grow with it
        "sample_ids": [sid for sid, _, _ in samples],
    }


def pack(samples: list[tuple[str, list[int], list[int]]], seq_len: int, pad_id: int) -> list[dict]:
    """First-fit-decreasing packing of one window of samples into rows of seq_len tokens."""
    bins = first_fit_decreasing([len(ids) for _, ids, _ in samples], seq_len)
    return [build_row([samples[i] for i in sorted(b)], seq_len, pad_id) for b in bins]


def one_per_row(samples: list[tuple[str, list[int], list[int]]], seq_len: int, pad_id: int) -> list[dict]:
    """No packing: each sample padded to seq_len on its own."""
    return [build_row([s], seq_len, pad_id) for s in samples]
