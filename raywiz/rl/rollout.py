"""Rollouts: the policy's samples for a step's prompts, a group per prompt.

The contract every rollout implementation keeps (the GRPO loop sees only this):

- ``generate(prompts, group_size, seed)`` yields ``Sample``s in the order they finish, so the loop can
  hand each one to the reward scorer while the rest are still generating;
- ``sync_weights(model)`` makes the next ``generate`` sample from ``model``'s current weights and
  returns the seconds it took (0 when the rollouts already use the trained module itself, in place);
- ``close()`` frees what it holds (Ray actors, engines).

``GenerateRollouts`` is the simplest correct implementation: HF ``generate`` on the trained module
itself. It is the reference the faster ones are tested against and the naive baseline of
bench/rl_step.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch


@dataclass
class Sample:
    """One sampled response to one prompt of the step."""

    prompt_index: int  # which of the step's prompts it answers
    prompt_ids: list[int]
    response_ids: list[int]  # up to and including the EOS token when it stopped on one
    text: str  # the decoded response
    finish_reason: str  # "stop" (EOS or a stop sequence) or "length" (hit max_tokens)


class Rollouts(Protocol):
    def generate(self, prompts: list[str], group_size: int, seed: int) -> Iterator[Sample]: ...

    def sync_weights(self, model: torch.nn.Module) -> float: ...

    def close(self) -> None: ...


class GenerateRollouts:
    """HF ``generate`` on the trained module, one prompt's group at a time (in place: no copy)."""

    def __init__(self, model, tokenizer, max_tokens: int, temperature: float = 1.0, top_p: float = 1.0):
        self.model, self.tokenizer = model, tokenizer
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p

    def generate(self, prompts: list[str], group_size: int, seed: int) -> Iterator[Sample]:
        tok, eos = self.tokenizer, self.tokenizer.eos_token_id
        was_training = self.model.training
        self.model.eval()
        try:
            for index, prompt in enumerate(prompts):
                enc = tok(prompt, return_tensors="pt").to(self.model.device)
                torch.manual_seed(seed * 1_000_003 + index)  # generate samples with the global RNG
                with torch.no_grad():
                    out = self.model.generate(
                        **enc, do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0,
                        max_new_tokens=self.max_tokens, num_return_sequences=group_size,
                        pad_token_id=tok.pad_token_id, eos_token_id=eos)
                prompt_ids = enc.input_ids[0].tolist()
                for row in out[:, enc.input_ids.shape[1]:].tolist():
                    stop = row.index(eos) if eos in row else None
                    response = row if stop is None else row[: stop + 1]
                    text = tok.decode(response if stop is None else response[:-1])
                    yield Sample(index, prompt_ids, response, text, "length" if stop is None else "stop")
        finally:
            self.model.train(was_training)

    def sync_weights(self, model: torch.nn.Module) -> float:
        return 0.0  # generates with the trained module itself

    def close(self) -> None:
        pass
