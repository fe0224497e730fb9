"""Full fine-tuning vs LoRA vs QLoRA on one GPU, the StarCoderBase-1B shape, one run ("one_call": true).

    python bench/train_peft.py --out bench/results/train_peft.json
    python bench/train_peft.py --cpu      # smoke test with a tiny model, no GPU (numbers mean nothing)

1. methods: the same packed rows (raywiz's packer: 8 x 2048-token rows per step) through raywiz's own
   parts in one process, one method after the other: `raywiz.modeling.build_model`,
   `raywiz.training.adapters` (LoRA r=16 on c_attn/c_proj/c_fc; QLoRA: NF4 base, double-quantized, through
   `quantization_config` + `apply_adapter`), varlen attention and the chunked fused loss
   (`raywiz.train.recipe.token_loss_sum`), torch's fused AdamW over the trainable weights with an fp32
   master copy (DeepSpeed's bf16 memory layout). No Ray and no DeepSpeed in this part: it measures what
   the method costs, tok/s and peak GPU memory, on the same card in the same call.
2. raywiz_qlora: `raywiz train` itself with `train.peft.method: qlora` on a saved tiny base on the GPU
   (Ray Data -> Ray Train -> DeepSpeed, 4-bit base on the GPU, checkpoint, adapter export, merged hf/):
   that the real path runs there, not how fast.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from train_throughput import MODEL, PEAK, TINY, make_samples, optimizer_step, packed_batches, timed_steps  # noqa: E402


def measure_method(method: str, base_dir: str, model_name: str, batches: list, steps: int, warmup: int,
                   r: int, accum: int) -> dict:
    """Train `steps` steps with one method; tok/s over the steps after `warmup`, peak memory over all."""
    import torch

    from raywiz.modeling import build_model
    from raywiz.training.adapters import apply_adapter, quantization_config
    from raywiz.train.config import PeftConfig
    from raywiz.training.kernels import register_varlen_attention
    from raywiz.training.metrics import model_shape, step_flops
    from raywiz.train.recipe import loss_scale, token_loss_sum

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    attn = register_varlen_attention()
    peft = PeftConfig(method="qlora" if method == "qlora" else "lora", r=r, alpha=2 * r, dropout=0.0)
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t_load = time.perf_counter()
    torch.manual_seed(0)
    if method == "qlora":  # the 4-bit base loads from a directory, quantized on its way to the GPU
        model = build_model(base_dir, dtype=dtype, attn_implementation=attn,
                            quantization_config=quantization_config(peft, dtype), device_map={"": str(device)})
    else:
        with torch.device(device):
            model = build_model(base_dir, dtype=dtype, attn_implementation=attn)
    # bitsandbytes packs two 4-bit weights per uint8 element: count the model's real parameters for FLOPs
    n_params = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in model.parameters())
    layers, width = model_shape(model.config)
    model.config.use_cache = False
    if method != "full":
        torch.manual_seed(0)
        model = apply_adapter(model, peft)
    model.train()
    load_s = time.perf_counter() - t_load
    params = [p for p in model.parameters() if p.requires_grad]
    master = [p.detach().float().clone().requires_grad_(True) for p in params] if dtype != torch.float32 else None
    opt = torch.optim.AdamW(master or params, lr=2e-5 if method == "full" else 2e-4, fused=on_gpu)
    fused = "chunked"
    def step(micro_batches):
        labels = sum(b["n_label_tokens"] for b in micro_batches)
        total = 0.0
        for b in micro_batches:
            loss_sum = token_loss_sum(model, b, device, fused, varlen=True)
            (loss_sum * loss_scale(labels, 1, 1)).backward()
            total = total + loss_sum.detach()
        optimizer_step(opt, params, master)
        return total / labels

    cycled = batches * (1 + steps * accum // max(1, len(batches)))  # as many rows as the steps take
    secs, tokens, sq, n_timed, profile, losses = timed_steps(cycled, steps, accum, warmup, step, on_gpu)
    flops = step_flops(n_params, tokens, sq, layers, width)
    out = {"method": method, "useful_tokens_per_s": tokens / secs, "steps_measured": n_timed, "profile": profile,
           "model_flops_utilization": flops / secs / PEAK if on_gpu else None,
           "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
           "trainable_params": sum(p.numel() for p in params), "total_params": n_params,
           "load_seconds": load_s, "losses": [float(x) for x in losses], "lora_r": None if method == "full" else r}
    return out  # the model and optimizer go with this frame; the caller empties the CUDA cache


def raywiz_qlora(work: str, steps: int, use_gpu: bool) -> dict:
    """`raywiz train` with QLoRA on a saved tiny base: the real path, end to end, on this machine."""
    from raywiz.modeling import build_model

    base = Path(work) / "tiny-base"
    build_model(TINY, seed=3).save_pretrained(base)
    data = Path(work) / "tiny.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in make_samples(64, max_len=256, median=60)))
    job = Path(work) / "qlora.yaml"
    job.write_text(f"""
name: qlora
storage: {work}/runs
model: {{name_or_path: {base}, tokenizer: {REPO / 'raywiz/assets/tokenizer'}}}
train:
  data: {{paths: [{data}], max_length: 256}}
  optim: {{epochs: 1, max_steps: {steps}, global_batch_size: 8, micro_batch_size: 4, lr: 2.0e-3, warmup_steps: 1}}
  scaling: {{num_workers: 1, use_gpu: {str(use_gpu).lower()}}}
  checkpoint: {{every_n_steps: {steps}}}
  peft: {{method: qlora, r: 8, alpha: 16, dropout: 0.0}}
  max_failures: 0
""")
    env = dict(os.environ, PYTHONPATH=f"{REPO}:{os.environ.get('PYTHONPATH', '')}", WANDB_MODE="disabled")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "raywiz.cli", "train", str(job)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=400)
    out: dict = {"wall_seconds": time.perf_counter() - t, "returncode": proc.returncode}
    if proc.returncode != 0:
        out["error"] = proc.stdout[-1500:] + proc.stderr[-5000:]
        return out
    hf = proc.stdout.strip().splitlines()[-1]
    ckpt = Path(hf).parent
    rows = [json.loads(line) for line in open(Path(work) / "runs" / "qlora" / "train" / "metrics.jsonl")]
    meta = json.loads((ckpt / "adapter" / "raywiz.json").read_text())
    import torch
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(hf)  # a plain model: no quantization_config left in hf/
    with torch.no_grad():
        logits = merged(torch.tensor([[5, 17, 99, 3]])).logits
    out.update({"losses": [r["loss"] for r in rows], "peak_memory_gib": max((r.get("peak_memory_gib") or 0) for r in rows),
                "adapter_meta": {k: meta.get(k) for k in ("peft", "base_quantized", "step")},
                "hf_loads_plain": bool(torch.isfinite(logits).all()),
                "hf_has_quantization_config": "quantization_config" in json.loads((Path(hf) / "config.json").read_text())})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "bench/results/train_peft.json"))
    ap.add_argument("--methods", default="full,lora,qlora")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--qlora-steps", type=int, default=6)
    ap.add_argument("--cpu", "--tiny", dest="cpu", action="store_true")
    args = ap.parse_args()
    import torch

    on_gpu = torch.cuda.is_available() and not args.cpu
    model, seq_len = MODEL, 2048
    if args.cpu:
        model, seq_len, args.samples, args.steps, args.warmup, args.micro = TINY, 256, 64, 3, 1, 2
        args.methods = ",".join(m for m in args.methods.split(",") if m != "qlora" or _has_bnb())
    t0 = time.perf_counter()
    work = tempfile.mkdtemp(prefix="raywiz-peft-")
    data = os.path.join(work, "samples.jsonl")
    with open(data, "w") as f:
        for s in make_samples(args.samples, max_len=seq_len, median=350 if seq_len >= 2048 else 60):
            f.write(json.dumps(s) + "\n")
    result: dict = {"card": torch.cuda.get_device_name(0) if on_gpu else "cpu (smoke test: numbers mean nothing)",
                    "one_call": True, "model": model, "row_tokens": seq_len, "rows_per_step": args.micro * args.accum,
                    "peak_flops": PEAK, "how": __doc__.split("\n\n")[2].strip(), "methods": []}

    def save():
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))

    from raywiz.modeling import build_model

    base_dir = os.path.join(work, "base")  # the same random weights for every method (QLoRA loads them 4-bit)
    with torch.device("cuda" if on_gpu else "cpu"):
        build_model(model, dtype=torch.bfloat16 if on_gpu else torch.float32, seed=0).save_pretrained(base_dir)
    batches = packed_batches(data, model, seq_len, args.micro)
    for method in args.methods.split(","):
        try:
            result["methods"].append(measure_method(method, base_dir, model, batches, args.steps, args.warmup,
                                                    args.r, args.accum))
        except Exception as e:  # one method failing must not lose the others
            result["methods"].append({"method": method, "error": f"{type(e).__name__}: {e}",
                                      "trace": traceback.format_exc()[-3000:]})
        if on_gpu:
            torch.cuda.empty_cache()
        print(json.dumps({k: v for k, v in result["methods"][-1].items() if k not in ("losses", "trace", "profile")}), flush=True)
        save()
    full = next((m for m in result["methods"] if m["method"] == "full" and "error" not in m), None)
    if full:
        result["vs_full"] = {m["method"]: {"tokens_per_s": m["useful_tokens_per_s"] / full["useful_tokens_per_s"],
                                           "peak_memory": (m["peak_memory_gib"] / full["peak_memory_gib"]
                                                           if full["peak_memory_gib"] else None)}
                             for m in result["methods"] if "error" not in m and m["method"] != "full"}
    save()
    if args.qlora_steps and _has_bnb():
        try:
            result["raywiz_qlora"] = raywiz_qlora(work, args.qlora_steps, on_gpu)
        except Exception as e:
            result["raywiz_qlora"] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
        print(json.dumps({k: v for k, v in result["raywiz_qlora"].items() if k != "losses"})[:3000], flush=True)
    result["bench_wall_s"] = time.perf_counter() - t0
    save()


def _has_bnb() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
