"""vLLM's offline engine (continuous batching; the fast path on GPUs). Needs `pip install vllm`."""

from __future__ import annotations

from raywiz.eval.generation import SamplingParams


class VLLMGenerator:
    def __init__(self, model: str, tokenizer: str | None = None, dtype: str = "auto",
                 trust_remote_code: bool = False, tensor_parallel_size: int = 1):
        try:
            from vllm import LLM
        except ImportError as e:
            raise RuntimeError("eval.generation.backend 'vllm' needs vLLM: pip install vllm") from e
        self.llm = LLM(model=model, tokenizer=tokenizer or model, dtype=dtype,
                       trust_remote_code=trust_remote_code, tensor_parallel_size=tensor_parallel_size)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        from vllm import SamplingParams as VLLMParams

        n = 1 if params.greedy else params.n
        sampling = VLLMParams(
            n=n, temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p, max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None, seed=params.seed,
        )
        results = self.llm.generate(prompts, sampling)
        texts = [[o.text for o in r.outputs] for r in results]
        return [t * params.n if params.greedy else t for t in texts]
