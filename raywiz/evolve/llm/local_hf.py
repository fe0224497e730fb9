"""A local transformers model as the LLM: batched ``generate``, for offline runs and small models.

Chat messages become a prompt through the tokenizer's chat template when it has one, else through
WizardCoder's Alpaca prompt (the template raywiz trains with), so a raywiz checkpoint can evolve
data for the next round. Requests are sorted by length before batching to waste less padding.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from raywiz.evolve.llm import LLMBackend, LLMRequest, LLMResult


class LocalHFBackend(LLMBackend):
    def __init__(self, model_name_or_path: str, batch_size: int = 16, dtype: str = "auto", device: str | None = None):
        import torch

        from raywiz.modeling import build_model, load_tokenizer, torch_dtype

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model_name_or_path)
        self.tokenizer.padding_side = "left"  # decoder-only batched generation pads on the left
        self.model = build_model(model_name_or_path, dtype=torch_dtype(dtype, self.device == "cuda"), seed=0)
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None)

    @classmethod
    def from_config(cls, cfg) -> "LocalHFBackend":
        return cls(cfg.model, cfg.batch_size, cfg.dtype)

    def prompt_of(self, req: LLMRequest) -> str:
        from raywiz.data.template import format_prompt

        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(list(req.messages), tokenize=False, add_generation_prompt=True)
        system = [m["content"] for m in req.messages if m["role"] == "system"]
        user = "\n\n".join(m["content"] for m in req.messages if m["role"] != "system")
        return format_prompt("\n\n".join(system + [user]))

    def generate(self, requests: Sequence[LLMRequest],
                 on_result: Callable[[LLMResult], None] | None = None) -> Iterator[LLMResult]:
        prompts = [self.prompt_of(r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: len(prompts[i]))
        # Requests with different sampling parameters can't share a generate call.
        groups: dict[str, list[int]] = {}
        for i in order:
            groups.setdefault(repr(sorted(requests[i].params.items())), []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                for result in self._generate_batch([requests[i] for i in batch], [prompts[i] for i in batch]):
                    if on_result is not None:
                        on_result(result)
                    yield result

    def _generate_batch(self, requests: list[LLMRequest], prompts: list[str]) -> list[LLMResult]:
        import torch

        params = requests[0].params
        max_new = int(params.get("max_tokens", 256))
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        if self.max_positions and enc["input_ids"].shape[1] + max_new > self.max_positions:
            keep = max(1, self.max_positions - max_new)  # keep the end of over-long prompts
            enc = {k: v[:, -keep:] for k, v in enc.items()}
        enc = {k: v.to(self.device) for k, v in enc.items()}
        temperature = float(params.get("temperature", 1.0))
        sampling = dict(do_sample=True, temperature=temperature, top_p=float(params.get("top_p", 1.0))) \
            if temperature > 0 else dict(do_sample=False)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=max_new, pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.tokenizer.eos_token_id, **sampling)
        new_tokens = out[:, enc["input_ids"].shape[1]:]
        results = []
        for req, row, mask in zip(requests, new_tokens, enc["attention_mask"]):
            ids = row.tolist()
            eos = self.tokenizer.eos_token_id
            finished = eos in ids
            if finished:
                ids = ids[: ids.index(eos)]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            for stop in params.get("stop") or []:
                if stop in text:
                    text, finished = text[: text.index(stop)], True
            results.append(LLMResult(req.key, text=text, finish_reason="stop" if finished else "length",
                                     prompt_tokens=int(mask.sum()), completion_tokens=len(ids)))
        return results
