"""Per-step throughput numbers: useful tokens/s, MFU, data-wait fraction.

MFU follows PaLM's definition: model FLOPs (6 x parameters per token, plus causal attention,
6 x layers x width x sum of squared sample lengths) over the card's peak dense bf16 FLOP/s.
Padding tokens are not "useful" and are not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Peak dense bf16 FLOP/s per device (vendor datasheets); MFU is None where unknown (e.g. CPU).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
              "B200": 2250e12}


def peak_flops(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_FLOPS.items():
        if key in name:
            return value
    return None


def model_shape(config) -> tuple[int, int]:
    """(layers, hidden width) of a transformers config, whatever its naming."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    return int(layers), int(width)


def step_flops(n_params: int, n_tokens: int, sum_sq_len: int, layers: int, width: int) -> float:
    return 6.0 * n_params * n_tokens + 6.0 * layers * width * sum_sq_len


@dataclass
class StepTimer:
    """Splits wall time into waiting for data and computing."""

    data_wait: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def waiting(self):
        timer = self

        class _Wait:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.data_wait += time.perf_counter() - self.t

        return _Wait()

    def finish(self) -> tuple[float, float]:
        """(elapsed seconds, data-wait fraction) since start; resets."""
        now = time.perf_counter()
        elapsed = now - self.started
        frac = self.data_wait / elapsed if elapsed > 0 else 0.0
        self.started, self.data_wait = now, 0.0
        return elapsed, frac


# ------------------------------------------------------------------ metric loggers
# One record per logged step; train/metrics.jsonl carries exactly these keys (and drivers tail it).
RECORD_KEYS = ("step", "total_steps", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "data_wait",
               "elapsed_s", "step_seconds", "peak_memory_gib", "time")


class MetricLogger:
    """The interface: `log(record)` once per logged step, `close()` at the end. Does nothing itself
    (what every rank but 0 gets, so the loop has no `if rank == 0` / `if tracker` branches)."""

    def log(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class ConsoleLogger(MetricLogger):
    """The worker's own step line: a debug line (Ray's log files; the console with --verbose).

    What a user sees is the driver's progress display, fed by ProgressLogger."""

    def log(self, r: dict) -> None:
        from raywiz.log import get_logger

        mfu = f" | mfu {r['mfu']:.1%}" if r.get("mfu") is not None else ""
        get_logger(__name__).debug(
            f"step {r['step']}/{r['total_steps']} | epoch {r['epoch'] + 1} | loss {r['loss']:.4f} | lr {r['lr']:.2e} | "
            f"grad-norm {r['grad_norm']:.3f} | {r['tokens_per_s']:,.0f} tok/s{mfu} | data-wait {r['data_wait']:.0%}")


class ProgressLogger(MetricLogger):
    """Posts each record to the driver's progress display (raywiz.training.progress), fire-and-forget."""

    def __init__(self, board):
        self.board = board

    def log(self, r: dict) -> None:
        self.board.post(r)


class JsonlLogger(MetricLogger):
    """``metrics.jsonl``: one JSON line per logged step, flushed as it is written.

    A true history across resumes: records past the step training resumes from are dropped first
    (they were trained again), so no step appears twice.
    """

    def __init__(self, path: str, resume_step: int, keys: tuple[str, ...] = RECORD_KEYS):
        import os

        self.path, self.keys = path, keys
        if os.path.exists(path):
            kept = [line for line in open(path) if line.strip() and _step_of(line) <= resume_step]
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, path)
        self.f = open(path, "a")

    def log(self, record: dict) -> None:
        import json

        self.f.write(json.dumps({k: record.get(k) for k in self.keys}) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _step_of(line: str) -> int:
    import json

    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line from a killed run: drop it


class WandbLogger(MetricLogger):
    def __init__(self, run, prefix: str = "train"):
        self.run, self.prefix = run, prefix

    def log(self, record: dict) -> None:
        self.run.log({f"{self.prefix}/{k}": v for k, v in record.items() if k not in ("step", "time")}, step=record["step"])

    def close(self) -> None:
        from raywiz import tracking

        tracking.finish(self.run)


def profile_summary(prof, wall_s: float, top: int = 15) -> dict:
    """The top host and device costs of one profiled step (torch.profiler), as plain numbers.

    device_busy_fraction: summed kernel time over the step's wall time (one stream: how much of the
    step the GPU computed; the rest it waited for the host).
    """
    events = prof.key_averages()

    def device_us(e) -> float:
        return float(getattr(e, "self_device_time_total", 0.0) or getattr(e, "self_cuda_time_total", 0.0) or 0.0)

    host = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    dev = sorted((e for e in events if device_us(e) > 0), key=lambda e: -device_us(e))[:top]
    # kernels only: an operator's self device time is its kernels' again
    device_total_us = sum(device_us(e) for e in events if "cuda" in str(getattr(e, "device_type", "")).lower())
    return {
        "wall_s": wall_s,
        "device_kernel_s": device_total_us / 1e6,
        "device_busy_fraction": device_total_us / 1e6 / wall_s if wall_s else None,
        "host_self_s": sum(e.self_cpu_time_total for e in events) / 1e6,
        "top_host_ops": [{"op": e.key, "self_host_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in host],
        "top_device_ops": [{"op": e.key, "self_device_ms": device_us(e) / 1e3, "calls": e.count} for e in dev],
    }
