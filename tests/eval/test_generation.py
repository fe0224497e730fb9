"""Eval's generation on raywiz.inference, on a tiny random model: the transformers engine (length-sorted
static-cache buckets), the openai engine against an OpenAI-compatible server on 127.0.0.1, and Ray actors."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from raywiz.inference import EngineSpec, SamplingParams, make_engine

pytestmark = pytest.mark.slow


def generate_texts(engine, prompts, params):
    return [[c.text for c in row] for row in engine.generate(prompts, params)]


PROMPTS = ["def add(a, b):\n", "# sort a list\n", "Below is an instruction that describes a task.\n\n### Response:"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from raywiz.modeling import build_model, load_tokenizer

    path = tmp_path_factory.mktemp("tiny-model")
    build_model("tiny-gpt-bigcode", seed=0).save_pretrained(path)
    load_tokenizer("tiny-gpt-bigcode").save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return make_engine(EngineSpec(backend="transformers", model=tiny_model_dir, max_batch_size=2))


def test_batched_greedy_matches_one_by_one(engine):
    params = SamplingParams(max_tokens=12)
    batched = generate_texts(engine, PROMPTS, params)
    engine.max_batch_size = 1
    try:
        single = generate_texts(engine, PROMPTS, params)
    finally:
        engine.max_batch_size = 2
    assert batched == single
    assert all(len(texts) == 1 and texts[0] for texts in batched)


def test_sampling_returns_n_per_prompt_and_respects_seed(engine):
    params = SamplingParams(n=3, temperature=1.0, top_p=1.0, max_tokens=8, seed=7)
    a = generate_texts(engine, PROMPTS[:2], params)
    b = generate_texts(engine, PROMPTS[:2], params)
    assert [len(x) for x in a] == [3, 3] and a == b
    assert len(set(a[0])) > 1  # samples differ from each other


class _CompletionsHandler(BaseHTTPRequestHandler):
    engine = None
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body, self.headers.get("Authorization")))
        params = SamplingParams(temperature=body["temperature"], n=body["n"], max_tokens=body["max_tokens"])
        texts = generate_texts(self.engine, [body["prompt"]], params)[0]
        reply = json.dumps({"choices": [{"index": i, "text": t} for i, t in enumerate(texts)]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def completions_server(engine):
    _CompletionsHandler.engine = engine
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CompletionsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_openai_backend_against_a_local_server(engine, completions_server, monkeypatch):
    monkeypatch.setenv("RAYWIZ_TEST_KEY", "sk-test")
    client = make_engine(EngineSpec(backend="openai", model="tiny", api_key_env="RAYWIZ_TEST_KEY",
                                    base_url=completions_server))
    params = SamplingParams(max_tokens=10, n=2)
    assert generate_texts(client, PROMPTS, params) == generate_texts(engine, PROMPTS, params)
    path, body, auth = _CompletionsHandler.requests[-1]
    assert path == "/v1/completions" and body["model"] == "tiny" and auth == "Bearer sk-test"


def test_ray_actors_generate_in_prompt_order(ray_local, engine, completions_server):
    """Actors hold any engine; here each one talks to the local server (no model load per actor)."""
    from raywiz.inference.ray_pool import generate_on_ray

    params = SamplingParams(max_tokens=10)
    spec = EngineSpec(backend="openai", model="tiny", base_url=completions_server, api_key_env=None)
    out = generate_on_ray(PROMPTS, spec, params, num_workers=2, num_cpus=0.5)
    assert [[c.text for c in row] for row in out] == generate_texts(engine, PROMPTS, params)
