"""Stop sequences, one implementation for every place that cuts text at one: the transformers
backend's offline rows and streams, and benchmark post-processing (servers and vLLM cut on their own)."""

from __future__ import annotations

from typing import Sequence


def stop_index(text: str, stop: Sequence[str] | None, start: int = 0) -> int | None:
    """Where the earliest stop sequence begins in `text` (searching from `start`), or None."""
    hits = [i for i in (text.find(s, start) for s in stop or ()) if i >= 0]
    return min(hits) if hits else None


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """`text` up to (not including) its earliest stop sequence."""
    cut = stop_index(text, stop)
    return text if cut is None else text[:cut]


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many characters at the end of `text` may be the start of a stop sequence (a stream holds
    them back until the next tokens say whether they are)."""
    for k in range(min(len(text), max((len(s) for s in stop), default=0)), 0, -1):
        if any(s.startswith(text[-k:]) for s in stop):
            return k
    return 0
