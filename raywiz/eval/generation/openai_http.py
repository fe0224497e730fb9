"""An OpenAI-compatible HTTP endpoint: POST {base_url}/completions (or /chat/completions).

One request per prompt (servers differ in how they batch), `concurrency` at a time, retried with
backoff on connection errors, 429 and 5xx. The API key is read from an environment variable,
never from the job file.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from raywiz.eval.generation import SamplingParams

RETRIES = 4


class OpenAIGenerator:
    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 endpoint: str = "completions", concurrency: int = 8, timeout_s: float = 300.0):
        if endpoint not in ("completions", "chat"):
            raise ValueError(f"endpoint must be 'completions' or 'chat', got {endpoint!r}")
        self.url = base_url.rstrip("/") + ("/chat/completions" if endpoint == "chat" else "/completions")
        self.model = model
        self.endpoint = endpoint
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.concurrency = concurrency
        self.timeout_s = timeout_s

    def _body(self, prompt: str, params: SamplingParams) -> dict:
        body = {
            "model": self.model, "max_tokens": params.max_new_tokens, "n": 1 if params.greedy else params.n,
            "temperature": 0.0 if params.greedy else params.temperature, "seed": params.seed,
        }
        if not params.greedy:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop)[:4]  # the OpenAI API takes at most 4
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        for attempt in range(RETRIES + 1):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                detail = e.read()[:500].decode("utf-8", "replace")
                if e.code != 429 and e.code < 500 or attempt == RETRIES:
                    raise RuntimeError(f"{self.url}: HTTP {e.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == RETRIES:
                    raise RuntimeError(f"{self.url}: {e}") from None
            time.sleep(min(30.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")

    def _one(self, prompt: str, params: SamplingParams) -> list[str]:
        reply = self._post(self._body(prompt, params))
        choices = sorted(reply.get("choices", []), key=lambda c: c.get("index", 0))
        if self.endpoint == "chat":
            texts = [(c.get("message") or {}).get("content") or "" for c in choices]
        else:
            texts = [c.get("text", "") for c in choices]
        if params.greedy:
            texts = texts[:1] * params.n
        if len(texts) != params.n:
            raise RuntimeError(f"{self.url}: asked for {params.n} choices, got {len(texts)}")
        return texts

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda p: self._one(p, params), prompts))
