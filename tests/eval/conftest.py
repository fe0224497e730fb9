"""Eval tests read the benchmark files from raywiz's data directory and keep every cache in a temp dir."""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from tests.datafiles import require_data


@pytest.fixture(scope="session", autouse=True)
def eval_data_env(tmp_path_factory):
    """A session cache (ground-truth outputs and the like); never download."""
    cache = tmp_path_factory.mktemp("raywiz-cache")
    old = {k: os.environ.get(k) for k in ("RAYWIZ_CACHE", "RAYWIZ_OFFLINE")}
    os.environ["RAYWIZ_CACHE"] = str(cache)
    os.environ["RAYWIZ_OFFLINE"] = "1"
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def have_shared_data() -> Path:
    """The data directory with the benchmark files (skips, naming `raywiz data fetch`, without them)."""
    return require_data("humaneval", "humaneval+", "mbpp", "mbpp+", "mbpp+prompts")


@contextmanager
def answering_server(answer: Callable[[dict], str]):
    """An OpenAI-compatible completions server on 127.0.0.1 whose one choice is answer(request body);
    yields its /v1 base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = json.dumps({"choices": [{"index": 0, "text": answer(body)}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
