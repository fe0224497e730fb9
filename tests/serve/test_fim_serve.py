"""Fill-in-the-middle on /v1/completions (`suffix`), with the official `openai` SDK as the client of a real
serve (uvicorn on 127.0.0.1): the model's own FIM prompt (seen through echo + logprobs), streaming and
stop sequences as for other completions, and a 400 naming `suffix` for a model without FIM tokens."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from raywiz.artifacts import RunLayout, write_json_atomic, write_manifest
from tests.data.fim_tokenizer import STARCODER, save_fim_tokenizer
from tests.serve.conftest import LocalServer

openai = pytest.importorskip("openai")
PREFIX, SUFFIX = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"


def serve_run(run_dir: Path):
    """serve's /v1 API following one run directory (no Ray), as a context manager yielding (url, service)."""
    from contextlib import contextmanager

    from raywiz.serve.config import ServeConfig
    from raywiz.serve.openai_api import build_api
    from raywiz.serve.service import ModelService, ServiceSettings

    @contextmanager
    def running():
        cfg = ServeConfig(watch=False)
        service = ModelService(ServiceSettings(cfg, str(run_dir), str(run_dir.parent)))
        service.set_checkpoint(cfg.checkpoint)
        try:
            with LocalServer(build_api(service, cfg.limits)) as server:
                yield server.url
        finally:
            service.close()

    return running()


def fim_checkpoint(run_dir: Path, record: bool = True) -> str:
    """A tiny checkpoint whose tokenizer has StarCoder's FIM tokens (embeddings grown to match), with the
    tokens recorded in raywiz.json as train writes them (or not: then serve finds them in the tokenizer)."""
    from raywiz.modeling import build_model

    hf = Path(RunLayout(str(run_dir)).checkpoint(1).path) / "hf"
    save_fim_tokenizer(hf)
    model = build_model("tiny-gpt-bigcode", seed=1)
    model.resize_token_embeddings(2052)
    model.save_pretrained(hf)
    write_json_atomic(str(hf / "raywiz.json"), {"step": 1, "run": run_dir.name, "base_model": "tiny-gpt-bigcode",
                                                **({"fim": STARCODER.to_dict()} if record else {})})
    write_manifest(str(hf), kind="hf_export", meta={"step": 1})
    return str(hf)


@pytest.fixture(scope="module")
def fim_sdk(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fim-serve") / "runs" / "fim"
    hf = fim_checkpoint(run_dir)
    with serve_run(run_dir) as url:
        yield SimpleNamespace(client=openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0), hf=hf)


def check_fim_prompt_is_echoed(client) -> None:
    """The prompt the model saw, token by token: <fim_prefix> prefix <fim_suffix> suffix <fim_middle>."""
    r = client.completions.create(model="latest", prompt=PREFIX, suffix=SUFFIX, max_tokens=3, temperature=0,
                                  echo=True, logprobs=1)
    tokens = r.choices[0].logprobs.tokens
    assert [t for t in tokens if t.startswith("<fim_")][:3] == [STARCODER.prefix, STARCODER.suffix, STARCODER.middle]
    assert tokens[0] == STARCODER.prefix
    at_suffix, at_middle = tokens.index(STARCODER.suffix), tokens.index(STARCODER.middle)
    assert "".join(tokens[1:at_suffix]) == PREFIX and "".join(tokens[at_suffix + 1:at_middle]) == SUFFIX
    assert r.choices[0].text.startswith(STARCODER.prompt(PREFIX, SUFFIX))


def test_suffix_builds_the_models_fim_prompt(fim_sdk):
    check_fim_prompt_is_echoed(fim_sdk.client)


def test_suffix_streams_and_stops_as_other_completions(fim_sdk):
    client = fim_sdk.client
    whole = client.completions.create(model="latest", prompt=PREFIX, suffix=SUFFIX, max_tokens=12, temperature=0)
    text = whole.choices[0].text
    assert text and whole.choices[0].finish_reason == "length"
    streamed = client.completions.create(model="latest", prompt=PREFIX, suffix=SUFFIX, max_tokens=12, temperature=0,
                                         stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    # A stop sequence taken from the middle the model writes cuts it there, as for any completion.
    stop = text[len(text) // 2:][:2]
    stopped = client.completions.create(model="latest", prompt=PREFIX, suffix=SUFFIX, max_tokens=12, temperature=0,
                                        stop=[stop])
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].text == text[:text.index(stop)]
    # The same text with no suffix is a different prompt (no FIM tokens): its echo has none.
    plain = client.completions.create(model="latest", prompt=PREFIX, max_tokens=1, temperature=0, echo=True,
                                      logprobs=0)
    assert not any(t.startswith("<fim_") for t in plain.choices[0].logprobs.tokens)


def test_fim_tokens_found_in_the_tokenizer_without_raywiz_json(tmp_path):
    run_dir = tmp_path / "runs" / "hub"
    fim_checkpoint(run_dir, record=False)
    with serve_run(run_dir) as url:
        check_fim_prompt_is_echoed(openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0))


def test_suffix_is_refused_naming_it_for_a_model_without_fim_tokens(completion_server, fim_sdk):
    client = openai.OpenAI(base_url=completion_server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="latest", prompt=PREFIX, suffix=SUFFIX, max_tokens=4)
    assert e.value.body["param"] == "suffix" and "fill-in-the-middle" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:  # token ids have no text to put around the cursor
        fim_sdk.client.completions.create(model="latest", prompt=[5, 6, 7], suffix=SUFFIX, max_tokens=4)
    assert e.value.body["param"] == "suffix"
