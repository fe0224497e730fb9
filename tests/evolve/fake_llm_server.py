"""A small OpenAI-compatible chat/completions server for tests and benchmarks (127.0.0.1 only).

It answers like a very predictable LLM and can misbehave on purpose:

* ``latency_s``: every answer waits this long (the benchmark uses 200 ms);
* ``faults``: a script of failures handed to the next requests in arrival order, one each:
  ``"429"`` (with Retry-After), ``"500"``, ``"503"``, ``"timeout"`` (answers after ``hang_s``),
  ``"malformed"`` (a 200 whose body is not JSON), ``"truncated"`` (the body stops short of its
  Content-Length), ``"no_choices"`` (valid JSON, wrong shape);
* markers in a prompt make a deliberately bad answer, to exercise elimination: ``[[sorry]]``,
  ``[[punct]]``, ``[[badpy]]`` (Python that doesn't parse), ``[[template]]`` (an evolution that
  copies the prompt's words), ``[[same]]`` (an evolution with no new information);
* evolve's verify prompts (unit tests, candidate answers) get a sorting task: tests over
  ``solution(data)`` and an answer that sorts, unless the instruction carries a marker (see
  VERIFY_MARKERS): wrong or hostile answers, wrong, trivial or unsafe tests, no tests.

It counts every request by the same key raywiz's cache uses (model, messages, parameters), and which
of them got a complete answer, so tests can check that nothing is sent twice.

    python -m tests.evolve.fake_llm_server --latency 0.2      # prints "READY <base_url>"
    GET /_stats, POST /_faults {"faults": [...]} control it from another process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import re
import threading
import time

from aiohttp import web

from raywiz.inference.chat import request_key

EVOL_HEAD = "Please increase the difficulty of the given programming test question a bit."
JUDGE_HEAD = "Here are two Instructions"

# What the fake LLM adds to a question, by which method the evolution prompt asked for.
ADDITIONS = {
    "Add new constraints": "The function must also reject invalid inputs by raising ValueError and keep the "
    "original order of elements.",
    "Replace a commonly used": "Instead of the usual built-in helpers, implement the core routine by hand using "
    "only explicit loops over indices.",
    "add more reasoning steps": "First validate the input, then normalise it, and finally explain each "
    "intermediate result in a short comment.",
    "erroneous code": "For reference, here is an incorrect attempt: `def f(x): return x.sort()` which returns "
    "None instead of the sorted list.",
    "complexity requirements": "Your solution should run in O(n log n) time and use at most O(n) additional "
    "memory, even for very large inputs.",
}


# The verify step's prompts, by their first words (raywiz/evolve/prompts.py).
TESTS_HEAD = "Write unit tests for a Python function"
ANSWER_HEAD = "Solve the programming task below in Python."
GOOD_TESTS = ["assert solution([3, 1, 2]) == [1, 2, 3]", "assert solution([]) == []",
              "assert solution([5, 5, 1]) == [1, 5, 5]", "assert solution([-1, 0]) == [-1, 0]",
              "assert solution(['b', 'a']) == ['a', 'b']"]
WRONG_TEST = "assert solution([2, 1]) == [2, 1]"  # fails on every right answer
TRIVIAL_TESTS = ["assert not solution([])", "assert solution([1]) is None or solution([1]) == [1]"]  # pass on `pass`
UNSAFE_TESTS = ["assert __import__('os').system('true') == 0", "assert solution([1]) == [1] * 3",
                "assert open('/etc/hostname').read() != solution([1])", "assert [x for x in solution([1])] == [1]"]
RIGHT = "def solution(data):\n    return sorted(data)\n"
WRONG = "def solution(data):\n    return [0] + list(data)\n"  # fails every test
# Answers that try to look right without being right: each must fail in the sandbox.
HOSTILE = {
    "always_equal": "class Same:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
                    "        return False\n\ndef solution(data):\n    return Same()\n",
    "sys_exit": "import sys\n\ndef solution(data):\n    sys.exit(0)\n",
    "patched_builtins": "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
                        "builtins.sorted = lambda *a, **k: []\nbuiltins.len = lambda x: 0\n\n"
                        "def solution(data):\n    return None\n",
    "prints_passed": "import os\nimport sys\nprint('PASSED')\n\ndef solution(data):\n    print('passed')\n"
                     "    sys.stdout.flush()\n    os.write(1, b'PASSED\\n')\n    os.write(2, b'PASSED\\n')\n"
                     "    return None\n",
}
# marker in the instruction -> (tests, answer code by candidate seed 0, 1, 2, ...)
VERIFY_MARKERS = {
    "[[wrong]]": (GOOD_TESTS, [WRONG]),
    "[[hostile]]": (GOOD_TESTS, list(HOSTILE.values())),
    "[[mixed]]": (GOOD_TESTS, [WRONG, RIGHT, HOSTILE["always_equal"], RIGHT]),
    "[[badtest]]": (GOOD_TESTS[:2] + [WRONG_TEST], [RIGHT]),
    "[[trivial]]": (GOOD_TESTS[:2] + TRIVIAL_TESTS[:1], [RIGHT]),
    "[[alltrivial]]": (TRIVIAL_TESTS, [RIGHT]),
    "[[unsafe]]": (UNSAFE_TESTS + GOOD_TESTS[:1], [RIGHT]),
    "[[notests]]": (None, [RIGHT]),
}


def verify_answer(user: str, params: dict) -> str:
    """The fake LLM's unit tests or candidate answer for a verify prompt."""
    tests, answers = next((v for marker, v in VERIFY_MARKERS.items() if marker in user), (GOOD_TESTS, [RIGHT]))
    if user.startswith(TESTS_HEAD):
        if tests is None:
            return "I am not able to write tests for this task."
        n = int(re.search(r"Write exactly (\d+) test cases", user).group(1))
        return "```python\n" + "\n".join(tests[:n]) + "\n```"
    seed = int(params.get("seed", 0))
    code = answers[seed % len(answers)]
    # A comment per task and candidate: like a real LLM's answers, each is its own sandbox run.
    return (f"Here is candidate {seed}.\n\n```python\n# task {_digest(user)}, candidate {seed}\n{code}```\n\n"
            "It sorts the items.")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def fake_answer(messages: list[dict], params: dict | None = None) -> str:
    """A deterministic answer that looks like an LLM's for the kinds of evolve requests."""
    user = messages[-1]["content"] if messages else ""
    if user.startswith((TESTS_HEAD, ANSWER_HEAD)):
        return verify_answer(user, params or {})
    if user.startswith(EVOL_HEAD):
        question = user.split("\n\n", 2)[-1]
        if "[[same]]" in question:
            return question
        addition = next((text for cue, text in ADDITIONS.items() if cue in user), "Handle edge cases too.")
        if "[[template]]" in question:
            return f"#Rewritten Prompt#: {question} {addition}"
        return f"{question} {addition} (variant {_digest(question)})"
    if user.startswith(JUDGE_HEAD):
        first, second = re.findall(r"The (?:First|Second) Prompt: (.*?)(?=\nThe Second Prompt:|\nYour Judgement)",
                                   user, re.S)[:2] or ("", "")
        return "Equal" if first.strip() == second.strip() else "Not Equal"
    if "[[sorry]]" in user:
        return "Sorry, I cannot help with that request."
    if "[[punct]]" in user:
        return "... , the ; of !"
    if "[[badpy]]" in user:
        return "Here you go:\n\n```python\ndef broken(:\n    return\n```"
    name = "solution_" + _digest(user)
    summary = " ".join(user.split()[:12]).replace('"', "'")
    return (
        f"Here is a Python solution.\n\n```python\ndef {name}(data):\n    \"\"\"{summary}\"\"\"\n"
        f"    result = []\n    for item in data:\n        result.append(item)\n    return result\n```\n\n"
        f"The function `{name}` walks the input once and returns a new list."
    )


class FakeLLMServer:
    def __init__(self, latency_s: float = 0.0, faults: list[str] | None = None, hang_s: float = 30.0,
                 require_api_key: str | None = None, host: str = "127.0.0.1", port: int = 0):
        self.latency_s = latency_s
        self.faults: collections.deque[str] = collections.deque(faults or [])
        self.hang_s = hang_s
        self.require_api_key = require_api_key
        self.host, self.port = host, port
        self.requests_by_key: collections.Counter[str] = collections.Counter()
        self.completed_by_key: collections.Counter[str] = collections.Counter()
        self.faults_injected: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.request_times: list[float] = []
        self.request_log: list[tuple[float, str]] = []  # (arrival time, key)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ accounting

    @property
    def total_requests(self) -> int:
        return sum(self.requests_by_key.values())

    def stats(self) -> dict:
        return {
            "total_requests": self.total_requests,
            "unique_keys": len(self.requests_by_key),
            "repeated_keys": sum(1 for c in self.requests_by_key.values() if c > 1),
            "completed": sum(self.completed_by_key.values()),
            "completed_more_than_once": sum(1 for c in self.completed_by_key.values() if c > 1),
            "faults_injected": dict(self.faults_injected),
            "max_in_flight": self.max_in_flight,
            "requests_by_key": dict(self.requests_by_key),
            "completed_by_key": dict(self.completed_by_key),
        }

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is being handled (a client may see its answer a moment earlier)."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.in_flight == 0

    def set_faults(self, faults: list[str]) -> None:
        self.faults = collections.deque(faults)

    # ------------------------------------------------------------------ HTTP

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_stats", self._stats)
        app.router.add_post("/_faults", self._set_faults)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-llm", "object": "model"}]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _set_faults(self, request: web.Request) -> web.Response:
        self.set_faults((await request.json()).get("faults", []))
        return web.json_response({"ok": True})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body.get("messages", [])
        params = {k: v for k, v in body.items() if k not in ("model", "messages")}
        key = request_key(body.get("model", ""), messages, params)
        self.requests_by_key[key] += 1
        self.request_times.append(time.monotonic())
        self.request_log.append((time.monotonic(), key))
        if self.require_api_key is not None:
            if request.headers.get("Authorization") != f"Bearer {self.require_api_key}":
                return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        fault = self.faults.popleft() if self.faults else None
        if fault:
            self.faults_injected[fault] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency_s)
            if fault in ("429", "500", "503"):
                headers = {"Retry-After": "0"} if fault == "429" else {}
                return web.json_response({"error": {"message": f"injected {fault}"}}, status=int(fault),
                                         headers=headers)
            if fault == "timeout":
                await asyncio.sleep(self.hang_s)
            answer = fake_answer(messages, params)
            payload = {
                "id": "chatcmpl-" + key[:12], "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": sum(len(m.get("content", "").split()) for m in messages),
                          "completion_tokens": len(answer.split())},
            }
            data = json.dumps(payload).encode()
            if fault == "malformed":
                data = b'{"id": "x", "choices": [{"message": '  # a 200 that is not JSON
            if fault == "no_choices":
                data = b'{"id": "x", "object": "chat.completion"}'
            if fault == "truncated":
                resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                               "Content-Length": str(len(data))})
                await resp.prepare(request)
                await resp.write(data[: len(data) // 2])
                request.transport.close()  # hang up mid-body
                return resp
            resp = web.Response(body=data, content_type="application/json")
            try:
                await resp.prepare(request)
                await resp.write_eof()
            except ConnectionError:  # the client gave up (its timeout) before we answered
                return resp
            if fault is None:
                self.completed_by_key[key] += 1
            return resp
        finally:
            self.in_flight -= 1

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Serve on a background thread; returns the base URL (…/v1)."""
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(self.app(), access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
            self._loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-llm-server", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("test server did not start")
        return self.base_url

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> "FakeLLMServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible fake LLM server for tests and benchmarks")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--faults", default="", help="comma-separated fault script, e.g. 429,timeout")
    args = parser.parse_args(argv)
    server = FakeLLMServer(latency_s=args.latency, faults=[f for f in args.faults.split(",") if f], port=args.port)
    server.start()
    print(f"READY {server.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
