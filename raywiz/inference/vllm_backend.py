"""vLLM's offline engine behind raywiz.inference's interface, when vLLM is installed.

A thin adapter: raywiz's SamplingParams map one to one onto vLLM's (greedy is temperature 0, decoded
once and copied n times, as the transformers backend does). vLLM cannot be installed in raywiz's
CI or on its GPU test machine, so only the import guard, its message and the parameter mapping are
tested; the generation itself is vLLM's.
"""

from __future__ import annotations

from typing import Sequence

from raywiz.inference import Completion, EngineSpec, SamplingParams
from raywiz.inference.chat import LocalChat

INSTALL_HINT = ("the 'vllm' inference backend needs vLLM: pip install vllm (on the GPU nodes), or use "
                "backend 'transformers', or 'openai' against a vLLM server")


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def vllm_sampling_kwargs(params: SamplingParams) -> dict:
    """raywiz SamplingParams -> keyword arguments of vllm.SamplingParams."""
    return dict(n=1 if params.greedy else params.n, temperature=params.temperature,
                top_p=1.0 if params.greedy else params.top_p, max_tokens=params.max_tokens,
                stop=list(params.stop) or None, seed=params.seed)


def vllm_llm_kwargs(model: str, tokenizer: str | None = None, dtype: str = "auto", trust_remote_code: bool = False,
                    tensor_parallel_size: int = 1, vllm_args: dict | None = None) -> dict:
    """Keyword arguments of vllm.LLM; vllm_args add to them (and win where they name the same one)."""
    base = dict(model=model, tokenizer=tokenizer or model, dtype=dtype, trust_remote_code=trust_remote_code,
                tensor_parallel_size=tensor_parallel_size)
    return {**base, **(vllm_args or {})}


class VLLMEngine(LocalChat):
    def __init__(self, model: str, tokenizer: str | None = None, dtype: str = "auto",
                 trust_remote_code: bool = False, tensor_parallel_size: int = 1, vllm_args: dict | None = None):
        if not vllm_available():
            raise RuntimeError(INSTALL_HINT)
        from vllm import LLM

        self.llm = LLM(**vllm_llm_kwargs(model, tokenizer, dtype, trust_remote_code, tensor_parallel_size,
                                         vllm_args))

    @classmethod
    def from_spec(cls, spec: EngineSpec) -> "VLLMEngine":
        engine = cls(spec.model, spec.tokenizer, spec.dtype, spec.trust_remote_code, spec.tensor_parallel_size,
                     spec.vllm_args)
        engine.model_name = spec.model
        return engine

    @property
    def tokenizer(self):
        """The model's tokenizer (evolve renders chat messages with it)."""
        return self.llm.get_tokenizer()

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMParams

        results = self.llm.generate(list(prompts), VLLMParams(**vllm_sampling_kwargs(params)))
        out = []
        for r in results:
            row = [Completion(o.text, list(o.token_ids), "length" if o.finish_reason == "length" else "stop",
                              len(r.prompt_token_ids or [])) for o in r.outputs]
            out.append(row * params.n if params.greedy else row)
        return out

    def stream(self, prompt, params):
        raise NotImplementedError("the vllm backend is offline only; serve uses the transformers backend "
                                  "(or run vLLM's own server and point clients at it)")

    def close(self) -> None:
        pass
