"""Benchmark: `raywiz serve` swapping in a new checkpoint under load.

A StarCoderBase-1B-shaped model (random init, bf16 on the GPU) is served by the real Ray Serve app
following a run directory. N clients (32) stream completions back to back over HTTP. Mid-run a second
checkpoint lands (a sealed checkpoint directory renamed into the run's train/, as a finished save
appears); the replica's watcher loads it in the background and swaps it in.

Measured:
  swap_seconds         landing -> the first token a client receives from the new checkpoint
  served_seconds       landing -> the replica routes new requests to it (its status; 50 ms polls)
  failed_requests      requests that got an HTTP error, a broken stream or an error event (all phases)
  ttft_p50_s/p95_s     time to first token, every request of the run (swap included)

    python bench/serve_swap.py [--out bench/results/serve_swap.json]     # GPU
    python bench/serve_swap.py --tiny                                     # CPU smoke run, tiny model

Self-contained: builds its checkpoints in a temp directory, starts a local Ray cluster, cleans up.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PROMPT = ('def parse_log_line(line: str) -> dict:\n    """Split an access-log line into ip, timestamp, method, '
          'path and status; raise ValueError on malformed input."""\n')


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny model on CPU: proves the harness, not a result")
    p.add_argument("--out", default=None, help="default: bench/results/serve_swap.json (--tiny: serve_swap_tiny.json)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=None, help="per request (default 64 GPU, 16 tiny)")
    p.add_argument("--warmup-s", type=float, default=None, help="load before the landing (default 15 GPU, 5 tiny)")
    p.add_argument("--after-s", type=float, default=None, help="load after the swap (default 15 GPU, 5 tiny)")
    p.add_argument("--watch-interval-s", type=float, default=0.5)
    p.add_argument("--stream-interval-ms", type=float, default=None, help="serve.engine.stream_interval_ms (default: raywiz's)")
    return p.parse_args()


# ---------------------------------------------------------------- checkpoints


def write_checkpoint(ckpt_dir: str, model_name: str, step: int, device: str) -> None:
    """A checkpoint as train writes it (hf/ with raywiz.json, sealed by its manifest last)."""
    import torch

    from raywiz.artifacts import write_json_atomic, write_manifest
    from raywiz.modeling import build_model, decodable_tokenizer, load_tokenizer, torch_dtype

    hf = os.path.join(ckpt_dir, "hf")
    os.makedirs(hf, exist_ok=True)
    with torch.device(device):  # random init on the GPU: seconds instead of a minute on the CPU
        model = build_model(model_name, dtype=torch_dtype("auto", device == "cuda"), seed=step)
    model.save_pretrained(hf)
    # every id the random model can pick decodes to text, so streams carry text as a real model's do
    decodable_tokenizer(load_tokenizer(model_name), model.config.vocab_size).save_pretrained(hf)
    write_json_atomic(os.path.join(hf, "raywiz.json"),
                      {"step": step, "run": "bench", "base_model": model_name, "template": "wizardcoder"})
    write_manifest(hf, kind="hf_export", meta={"step": step})
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- load


class Client(threading.Thread):
    """Streams completions back to back on one keep-alive connection; records TTFT and outcome."""

    def __init__(self, host: str, port: int, index: int, max_tokens: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.host, self.port, self.index, self.max_tokens, self.stop = host, port, index, max_tokens, stop
        self.records: list[dict] = []

    def run(self):
        conn = None
        while not self.stop.is_set():
            record = {"start": time.time(), "ttft": None, "model": None, "tokens": 0, "error": None}
            try:
                conn = conn or http.client.HTTPConnection(self.host, self.port, timeout=120)
                body = json.dumps({"prompt": PROMPT + f"    # request from client {self.index}\n",
                                   "max_tokens": self.max_tokens, "temperature": 0.7, "stream": True,
                                   "stream_options": {"include_usage": True}})
                conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                if resp.status != 200:
                    record["error"] = f"HTTP {resp.status}: {resp.read()[:200]!r}"
                else:
                    self._read_stream(resp, record)
            except Exception as e:  # a dropped connection is a failed request
                record["error"] = f"{type(e).__name__}: {e}"
                conn = None
            record["end"] = time.time()
            self.records.append(record)

    @staticmethod
    def _read_stream(resp, record: dict) -> None:
        done = False
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            event = json.loads(line[6:])
            if "error" in event:
                record["error"] = f"error event: {event['error'].get('message')}"
                continue
            if event.get("usage"):
                record["tokens"] = event["usage"]["completion_tokens"]
            elif record["ttft"] is None:
                record["ttft"] = time.time() - record["start"]
                record["model"] = event["model"]
                record["first_token_at"] = time.time()
        if not done and record["error"] is None:
            record["error"] = "stream ended without [DONE]"


def get_json(host: str, port: int, path: str) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


# ---------------------------------------------------------------- main


def main() -> int:
    args = parse_args()
    import torch

    on_gpu = torch.cuda.is_available() and not args.tiny
    if not args.tiny and not on_gpu:
        print("no GPU here: use --tiny for a CPU smoke run", file=sys.stderr)
        return 2
    model_name = "tiny-gpt-bigcode" if args.tiny else "starcoderbase-1b-shape"
    max_tokens = args.max_tokens or (16 if args.tiny else 64)
    warmup_s = args.warmup_s if args.warmup_s is not None else (5 if args.tiny else 15)
    after_s = args.after_s if args.after_s is not None else (5 if args.tiny else 15)
    out = args.out or os.path.join(REPO, "bench", "results", "serve_swap_tiny.json" if args.tiny else "serve_swap.json")
    device = "cuda" if on_gpu else "cpu"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray workers (the serve replica) import raywiz from this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [REPO, os.environ.get("PYTHONPATH", "")] if p)
    os.environ.setdefault("WANDB_MODE", "disabled")

    from ray import serve

    from raywiz.config import parse_job
    from raywiz.serve.app import run_serve

    work = tempfile.mkdtemp(prefix="serve-swap-")
    run_dir = os.path.join(work, "runs", "bench")
    staged = os.path.join(work, "staging", "checkpoint_00000002")
    landed = os.path.join(run_dir, "train", "checkpoint_00000002")
    try:
        t = time.time()
        write_checkpoint(os.path.join(run_dir, "train", "checkpoint_00000001"), model_name, 1, device)
        write_checkpoint(staged, model_name, 2, device)
        print(f"checkpoints written in {time.time() - t:.1f}s", flush=True)

        serve_cfg = {"port": 0, "watch_interval_s": args.watch_interval_s, "engine": {"batch_size": args.clients},
                     "max_models": 2, "max_ongoing_requests": 4 * args.clients, "num_cpus": 1}
        if args.stream_interval_ms is not None:
            serve_cfg["engine"]["stream_interval_ms"] = args.stream_interval_ms
        job = parse_job({"name": "bench", "storage": os.path.join(work, "runs"), "serve": serve_cfg})
        t = time.time()
        url = run_serve(job, blocking=False)
        start_s = time.time() - t
        host, port = url.removeprefix("http://").split(":")
        port = int(port)
        status = get_json(host, port, "/api/status")
        assert status["current"] == "checkpoint_00000001", status
        print(f"serving at {url} after {start_s:.1f}s (device {status['device']})", flush=True)

        stop = threading.Event()
        clients = [Client(host, port, i, max_tokens, stop) for i in range(args.clients)]
        for c in clients:
            c.start()
        time.sleep(warmup_s)

        os.makedirs(os.path.dirname(landed), exist_ok=True)
        os.rename(staged, landed)  # the checkpoint lands: complete, in one step
        landed_at = time.time()
        served_at = None
        while time.time() - landed_at < 120:
            if get_json(host, port, "/api/status")["current"] == "checkpoint_00000002":
                served_at = time.time()
                break
            time.sleep(0.05)
        time.sleep(after_s)
        stop.set()
        for c in clients:
            c.join(timeout=180)
        status = get_json(host, port, "/api/status")
    finally:
        try:
            serve.shutdown()
        except Exception:
            pass
        import ray

        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    records = [r for c in clients for r in c.records]
    failed = [r for r in records if r["error"]]
    ttfts = [r["ttft"] for r in records if r["ttft"] is not None and not r["error"]]
    first_new = min((r["first_token_at"] for r in records if r["model"] == "checkpoint_00000002"), default=None)
    during = [r for r in records if served_at and r["start"] <= served_at + 1 and r["end"] >= landed_at]
    load = next((e for e in status["events"] if e["event"] == "loaded" and e["id"] == "checkpoint_00000002"), {})
    tokens = sum(r["tokens"] for r in records if not r["error"])
    span = max(r["end"] for r in records) - min(r["start"] for r in records)
    result = {
        "card": torch.cuda.get_device_name(0) if on_gpu else f"cpu ({os.cpu_count()} cores)",
        "mode": "tiny-cpu (harness check, not a result)" if args.tiny else "gpu",
        "model": model_name,
        "dtype": "bfloat16" if on_gpu else "float32",
        "swap_seconds": round(first_new - landed_at, 3) if first_new else None,
        "served_seconds": round(served_at - landed_at, 3) if served_at else None,
        "load_seconds": load.get("seconds"),
        "failed_requests": len(failed),
        "failed_examples": [r["error"] for r in failed[:5]],
        "requests": len(records),
        "requests_during_swap": len(during),
        "ttft_p50_s": round(percentile(ttfts, 50), 4) if ttfts else None,
        "ttft_p95_s": round(percentile(ttfts, 95), 4) if ttfts else None,
        "ttft_p50_during_swap_s": round(percentile([r["ttft"] for r in during if r["ttft"]], 50) or 0, 4),
        "tokens_per_s": round(tokens / span, 1) if span else None,
        "clients": args.clients,
        "max_tokens": max_tokens,
        "watch_interval_s": args.watch_interval_s,
        "serve_start_s": round(start_s, 2),
        # Continuous batching: streams served and per-step outputs routed, per model.
        "streams": sum(m.get("streams", 0) for m in status["loaded"]),
        "stream_outputs": sum(m.get("stream_outputs", 0) for m in status["loaded"]),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))
    return 0 if not failed and result["swap_seconds"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
