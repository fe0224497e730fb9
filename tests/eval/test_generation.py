"""Generation backends on a tiny random model: local HF (batched), an OpenAI-compatible HTTP server
on 127.0.0.1, and Ray actors."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from raywiz.eval.generation import BackendSpec, SamplingParams, make_generator

pytestmark = pytest.mark.slow
PROMPTS = ["def add(a, b):\n", "# sort a list\n", "Below is an instruction that describes a task.\n\n### Response:"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from raywiz.modeling import build_model, load_tokenizer

    path = tmp_path_factory.mktemp("tiny-model")
    build_model("tiny-gpt-bigcode", seed=0).save_pretrained(path)
    load_tokenizer("tiny-gpt-bigcode").save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def hf_generator(tiny_model_dir):
    return make_generator(BackendSpec(backend="hf", model=tiny_model_dir, batch_size=2))


def test_hf_batched_greedy_matches_one_by_one(hf_generator):
    params = SamplingParams(greedy=True, max_new_tokens=12)
    batched = hf_generator.generate(PROMPTS, params)
    hf_generator.batch_size = 1
    try:
        single = hf_generator.generate(PROMPTS, params)
    finally:
        hf_generator.batch_size = 2
    assert batched == single
    assert all(len(texts) == 1 and texts[0] for texts in batched)


def test_hf_sampling_returns_n_per_prompt_and_respects_seed(hf_generator):
    params = SamplingParams(greedy=False, n=3, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=7)
    a = hf_generator.generate(PROMPTS[:2], params)
    b = hf_generator.generate(PROMPTS[:2], params)
    assert [len(x) for x in a] == [3, 3] and a == b
    assert len(set(a[0])) > 1  # samples differ from each other


class _CompletionsHandler(BaseHTTPRequestHandler):
    generator = None
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body, self.headers.get("Authorization")))
        params = SamplingParams(greedy=body["temperature"] == 0, n=body["n"], max_new_tokens=body["max_tokens"])
        texts = self.generator.generate([body["prompt"]], params)[0]
        reply = json.dumps({"choices": [{"index": i, "text": t} for i, t in enumerate(texts)]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def completions_server(hf_generator):
    _CompletionsHandler.generator = hf_generator
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CompletionsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_openai_backend_against_a_local_server(hf_generator, completions_server, monkeypatch):
    monkeypatch.setenv("RAYWIZ_TEST_KEY", "sk-test")
    client = make_generator(BackendSpec(backend="openai", model="tiny", api_key_env="RAYWIZ_TEST_KEY",
                                        base_url=completions_server))
    params = SamplingParams(greedy=True, max_new_tokens=10, n=2)
    assert client.generate(PROMPTS, params) == hf_generator.generate(PROMPTS, params)
    path, body, auth = _CompletionsHandler.requests[-1]
    assert path == "/v1/completions" and body["model"] == "tiny" and auth == "Bearer sk-test"


def test_ray_actors_generate_in_prompt_order(ray_local, hf_generator, completions_server):
    """Actors hold any backend; here each one talks to the local server (no model load per actor)."""
    from raywiz.eval.generation.ray_pool import generate_with_ray

    params = SamplingParams(greedy=True, max_new_tokens=10)
    spec = BackendSpec(backend="openai", model="tiny", base_url=completions_server, api_key_env=None)
    out = generate_with_ray(PROMPTS, spec, params, num_workers=2, cpus_per_worker=0.5, chunk_size=1)
    assert out == hf_generator.generate(PROMPTS, params)
