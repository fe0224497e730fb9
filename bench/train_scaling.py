"""ZeRO-3 scaling on the GPUs of one host: weak scaling, a model that only fits sharded, a killed GPU worker.

    python bench/train_scaling.py --parts scaling,large,kill --out bench/results/train_scaling.json

Parts (each merges its results into --out, so separate calls can fill one file):
- scaling: `raywiz train` (Ray Train TorchTrainer -> DeepSpeed ZeRO-3 over NCCL) of the train benchmark's
  StarCoderBase-1B shape and samples (bench/train_throughput.py) on 1, 2, 4, 8 GPUs (as many as the host
  has), each GPU with the same per-GPU batch (8 rows x 4 accumulation x 2048 tokens): weak scaling.
  weak_scaling_efficiency(N) = useful tok/s per GPU at N / the same at 1. raywiz's defaults, which keep
  this small model's weights whole on each GPU (deepspeed.resident_params: auto).
- pure: the same with every weight sharded (resident_params: never), pure ZeRO-3.
- large: the StarCoder-7B shape (7.3 B parameters) with gradient checkpointing, which needs ~16 bytes
  per parameter of model, gradient and Adam state (~117 GB), more than one 80 GB card: it only trains
  sharded. Reports tok/s per GPU, MFU and peak memory.
- kill: a 2-GPU run whose rank-1 worker is SIGKILLed mid-run must resume from its last registered
  checkpoint and finish with the same per-step sample trace as an uninterrupted run (nothing skipped
  or repeated) and a final loss within 1e-3 relative (GPU kernels are not bitwise deterministic).
NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends), as the GPU machine requires.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from train_throughput import make_samples, raywiz_run  # noqa: E402

MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
PER_GPU_MICRO, PER_GPU_ACCUM = 8, 4
USE_GPU = True  # --cpu-dry-run turns it off to check the kill part's logic on a CPU machine


def gpu_counts(available: int) -> list[int]:
    return [n for n in (1, 2, 4, 8) if n <= available]


# Pure ZeRO-3: every weight sharded too, all-gathered layer by layer on each micro-batch. raywiz's
# default (deepspeed.resident_params: auto) keeps a model this small whole on each GPU instead.
PURE_ZERO3 = ["train.deepspeed.resident_params=never"]


def scaling(data: str, work: str, steps: int, available: int, extra: list[str] | None = None,
            counts: list[int] | None = None) -> dict:
    runs = {}
    for n in counts or gpu_counts(available):
        print(f"[bench] scaling: {n} GPU(s) {extra or ''}", flush=True)
        r = raywiz_run(data, work, f"scale{n}{'t' if extra else ''}", steps, PER_GPU_MICRO, PER_GPU_ACCUM, "sdpa",
                       extra or [], num_workers=n)
        if "error" not in r:
            r["useful_tokens_per_s_per_gpu"] = r["useful_tokens_per_s"] / n
        runs[str(n)] = r
    base = runs.get("1", {}).get("useful_tokens_per_s_per_gpu")
    for r in runs.values():
        if base and "useful_tokens_per_s_per_gpu" in r:
            r["weak_scaling_efficiency"] = r["useful_tokens_per_s_per_gpu"] / base
    return runs


def large(data: str, work: str, steps: int, available: int, model: str) -> dict:
    from raywiz.modeling import count_parameters, model_config

    n_params = count_parameters(model_config(model))
    n = min(available, 8)
    print(f"[bench] large: {model} on {n} GPU(s)", flush=True)
    # Smaller optimizer sub-groups keep the fp32 step's transient buffers small next to the shards.
    r = raywiz_run(data, work, "large", steps, 2, 4, "sdpa",
                   ["train.optim.gradient_checkpointing=true",
                    "train.deepspeed.config.zero_optimization.sub_group_size=100000000"],
                   model=model, num_workers=n, warmup=2)
    if "error" not in r:
        r["useful_tokens_per_s_per_gpu"] = r["useful_tokens_per_s"] / n
    r.update(n_params=n_params, model_state_gb_unsharded=round(16 * n_params / 1e9, 1),
             model_state_gb_per_gpu=round(16 * n_params / 1e9 / n, 1), num_gpus=n,
             note="16 bytes/parameter: bf16 weights and gradients, fp32 master weights and two Adam moments")
    return r


def kill_job(tmp: Path, name: str, data: Path) -> Path:
    job = tmp / f"{name}.yaml"
    job.write_text(f"""
name: {name}
storage: {tmp / 'runs'}
model: {{name_or_path: tiny-gpt-bigcode}}
train:
  data: {{paths: [{data}], max_length: 256, pack: false}}
  optim: {{epochs: 40, global_batch_size: 4, micro_batch_size: 2, lr: 1.0e-2, warmup_steps: 5}}
  scaling: {{num_workers: 2, use_gpu: {str(USE_GPU).lower()}, cpus_per_worker: 2}}
  checkpoint: {{every_n_steps: 10, num_to_keep: 3}}
  debug: {{pid_files: true, trace_samples: true}}
  max_failures: 2
""")
    return job


def start(job: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{REPO}:{os.environ.get('PYTHONPATH', '')}", WANDB_MODE="disabled")
    return subprocess.Popen([sys.executable, "-m", "raywiz.cli", "train", str(job)], stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True, env=env, start_new_session=True, cwd=REPO)


def kill(work: str) -> dict:
    from raywiz.artifacts import RunLayout
    from tests.train.traces import read_trace

    tmp = Path(work) / "kill"
    tmp.mkdir(exist_ok=True)
    rows = [json.loads(line) for line in (REPO / "raywiz/assets/quickstart/instructions.jsonl").read_text().splitlines()]
    data = tmp / "eight.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    out: dict = {"model": "tiny-gpt-bigcode", "num_gpus": 2 if USE_GPU else 0, "steps": 80, "checkpoint_every": 10}

    def final_loss(train_dir: Path) -> float:
        return json.loads((Path(RunLayout(str(train_dir.parent)).latest_checkpoint().train_state)).read_text())["loss"]

    print("[bench] kill: reference run", flush=True)
    ref = start(kill_job(tmp, "ref", data), tmp / "ref.log")
    ref_out, _ = ref.communicate(timeout=400)
    if ref.returncode != 0:
        return {**out, "error": "reference run failed: " + (tmp / "ref.log").read_text()[-4000:]}
    ref_dir = tmp / "runs" / "ref" / "train"

    print("[bench] kill: killed run", flush=True)
    proc = start(kill_job(tmp, "killed", data), tmp / "killed.log")
    train_dir = tmp / "runs" / "killed" / "train"
    target, snapshot = train_dir / "trace" / "step_00000014.rank_1.json", train_dir / "checkpoint_manager_snapshot.json"
    deadline = time.time() + 300
    while not (target.exists() and snapshot.exists() and "checkpoint_00000010" in snapshot.read_text()):
        if proc.poll() is not None or time.time() > deadline:
            return {**out, "error": "the run ended or stalled before the kill: " + (tmp / "killed.log").read_text()[-4000:]}
        time.sleep(0.05)
    pid = json.loads((train_dir / "workers" / "rank_1.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    killed_after_step = max(int(p.name.split("_")[1].split(".")[0]) for p in (train_dir / "trace").glob("*.rank_1.json")) + 1
    killed_at = time.time()
    stdout, _ = proc.communicate(timeout=400)
    log = (tmp / "killed.log").read_text()
    new_pid = json.loads((train_dir / "workers" / "rank_1.json").read_text())["pid"]
    ref_loss = final_loss(ref_dir)
    out.update(
        killed_rank=1, killed_after_step=killed_after_step, checkpoint_registered_before_kill=10,
        exit_code=proc.returncode, worker_restarted=new_pid != pid,
        seconds_from_kill_to_finish=round(time.time() - killed_at, 1),
        trace_identical=read_trace(str(train_dir)) == read_trace(str(ref_dir)),
        reference_final_loss=ref_loss, final_loss=final_loss(train_dir) if proc.returncode == 0 else None,
        finished_step=json.loads((Path(RunLayout(str(train_dir.parent)).latest_checkpoint().train_state)).read_text())["step"],
    )
    if out["final_loss"] is not None:
        out["final_loss_relative_diff"] = abs(out["final_loss"] - ref_loss) / abs(ref_loss)
    out["ok"] = bool(proc.returncode == 0 and out["worker_restarted"] and out["trace_identical"]
                     and out.get("final_loss_relative_diff", 1) <= 1e-3)
    out["log_tail"] = "\n".join(line for line in (log + stdout).splitlines()
                                if "resum" in line.lower() or "restor" in line.lower() or "fail" in line.lower())[-3000:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "bench/results/train_scaling.json"))
    ap.add_argument("--parts", default="scaling,pure,large,kill")
    ap.add_argument("--samples", type=int, default=6000)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--large-model", default="starcoder-7b-shape")
    ap.add_argument("--large-steps", type=int, default=6)
    ap.add_argument("--cpu-dry-run", action="store_true", help="run only the kill part, on CPU workers")
    args = ap.parse_args()
    if args.cpu_dry_run:
        global USE_GPU
        USE_GPU = False
        print(json.dumps(kill(tempfile.mkdtemp(prefix="raywiz-scaling-")), indent=2))
        return

    import torch

    for k, v in MULTICAST_OFF.items():
        os.environ[k] = v
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    available = torch.cuda.device_count()
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    result.update(card=torch.cuda.get_device_name(0), gpus_on_host=available, model="starcoderbase-1b-shape",
                  per_gpu_batch={"micro_batch_rows": PER_GPU_MICRO, "grad_accum": PER_GPU_ACCUM, "row_tokens": 2048},
                  target_weak_scaling_efficiency=0.9)

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2))

    work = tempfile.mkdtemp(prefix="raywiz-scaling-")
    data = os.path.join(work, "samples.jsonl")
    with open(data, "w") as f:
        for s in make_samples(args.samples):
            f.write(json.dumps(s) + "\n")
    for part in args.parts.split(","):  # in the order given; each saved as soon as it is done
        if part == "scaling":
            result["per_gpu_count"] = scaling(data, work, args.steps, available)
        elif part == "pure":
            result["per_gpu_count_pure_zero3"] = scaling(data, work, args.steps, available, PURE_ZERO3)
        elif part == "large":
            result["large_model"] = large(data, work, args.large_steps, available, args.large_model)
        elif part == "kill" and available >= 2:
            result["kill_gpu_worker"] = kill(work)
        save()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
