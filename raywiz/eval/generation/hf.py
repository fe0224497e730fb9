"""Batched generation with transformers from a local checkpoint (or a tiny named config).

Prompts are sorted by length and batched with left padding; each of the n samples per prompt is
one row, so a batch mixes prompts and samples. Sampling is seeded per call for reproducibility.
"""

from __future__ import annotations

from raywiz.eval.generation import SamplingParams


class HFGenerator:
    def __init__(self, model: str, tokenizer: str | None = None, dtype: str = "auto", device: str | None = None,
                 trust_remote_code: bool = False, batch_size: int = 8):
        import torch

        from raywiz.modeling import build_model, load_tokenizer, torch_dtype

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model, tokenizer, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        self.model = build_model(model, dtype=torch_dtype(dtype, self.device == "cuda"),
                                 trust_remote_code=trust_remote_code)
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        import torch

        n = 1 if params.greedy else params.n  # greedy samples are identical: decode once, copy
        rows = [(i, prompts[i]) for i in range(len(prompts)) for _ in range(n)]
        rows.sort(key=lambda r: len(r[1]))
        outputs: list[list[str]] = [[] for _ in prompts]
        torch.manual_seed(params.seed)
        max_prompt = None
        if self.max_positions:
            max_prompt = max(1, self.max_positions - params.max_new_tokens)
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            self.tokenizer.truncation_side = "left"  # keep the end of an over-long prompt
            enc = self.tokenizer([p for _, p in batch], return_tensors="pt", padding=True,
                                 truncation=max_prompt is not None, max_length=max_prompt).to(self.device)
            kwargs = dict(max_new_tokens=params.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                          eos_token_id=self.tokenizer.eos_token_id)
            if params.greedy:
                kwargs.update(do_sample=False)
            else:
                kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            if params.stop:
                kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
            with torch.no_grad():
                out = self.model.generate(**enc, **kwargs)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for (i, _), text in zip(batch, texts):
                outputs[i].append(text)
        if n != params.n:
            outputs = [o * params.n for o in outputs]
        return outputs
