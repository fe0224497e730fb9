"""A local model as evolve's LLM, on raywiz.inference's engine: transformers or vLLM.

One engine per evolve worker (a Ray actor with ``num_gpus_per_worker`` GPUs), built from an
``EngineSpec`` as eval's generation workers are: the ``vllm`` backend is the inference package's vLLM
adapter, and ``num_workers`` engine replicas share out the requests. Chat messages become a prompt
through raywiz.inference.chat_prompt (the tokenizer's chat template when it has one, else the template
the checkpoint was trained with: its ``ModelInfo.template``; WizardCoder's by default), so a raywiz checkpoint can evolve data
for the next round. Requests with equal sampling parameters go to the engine together (the
transformers engine decodes them in lanes refilled as rows end; vLLM schedules them itself).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from raywiz.evolve.llm import LLMBackend, LLMRequest, LLMResult
from raywiz.inference import EngineSpec, SamplingParams, chat_prompt, make_engine, prompt_template


def sampling_params(params: dict) -> SamplingParams:
    """OpenAI-style request parameters -> raywiz.inference's."""
    stop = params.get("stop") or ()
    return SamplingParams(n=1, temperature=float(params.get("temperature", 1.0)), top_p=float(params.get("top_p", 1.0)),
                          max_tokens=int(params.get("max_tokens", 256)), stop=(stop,) if isinstance(stop, str) else stop,
                          seed=params.get("seed", 0))


class LocalHFBackend(LLMBackend):
    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.engine = make_engine(spec)
        self.tokenizer = self.engine.tokenizer
        self.template = prompt_template(spec.model) or "wizardcoder"

    @classmethod
    def from_config(cls, cfg) -> "LocalHFBackend":
        return cls(cfg.engine_spec())

    def prompt_of(self, req: LLMRequest) -> str:
        return chat_prompt(list(req.messages), self.tokenizer, self.template)

    def generate(self, requests: Sequence[LLMRequest],
                 on_result: Callable[[LLMResult], None] | None = None) -> Iterator[LLMResult]:
        groups: dict[str, list[LLMRequest]] = {}  # one engine call per set of sampling parameters
        for r in requests:
            groups.setdefault(repr(sorted(r.params.items())), []).append(r)
        for group in groups.values():
            completions = self.engine.generate([self.prompt_of(r) for r in group], sampling_params(group[0].params))
            for req, (c,) in zip(group, completions):
                result = LLMResult(req.key, text=c.text, finish_reason=c.finish_reason, prompt_tokens=c.prompt_tokens,
                                   completion_tokens=len(c.token_ids))
                if on_result is not None:
                    on_result(result)
                yield result

    def close(self) -> None:
        self.engine.close()
