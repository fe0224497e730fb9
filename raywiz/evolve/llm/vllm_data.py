"""vLLM through Ray Data (``ray.data.llm``): self-hosted models over the cluster's GPUs.

Ray Data places the vLLM engine replicas (``vllm_concurrency`` of them, each with the engine
arguments given, e.g. ``tensor_parallel_size``) and streams requests through them; raywiz only turns
requests into rows and rows back into results. Needs ``pip install vllm`` on the GPU nodes; the
import is guarded so that the rest of raywiz works without it.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from raywiz.evolve.llm import LLMBackend, LLMRequest, LLMResult
from raywiz.inference.vllm_backend import vllm_available


def _sampling_params(params: dict) -> dict:
    # OpenAI names -> vLLM SamplingParams names (they agree on these).
    keep = ("temperature", "top_p", "max_tokens", "stop")
    return {k: params[k] for k in keep if k in params and params[k] is not None}


class VLLMDataBackend(LLMBackend):
    distributes_itself = True

    def __init__(self, model: str, batch_size: int = 64, concurrency: int = 1, engine_kwargs: dict | None = None):
        if not vllm_available():
            raise RuntimeError("evolve.llm.backend 'vllm' needs vLLM on the cluster: pip install vllm "
                               "(or use backend 'openai' against a vLLM server, or 'hf')")
        self.model = model
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.engine_kwargs = dict(engine_kwargs or {})

    @classmethod
    def from_config(cls, cfg) -> "VLLMDataBackend":
        return cls(cfg.model, cfg.batch_size or 64, cfg.vllm_concurrency, cfg.engine_kwargs)

    def _processor(self):
        from ray.data import llm as ray_llm

        config = ray_llm.vLLMEngineProcessorConfig(
            model_source=self.model,
            engine_kwargs=self.engine_kwargs,
            concurrency=self.concurrency,
            batch_size=self.batch_size,
        )
        build = getattr(ray_llm, "build_processor", None) or ray_llm.build_llm_processor  # renamed in Ray 2.5x
        return build(
            config,
            preprocess=lambda row: dict(
                key=row["key"], messages=row["messages"], sampling_params=row["sampling_params"],
                max_tokens=row["max_tokens"],
            ),
            postprocess=lambda row: dict(
                key=row["key"],
                text=row["generated_text"],
                prompt_tokens=int(row.get("num_input_tokens") or 0),
                completion_tokens=int(row.get("num_generated_tokens") or 0),
                max_tokens=row["max_tokens"],
            ),
        )

    def generate(self, requests: Sequence[LLMRequest],
                 on_result: Callable[[LLMResult], None] | None = None) -> Iterator[LLMResult]:
        import ray

        rows = [
            dict(key=r.key, messages=[dict(m) for m in r.messages], sampling_params=_sampling_params(r.params),
                 max_tokens=int(r.params.get("max_tokens", 0)))
            for r in requests
        ]
        if not rows:
            return
        dataset = self._processor()(ray.data.from_items(rows))
        for row in dataset.iter_rows():
            # vLLM's row output has no finish reason: a response that used every allowed token was cut.
            cut = row["max_tokens"] and row["completion_tokens"] >= row["max_tokens"]
            result = LLMResult(row["key"], text=row["text"], finish_reason="length" if cut else "stop",
                               prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"])
            if on_result is not None:
                on_result(result)
            yield result
