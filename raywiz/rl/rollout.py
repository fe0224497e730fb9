"""Rollouts: the policy's samples for a step's prompts, a group per prompt.

The contract every rollout implementation keeps (the GRPO loop sees only this):

- ``generate(prompts, group_size, seed)`` yields ``Sample``s in the order they finish, so the loop can
  hand each one to the reward scorer while the rest are still generating;
- ``sync_weights(model)`` makes the next ``generate`` sample from ``model``'s current weights and
  returns the seconds it took (0 when the rollouts already use the trained module itself, in place);
- ``close()`` frees what it holds (Ray actors, engines).

``GenerateRollouts`` is the simplest correct implementation: HF ``generate`` on the trained module
itself. It is the reference the faster ones are tested against and the naive baseline of
bench/rl_step.py. ``EngineRollouts`` generates with the same module on raywiz's engine (continuous
batching, one prefill per group); ``ActorRollouts`` on Ray actors (several GPUs or nodes) that hold
their own engine and get the weights through Ray's object store after each update.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from raywiz.inference import Completion, EngineSpec, SamplingParams, make_engine
from raywiz.inference.seeded_sampling import row_seed


@dataclass
class Sample:
    """One sampled response to one prompt of the step."""

    prompt_index: int  # which of the step's prompts it answers
    prompt_ids: list[int]
    response_ids: list[int]  # up to and including the EOS token when it stopped on one
    text: str  # the decoded response
    finish_reason: str  # "stop" (EOS or a stop sequence) or "length" (hit max_tokens)
    sample_index: int = 0  # which of its prompt's group (engines: the choice its sampling noise is keyed by)

    @classmethod
    def of(cls, prompt_index: int, sample_index: int, prompt_ids: list[int], completion: Completion) -> "Sample":
        """A sample from an engine's completion: exactly the ids the engine sampled, EOS included."""
        eos = [] if completion.eos_token_id is None else [completion.eos_token_id]
        return cls(prompt_index, list(prompt_ids), list(completion.token_ids) + eos, completion.text,
                   completion.finish_reason, sample_index)


class Rollouts(Protocol):
    def generate(self, prompts: list[str], group_size: int, seed: int) -> Iterator[Sample]: ...

    def sync_weights(self, model: torch.nn.Module) -> float: ...

    def close(self) -> None: ...


class GenerateRollouts:
    """HF ``generate`` on the trained module, one prompt's group at a time (in place: no copy).
    temperature 0: greedy (tests compare the engine with it)."""

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
                sampling = (dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0)
                            if self.temperature > 0 else dict(do_sample=False))
                with torch.no_grad():
                    out = self.model.generate(
                        **enc, **sampling,
                        max_new_tokens=self.max_tokens, num_return_sequences=group_size,
                        pad_token_id=tok.pad_token_id, eos_token_id=eos)
                prompt_ids = enc.input_ids[0].tolist()
                for k, row in enumerate(out[:, enc.input_ids.shape[1]:].tolist()):
                    stop = row.index(eos) if eos in row else None
                    response = row if stop is None else row[: stop + 1]
                    text = tok.decode(response if stop is None else response[:-1], skip_special_tokens=True)  # as the engine
                    yield Sample(index, prompt_ids, response, text, "length" if stop is None else "stop", k)
        finally:
            self.model.train(was_training)

    def sync_weights(self, model: torch.nn.Module) -> float:
        return 0.0  # generates with the trained module itself

    def close(self) -> None:
        pass


def rollout_params(max_tokens: int, temperature: float, top_p: float, seed: int, prompt_index: int,
                   group_size: int, stop: tuple[str, ...] = ()) -> SamplingParams:
    """One prompt's sampling: its own seed (from the step's seed and the prompt's place in the step),
    so two prompts with the same text still get different groups, and the samples do not depend on
    which engine or batch they run in."""
    return SamplingParams(n=group_size, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                          seed=row_seed(seed, prompt_index), stop=tuple(stop))


class EngineRollouts:
    """raywiz's transformers engine on the trained module itself: continuous batching over every
    sample of the step, one prefill per group, samples yielded as each one ends. No second copy of
    the weights and no reload: the engine reads the module's parameters where the optimizer writes
    them (so sync_weights only drops the prompts the engine kept for sharing: ~0 s)."""

    def __init__(self, model, tokenizer, max_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 spec: EngineSpec | None = None, stop: tuple[str, ...] = ()):
        self.model, self.max_tokens, self.temperature, self.top_p = model, max_tokens, temperature, top_p
        self.stop = tuple(stop)
        self.engine = make_engine(spec or EngineSpec(), model=model, tokenizer=tokenizer)

    def generate(self, prompts: list[str], group_size: int, seed: int) -> Iterator[Sample]:
        prompt_ids = [self.engine.encode(p) for p in prompts]
        params = [rollout_params(self.max_tokens, self.temperature, self.top_p, seed, i, group_size, self.stop)
                  for i in range(len(prompts))]
        self.engine.weights_changed()  # the module may have been updated since the last call
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling: the policy the loss recomputes is the eval one
        try:
            for i, k, completion in self.engine.generate_each(prompt_ids, params):
                yield Sample.of(i, k, prompt_ids[i], completion)
        finally:
            self.model.train(was_training)

    def sync_weights(self, model: torch.nn.Module) -> float:
        if model is not self.model:
            raise ValueError("EngineRollouts generates with the module it was built on; got another one")
        started = time.perf_counter()
        self.engine.weights_changed()
        return time.perf_counter() - started

    def close(self) -> None:
        self.engine.close()


class RolloutWorker:
    """One Ray actor's engine (raywiz.inference.ray_pool.EngineActor runs it): generates groups for
    (prompt index, prompt, params, weights) items, each group as soon as its last sample ends."""

    def __init__(self, spec: EngineSpec):
        self.engine = make_engine(spec)
        self.weights_version = 0  # 0: the checkpoint the spec names

    def load_weights(self, version: int, state: dict) -> None:
        """The policy's weights, copied into the engine's own tensors (its CUDA graphs stay valid)."""
        if version != self.weights_version:
            with torch.no_grad():
                self.engine.model.load_state_dict(state)
            self.engine.weights_changed()
            self.weights_version = version

    def run(self, items: list) -> Iterator[list[Sample]]:
        import ray

        version, state_ref = items[0][3] if items else (0, None)
        if version != self.weights_version:  # a worker started after the last sync (a replaced one) catches up
            self.load_weights(version, ray.get(state_ref[0]))
        prompt_ids = [self.engine.encode(prompt) for _, prompt, _, _ in items]
        groups: dict[int, list[Sample]] = {}
        for j, k, completion in self.engine.generate_each(prompt_ids, [params for _, _, params, _ in items]):
            group = groups.setdefault(j, [])
            group.append(Sample.of(items[j][0], k, prompt_ids[j], completion))
            if len(group) == items[j][2].n:
                yield groups.pop(j)


class ActorRollouts:
    """`n_engines` Ray actors, each an engine on the checkpoint `spec` names (a GPU each when
    `num_gpus`). Prompts are split over them, each prompt's group on one actor (one prefill); groups
    stream back as they finish (a dead actor is replaced and its unanswered groups run again).
    sync_weights puts the state dict in Ray's object store once and every actor loads it."""

    def __init__(self, spec: EngineSpec, n_engines: int, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, num_gpus: float = 0, num_cpus: float = 1, stop: tuple[str, ...] = ()):
        from functools import partial

        from raywiz.inference.ray_pool import EnginePool

        self.max_tokens, self.temperature, self.top_p, self.stop = max_tokens, temperature, top_p, tuple(stop)
        self.pool = EnginePool(partial(RolloutWorker, spec), n_engines, num_cpus, num_gpus, name="rollout")
        self._weights: tuple[int, list | None] = (0, None)  # (version, [ObjectRef of the state dict])

    def generate(self, prompts: list[str], group_size: int, seed: int) -> Iterator[Sample]:
        items = [(i, prompt, rollout_params(self.max_tokens, self.temperature, self.top_p, seed, i, group_size,
                                           self.stop),
                  self._weights) for i, prompt in enumerate(prompts)]
        for groups in self.pool.run(items, item_key=lambda item: item[0], result_key=lambda g: g[0].prompt_index):
            for group in groups:
                yield from group

    def sync_weights(self, model: torch.nn.Module) -> float:
        import ray

        started = time.perf_counter()
        state = {name: tensor.detach().to("cpu") for name, tensor in model.state_dict().items()}
        version = self._weights[0] + 1
        self._weights = (version, [ray.put(state)])  # a list: actors get the reference, not a copy each call
        ray.get([actor.call.remote("load_weights", version, self._weights[1][0]) for actor in self.pool.start()])
        return time.perf_counter() - started

    def close(self) -> None:
        self.pool.close()
