"""Fixtures for serve tests: tiny checkpoints shaped like train's, and a real HTTP server for the API."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from raywiz.artifacts import RunLayout, write_json_atomic, write_manifest


def make_checkpoint(run_dir: str | Path, step: int, seed: int | None = None, template: str | None = "wizardcoder",
                    model_name: str = "tiny-gpt-bigcode", truncated: bool = False, stage: str = "train") -> str:
    """A checkpoint as train (or rl, with `stage`) writes it: {run}/{stage}/checkpoint_N/hf with raywiz.json,
    sealed last.

    truncated: the weights lose their second half after sealing (an interrupted copy); built aside and
    moved into train/ in one rename, so a watcher never sees the whole version.
    """
    from raywiz.modeling import build_model, load_tokenizer

    final = Path(RunLayout(str(run_dir)).training(stage).checkpoint(step).path)
    ckpt = Path(run_dir) / "staging" / final.name if truncated else final
    hf = ckpt / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    model = build_model(model_name, seed=step if seed is None else seed)
    model.save_pretrained(hf)
    load_tokenizer(model_name).save_pretrained(hf)
    info = {"step": step, "run": Path(run_dir).name, "base_model": model_name}
    if template:
        info["template"] = template
    write_json_atomic(str(hf / "raywiz.json"), info)
    write_manifest(str(hf), kind="hf_export", meta={"step": step})
    if truncated:
        truncate_weights(str(hf))
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(ckpt, final)
    return str(final / "hf")


def latest_step(run_dir: str | Path) -> int:
    """The newest complete checkpoint's step in a run (0 if none)."""
    from raywiz.serve.checkpoints import list_run_checkpoints, verify

    return max((r.step for r in list_run_checkpoints(str(run_dir)) if verify(r).ok), default=0)


def truncate_weights(hf_dir: str) -> None:
    """Cut the weights file in half, as an interrupted copy would (the manifest still lists the full size)."""
    path = os.path.join(hf_dir, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """A FastAPI app under uvicorn on 127.0.0.1 in a thread: real HTTP without Ray."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="package")
def completion_server(tmp_path_factory):
    """serve's /v1 API for a plain completion model (no template), under uvicorn on 127.0.0.1 without Ray:
    one for every real-client test (the openai SDK, lm-evaluation-harness)."""
    from types import SimpleNamespace

    from raywiz.serve.config import ServeConfig
    from raywiz.serve.openai_api import build_api
    from raywiz.serve.service import ModelService, ServiceSettings

    run_dir = tmp_path_factory.mktemp("completions") / "runs" / "demo"
    hf_dir = make_checkpoint(run_dir, 1, template=None)
    cfg = ServeConfig(watch=False)
    service = ModelService(ServiceSettings(cfg, str(run_dir), str(run_dir.parent)))
    service.set_checkpoint(cfg.checkpoint)
    with LocalServer(build_api(service, cfg.limits)) as server:
        yield SimpleNamespace(url=server.url, hf_dir=hf_dir, service=service)
    service.close()


@pytest.fixture
def run_dir(tmp_path) -> Path:
    d = tmp_path / "runs" / "demo"
    d.mkdir(parents=True)
    return d


JOB_YAML = """\
name: demo
storage: {storage}
serve:
  port: 0
  watch_interval_s: 0.5
  num_cpus: 0.1
  max_models: 3
  benchmarks: {{humaneval: {humaneval}}}
"""


@pytest.fixture(scope="package")
def serve_app(ray_local, tmp_path_factory):
    """One Ray Serve app for the package's Ray tests, following run 'demo' (checkpoint 1 to start)."""
    from types import SimpleNamespace

    from ray import serve

    from raywiz.config import load_job
    from raywiz.serve.app import run_serve

    root = tmp_path_factory.mktemp("serve-app")
    storage = root / "runs"
    make_checkpoint(storage / "demo", 1)
    humaneval = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"
    job_path = root / "job.yaml"
    job_path.write_text(JOB_YAML.format(storage=storage, humaneval=humaneval if humaneval.exists() else "null"))
    job = load_job(job_path)
    url = run_serve(job, blocking=False)
    yield SimpleNamespace(url=url, run_dir=storage / "demo", job=job, job_path=job_path)
    serve.shutdown()  # frees the replica's CPU share for later Ray tests in the session
