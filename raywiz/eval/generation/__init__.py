"""Eval's generation on raywiz.inference: n texts per prompt, the new tokens only (never the prompt).

`generate_texts` runs one engine in this process; `ray_pool.generate_with_ray` spreads prompts over
Ray actors (one engine per GPU) built from the same `EngineSpec`.
"""

from __future__ import annotations

from raywiz.inference import EngineSpec, SamplingParams, make_engine  # noqa: F401  (eval's vocabulary)


def texts_of(completions) -> list[list[str]]:
    return [[c.text for c in row] for row in completions]


def generate_texts(engine, prompts: list[str], params: SamplingParams) -> list[list[str]]:
    return texts_of(engine.generate(prompts, params))
