"""Train throughput on one GPU: WizardCoder's seed recipe vs raywiz, same card, same data, one run.

    python bench/train_throughput.py --out bench/results/train_throughput.json

- seed_recipe: HF Trainer + DeepSpeed ZeRO-3, padding to the longest sample in the batch, per-device
  batch 8, the model's default attention (what WizardCoder's train script does).
- raywiz: `raywiz train` itself (Ray Data -> Ray Train TorchTrainer -> DeepSpeed ZeRO-3, packed rows).
Model: StarCoderBase-1B shape, random init, bf16. Samples: lognormal lengths (median 350 tokens,
sigma 0.7, clipped to [64, 2048]), the first 35% prompt (labels masked). Useful tokens = non-padding
tokens. MFU: model FLOPs (6 N per token + causal attention) / 989 TFLOP/s (H100/H200 dense bf16).
Each recipe runs in its own process so GPU memory and DeepSpeed state never mix.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PEAK = 989e12
MODEL = "starcoderbase-1b-shape"


# ------------------------------------------------------------------ data
def one_token_words(tokenizer) -> list[str]:
    """Vocabulary words that tokenize to exactly one token with a leading space."""
    words = []
    for tok in tokenizer.get_vocab():
        if tok.startswith("\u0120") and tok[1:].isalpha() and len(tok) > 2:
            w = tok[1:]
            if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1:
                words.append(w)
    return sorted(words)


def make_samples(n: int, seed: int = 0) -> list[dict]:
    from raywiz.data.template import format_prompt
    from raywiz.modeling import load_tokenizer

    tok = load_tokenizer(MODEL)
    words = one_token_words(tok)
    template_len = len(tok(format_prompt(""), add_special_tokens=False)["input_ids"])
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = int(min(2048, max(64, math.exp(rng.gauss(math.log(350), 0.7)))))
        prompt_len = max(1, int(0.35 * length) - template_len)
        response_len = max(1, length - int(0.35 * length) - 1)  # -1: EOS
        out.append({"sample_id": f"b{i}", "instruction": " ".join(rng.choice(words) for _ in range(prompt_len)),
                    "output": " ".join(rng.choice(words) for _ in range(response_len))})
    return out


# ------------------------------------------------------------------ seed recipe (subprocess)
def seed_recipe(data_file: str, steps: int, out_file: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from raywiz.data.tokenize import tokenize_sample
    from raywiz.modeling import count_parameters, load_tokenizer, model_config

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    config = model_config(MODEL)
    n_params = count_parameters(config)  # before ZeRO-3 is switched on by TrainingArguments
    tok = load_tokenizer(MODEL)
    rows = [json.loads(line) for line in open(data_file)]
    samples = [tokenize_sample(tok, r["instruction"], r["output"]) for r in rows]
    dataset = [{"input_ids": s.input_ids, "labels": s.labels} for s in samples]
    stats = {"useful_tokens": 0, "sum_sq": 0}

    def pad_to_longest(batch):
        longest = max(len(b["input_ids"]) for b in batch)
        stats["useful_tokens"] += sum(len(b["input_ids"]) for b in batch)
        stats["sum_sq"] += sum(len(b["input_ids"]) ** 2 for b in batch)
        ids = torch.full((len(batch), longest), tok.pad_token_id)
        labels = torch.full((len(batch), longest), -100)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    ds_config = {
        "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                              "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
    }
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8, bf16=True,
                             learning_rate=2e-5, warmup_steps=3, lr_scheduler_type="cosine", max_steps=steps,
                             logging_steps=10**6, save_strategy="no", report_to=[], deepspeed=ds_config,
                             remove_unused_columns=False, dataloader_num_workers=0, seed=42,  # collator counts tokens in-process
                             optim="adamw_torch_fused")  # the same optimizer kernel raywiz uses
    # Created after TrainingArguments, so transformers builds it inside zero.Init, as the seed script does.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)

    class Timer(TrainerCallback):
        warmup = 3

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == self.warmup:
                torch.cuda.synchronize()
                self.t0, self.tok0, self.sq0 = time.perf_counter(), stats["useful_tokens"], stats["sum_sq"]

        def on_train_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.t1, self.tok1, self.sq1 = time.perf_counter(), stats["useful_tokens"], stats["sum_sq"]

    timer = Timer()
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=pad_to_longest, callbacks=[timer])
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    # The collator runs ahead of the step (dataloader prefetch); the counts are exact over the window
    # to within the prefetch depth, which is small against the steps measured.
    seconds = timer.t1 - timer.t0
    tokens = timer.tok1 - timer.tok0
    flops = 6.0 * n_params * tokens + 6.0 * config.n_layer * config.n_embd * (timer.sq1 - timer.sq0)
    result = {"useful_tokens_per_s": tokens / seconds, "mfu": flops / seconds / PEAK,
              "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "steps_measured": steps - timer.warmup,
              "per_device_batch": 8, "padding": "longest in batch", "seconds": seconds}
    Path(out_file).write_text(json.dumps(result))


# ------------------------------------------------------------------ raywiz (subprocess: `raywiz train`)
def raywiz_run(data_file: str, workdir: str, name: str, steps: int, micro: int, accum: int, attn: str,
               extra: list[str], model: str = MODEL, num_workers: int = 1, warmup: int = 3) -> dict:
    """One `raywiz train` run; throughput over the steps after `warmup`. accum is per worker."""
    job = Path(workdir) / f"{name}.yaml"
    job.write_text(f"""
name: {name}
storage: {workdir}/runs
model: {{name_or_path: {model}, attn_implementation: {attn}}}
train:
  data: {{paths: [{data_file}], max_length: 2048}}
  optim: {{epochs: 1, max_steps: {steps}, global_batch_size: {micro * accum * num_workers}, micro_batch_size: {micro},
          lr: 2.0e-5, warmup_steps: 3}}
  scaling: {{num_workers: {num_workers}, use_gpu: true, cpus_per_worker: 4}}
  checkpoint: {{every_n_steps: 100000, export_hf: never}}
  max_failures: 0
""")
    env = dict(os.environ, PYTHONPATH=f"{REPO}:{os.environ.get('PYTHONPATH', '')}", WANDB_MODE="disabled")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "raywiz.cli", "train", str(job), *sum([["--set", e] for e in extra], [])],
                          capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"error": (proc.stdout[-2000:] + proc.stderr[-6000:])}
    rows = [json.loads(line) for line in open(Path(workdir) / "runs" / name / "train" / "metrics.jsonl")]
    steady = [r for r in rows if r["step"] > warmup]
    secs = sum(r["step_seconds"] for r in steady)
    tokens = sum(r["useful_tokens_per_s"] * r["step_seconds"] for r in steady)
    return {"useful_tokens_per_s": tokens / secs,
            "mfu": sum(r["mfu"] * r["step_seconds"] for r in steady) / secs,
            "peak_memory_gib": max(r["peak_memory_gib"] for r in rows),
            "data_wait_fraction": sum(r["data_wait_fraction"] * r["step_seconds"] for r in steady) / secs,
            "steps_measured": len(steady), "micro_batch_rows": micro, "grad_accum": accum, "row_tokens": 2048,
            "num_workers": num_workers, "model": model, "attn_implementation": attn, "overrides": extra,
            "wall_seconds_total": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "bench/results/train_throughput.json"))
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--seed-steps", type=int, default=25)
    ap.add_argument("--raywiz-steps", type=int, default=15)
    ap.add_argument("--variants", default="sdpa:8:4",
                    help="comma list of attn:micro:accum raywiz variants; the best is reported as `raywiz`")
    ap.add_argument("--skip-seed", action="store_true")
    ap.add_argument("--_seed_worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._seed_worker:
        seed_recipe(args._seed_worker[0], int(args._seed_worker[1]), args._seed_worker[2])
        return

    import torch

    work = tempfile.mkdtemp(prefix="raywiz-bench-")
    data = os.path.join(work, "samples.jsonl")
    with open(data, "w") as f:
        for s in make_samples(args.samples):
            f.write(json.dumps(s) + "\n")
    result = {"card": torch.cuda.get_device_name(0), "model": MODEL, "peak_flops": PEAK,
              "samples": {"n": args.samples, "length": "lognormal median 350, sigma 0.7, [64, 2048]",
                          "prompt_fraction": 0.35}}
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if not args.skip_seed:
        seed_out = os.path.join(work, "seed.json")
        p = subprocess.run([sys.executable, __file__, "--_seed_worker", data, str(args.seed_steps), seed_out],
                           capture_output=True, text=True)
        result["seed_recipe"] = json.loads(Path(seed_out).read_text()) if p.returncode == 0 else {
            "error": p.stdout[-2000:] + p.stderr[-6000:]}
    runs = []
    for i, v in enumerate(filter(None, args.variants.split(","))):
        attn, micro, accum, *extra = v.split(":")
        runs.append(raywiz_run(data, work, f"bench{i}", args.raywiz_steps, int(micro), int(accum), attn, extra))
    result["raywiz_variants"] = runs
    ok = [r for r in runs if "error" not in r]
    if ok:
        result["raywiz"] = max(ok, key=lambda r: r["useful_tokens_per_s"])
        if "useful_tokens_per_s" in result.get("seed_recipe", {}):
            result["speedup"] = result["raywiz"]["useful_tokens_per_s"] / result["seed_recipe"]["useful_tokens_per_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
