"""Train throughput on one GPU: WizardCoder's seed recipe vs raywiz vs a plain PyTorch loop, same card,
same data, one run ("one_call": true).

    python bench/train_throughput.py --out bench/results/train_throughput.json
    python bench/train_throughput.py --cpu      # smoke test of every part with a tiny model, no GPU
    python bench/train_throughput.py --engine-loop --engines deepspeed,fsdp2   # the engines alone, < 1 min:
                                                           # bench/results/train_engines.json
    python bench/train_throughput.py --engines deepspeed,fsdp2   # the default variant through `raywiz train` per engine

- seed_recipe: HF Trainer + DeepSpeed ZeRO-3, padding to the longest sample in the batch, per-device
  batch 8, the model's default attention (what WizardCoder's train script does).
- raywiz: `raywiz train` itself (Ray Data -> Ray Train TorchTrainer -> DeepSpeed ZeRO-3, packed rows), one
  run per variant (attention, fused loss, ZeRO stage); each profiles one step (train.debug.profile_step).
- plain_loop: the same packed rows through HF GPT-BigCode with no Ray and no DeepSpeed (fused AdamW):
  what the model alone costs, so raywiz's overhead is measured in the same call; profiled too.
- engines (--engines deepspeed,fsdp2): the first variant once per `train.engine`; --engine-loop compares them
  alone: raywiz's create_engine and FinetuneRecipe.train_step on the same packed rows, one process, no Ray.
- checks: per-token losses of varlen attention vs SDPA's block-diagonal mask (bf16, 1e-2 relative), and
  the fused losses vs logits -> fp32 cross-entropy.

Measured (bench/results/train_throughput.json, one NVIDIA H200, one call, 2026-12-03; --variants
auto:16:2 --plain-variants varlen+liger+bf16): seed recipe 3,940 useful tok/s (2.8% MFU); raywiz's
default (ZeRO-2 engine for resident weights, varlen + liger, 16 x 2 rows) 66,511 (47.2%, 70.5 GiB, data
wait 0.16%), 16.9x the seed; the plain bf16 loop 71,797 (50.9%): raywiz's overhead 7.4%.
--engine-loop (bench/results/train_engines.json, same card, next command of the same call): DeepSpeed
65,818 (46.5%), FSDP2 69,462 (49.1%), 1.06x.
Model: StarCoderBase-1B shape, random init, bf16. Samples: lognormal lengths (median 350 tokens,
sigma 0.7, clipped to [64, 2048]), the first 35% prompt (labels masked). Useful tokens = non-padding
tokens. MFU: model FLOPs (6 N per token + causal attention) / 989 TFLOP/s (H100/H200 dense bf16).
Each recipe runs in its own process so GPU memory and DeepSpeed state never mix.
"""

from __future__ import annotations

import argparse
import contextlib
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
TINY = "tiny-gpt-bigcode"


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


def make_samples(n: int, seed: int = 0, max_len: int = 2048, median: int = 350) -> list[dict]:
    from raywiz.data.template import format_prompt
    from raywiz.modeling import load_tokenizer

    tok = load_tokenizer(MODEL)
    words = one_token_words(tok)
    template_len = len(tok(format_prompt(""), add_special_tokens=False)["input_ids"])
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = int(min(max_len, max(64, math.exp(rng.gauss(math.log(median), 0.7)))))
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
               extra: list[str], model: str = MODEL, num_workers: int = 1, warmup: int = 3, use_gpu: bool = True,
               max_length: int = 2048) -> dict:
    """One `raywiz train` run; throughput over the steps after `warmup` (the profiled step is step `warmup`)."""
    job = Path(workdir) / f"{name}.yaml"
    attn_yaml = "null" if attn == "auto" else attn
    job.write_text(f"""
name: {name}
storage: {workdir}/runs
model: {{name_or_path: {model}, attn_implementation: {attn_yaml}}}
train:
  data: {{paths: [{data_file}], max_length: {max_length}}}
  optim: {{epochs: 1, max_steps: {steps}, global_batch_size: {micro * accum * num_workers}, micro_batch_size: {micro},
          lr: 2.0e-5, warmup_steps: 3}}
  scaling: {{num_workers: {num_workers}, use_gpu: {str(use_gpu).lower()}, cpus_per_worker: {4 if use_gpu else 1}}}
  checkpoint: {{every_n_steps: 100000, export_hf: never}}
  debug: {{profile_step: {warmup}}}
  max_failures: 0
""")
    env = dict(os.environ, PYTHONPATH=f"{REPO}:{os.environ.get('PYTHONPATH', '')}", WANDB_MODE="disabled")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "raywiz.cli", "train", str(job), *sum([["--set", e] for e in extra], [])],
                          capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"error": (proc.stdout[-2000:] + proc.stderr[-6000:]), "attn_implementation": attn, "overrides": extra}
    train = Path(workdir) / "runs" / name / "train"
    rows = [json.loads(line) for line in open(train / "metrics.jsonl")]
    steady = [r for r in rows if r["step"] > warmup]
    secs = sum(r["step_seconds"] for r in steady)
    tokens = sum(r["tokens_per_s"] * r["step_seconds"] for r in steady)
    mfus = [r["mfu"] for r in steady if r["mfu"] is not None]
    profile = train / f"profile_step_{warmup}.json"
    # the driver prints recipe.setup's "train: attention ..., fused loss ..., ... weights, <engine>"
    chosen = [line.split("train: ", 1)[1] for line in (proc.stderr + proc.stdout).splitlines() if "train: attention" in line]
    return {"useful_tokens_per_s": tokens / secs,
            "mfu": sum(r["mfu"] * r["step_seconds"] for r in steady) / secs if mfus else None,
            "peak_memory_gib": max((r["peak_memory_gib"] or 0) for r in rows),
            "data_wait_fraction": sum(r["data_wait"] * r["step_seconds"] for r in steady) / secs,
            "steps_measured": len(steady), "micro_batch_rows": micro, "grad_accum": accum, "row_tokens": max_length,
            "num_workers": num_workers, "model": model, "attn_implementation": attn, "overrides": extra,
            "chosen": chosen[0] if chosen else None, "final_loss": rows[-1]["loss"],
            "metrics_keys": sorted(rows[-1]), "wall_seconds_total": wall,
            "profile": json.loads(profile.read_text()) if profile.exists() else None}


# ------------------------------------------------------------------ plain PyTorch loop (subprocess)
def optimizer_step(opt, params: list, master: list | None) -> None:
    """Clip and step; with `master` (fp32 copies of bf16 `params`, DeepSpeed's bf16 layout) the step runs
    on the copies and the result is copied back into the bf16 weights."""
    import torch

    if master:
        for m, p in zip(master, params):
            m.grad = p.grad.float()
            p.grad = None
    torch.nn.utils.clip_grad_norm_(master or params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if master:
        with torch.no_grad():
            torch._foreach_copy_(params, master)


def packed_batches(data_file: str, model: str, seq_len: int, micro: int) -> list[dict]:
    """The same samples, tokenized and packed by raywiz's own packer, as micro-batches (host tensors)."""
    import numpy as np
    import torch

    from raywiz.data.pack import pack
    from raywiz.data.tokenize import fit_to_length, tokenize_sample
    from raywiz.modeling import load_tokenizer
    from raywiz.training.kernels import cu_seqlens_from_position_ids

    tok = load_tokenizer(model)
    rows_in = [json.loads(line) for line in open(data_file)]
    samples = []
    for r in rows_in:
        s = fit_to_length(tokenize_sample(tok, r["instruction"], r["output"]), seq_len, "drop")
        if s is not None:
            samples.append((r["sample_id"], s.input_ids, s.labels))
    rows = []
    for i in range(0, len(samples), 1024):
        rows += pack(samples[i:i + 1024], seq_len, tok.pad_token_id)
    out = []
    for i in range(0, len(rows) - micro + 1, micro):
        chunk = rows[i:i + micro]
        pos = np.array([r["position_ids"] for r in chunk])
        cu, m = cu_seqlens_from_position_ids(pos)
        out.append({"input_ids": torch.tensor([r["input_ids"] for r in chunk]),
                    "labels": torch.tensor([r["labels"] for r in chunk]), "position_ids": torch.tensor(pos),
                    "cu_seqlens": torch.from_numpy(cu), "max_seqlen": m,
                    "n_tokens": sum(r["n_tokens"] for r in chunk), "sum_sq_len": sum(r["sum_sq_len"] for r in chunk),
                    "n_label_tokens": sum(r["n_label_tokens"] for r in chunk)})
    return out


def timed_steps(batches: list[dict], steps: int, accum: int, warmup: int, step, on_gpu: bool):
    """Run `step(micro_batches)` `steps` times: step `warmup` - 1 is profiled (untimed), those after are timed.
    Returns (seconds, useful tokens, sum of squared lengths, steps timed, profile summary, every step's result)."""
    import torch

    from raywiz.training.metrics import profile_summary

    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    it = iter(batches)
    times, tokens, sq, profile, outs = [], 0, 0, None, []
    for i in range(steps):
        mb = [next(it) for _ in range(accum)]
        sync()
        t = time.perf_counter()
        if i == warmup - 1:  # profile one step in the warm-up
            acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
            with torch.profiler.profile(activities=acts) as prof:
                outs.append(step(mb))
                sync()
            profile = profile_summary(prof, time.perf_counter() - t)
            continue
        outs.append(step(mb))
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
            tokens += sum(b["n_tokens"] for b in mb)
            sq += sum(b["sum_sq_len"] for b in mb)
    return sum(times), tokens, sq, len(times), profile, outs


def plain_loop(data_file: str, model_name: str, variants: list[str], steps: int, micro: int, accum: int,
               seq_len: int, out_file: str, warmup: int = 3) -> None:
    """HF model + fused AdamW, no Ray/DeepSpeed. Variant: attn+loss+weights, e.g. varlen+liger+bf16.
    weights: bf16 (pure bf16, as NOTES measured), bf16master (bf16 compute, fp32 master in the optimizer,
    what DeepSpeed's bf16 mode does), fp32autocast (fp32 weights, bf16 autocast)."""
    import torch

    from raywiz.modeling import build_model, model_config
    from raywiz.training.kernels import register_varlen_attention
    from raywiz.training.metrics import model_shape, step_flops
    from raywiz.train.recipe import loss_scale, token_loss_sum

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = model_config(model_name)
    layers, width = model_shape(config)
    batches = packed_batches(data_file, model_name, seq_len, micro)
    results = []
    for variant in variants:
        attn, loss, weights = variant.split("+")
        try:
            torch.manual_seed(0)
            attn_impl = register_varlen_attention() if attn == "varlen" else attn
            on_gpu = device.type == "cuda"
            dtype = torch.float32 if (weights == "fp32autocast" or not on_gpu) else torch.bfloat16
            with torch.device(device):  # random init on the GPU: minutes faster than on the host for 1B
                model = build_model(model_name, dtype=dtype, attn_implementation=attn_impl, seed=0).to(device).train()
            n_params = sum(p.numel() for p in model.parameters())
            params = [p for p in model.parameters() if p.requires_grad]
            master = [p.detach().float().clone().requires_grad_(True) for p in params] if weights == "bf16master" else None
            opt = torch.optim.AdamW(master or params, lr=2e-5, fused=on_gpu)
            autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if weights == "fp32autocast" and on_gpu
                        else contextlib.nullcontext())
            if on_gpu:
                torch.cuda.reset_peak_memory_stats()

            def step(micro_batches):
                labels = sum(b["n_label_tokens"] for b in micro_batches)
                for b in micro_batches:
                    b = {k: (v.pin_memory() if on_gpu and torch.is_tensor(v) else v) for k, v in b.items()}
                    with autocast:
                        loss_sum = token_loss_sum(model, b, device, loss, attn == "varlen")
                    (loss_sum * loss_scale(labels, 1, 1)).backward()
                optimizer_step(opt, params, master)

            secs, tokens, sq, n_timed, profile, _ = timed_steps(batches, steps, accum, warmup, step, on_gpu)
            flops = step_flops(n_params, tokens, sq, layers, width)
            results.append({"variant": variant, "useful_tokens_per_s": tokens / secs,
                            "mfu": flops / secs / PEAK if on_gpu else None, "steps_measured": n_timed,
                            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
                            "profile": profile})
            model = opt = master = params = None  # free them before the next variant (not `del`: the closure reads them)
        except Exception as e:  # one variant failing must not lose the others
            import traceback

            results.append({"variant": variant, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    Path(out_file).write_text(json.dumps(results))


def engine_loop(data_file: str, model_name: str, engines: list[str], steps: int, micro: int, accum: int,
                seq_len: int, out_file: str, warmup: int = 2) -> None:
    """raywiz's own engines and training step (FinetuneRecipe.train_step) on the same packed rows, in one
    process with no Ray around them: the engine comparison, in well under a minute on a GPU.

    One rank (a world of 1: nccl on GPU, gloo on CPU), each engine built by raywiz.training.engine.create_engine
    from the same job config but `train.engine`, the step profiled once (warm-up), then `steps - warmup` timed.
    """
    import gc

    import torch
    import torch.distributed as dist

    from raywiz.config import parse_job
    from raywiz.modeling import count_parameters, model_config
    from raywiz.training.engine import create_engine
    from raywiz.training.metrics import model_shape, step_flops
    from raywiz.train.recipe import FinetuneRecipe, StepPlan, TrainState

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda:0" if on_gpu else "cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29531", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl" if on_gpu else "gloo", rank=0, world_size=1)
    config = model_config(model_name)
    layers, width = model_shape(config)
    n_params = count_parameters(config)
    batches = packed_batches(data_file, model_name, seq_len, micro)
    if on_gpu:
        batches = [{k: v.pin_memory() if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]
    results = []
    for engine_name in engines:
        try:
            job = parse_job({"name": "bench", "model": {"name_or_path": model_name}, "train": {
                "engine": engine_name, "data": {"max_length": seq_len},
                "optim": {"global_batch_size": micro * accum, "micro_batch_size": micro, "lr": 2e-5, "warmup_steps": 3,
                          "max_steps": steps}}})
            t = time.perf_counter()
            eng = create_engine(job.model, job.train, on_gpu, device, n_params=n_params)
            setup_s = time.perf_counter() - t
            # The recipe's own step, without Ray Train around it: train_step reads only these attributes.
            recipe = object.__new__(FinetuneRecipe)
            recipe.__dict__.update(
                tc=job.train, plan=StepPlan(steps, steps, micro * accum, 0, n_params), state=TrainState(), accum=accum,
                world=1, device=device, on_gpu=on_gpu, driver=eng.driver, fused=eng.fused_loss,
                varlen=eng.attn_implementation == "raywiz_varlen")
            if on_gpu:
                torch.cuda.reset_peak_memory_stats()
            def step(micro_batches):
                out = recipe.train_step(micro_batches)
                recipe.state.step += 1
                return out.loss_sum

            secs, tokens, sq, n_timed, profile, loss_sums = timed_steps(batches, steps, accum, warmup, step, on_gpu)
            # per-step mean token loss (read back after the timing)
            losses = [ls.item() / max(1, sum(b["n_label_tokens"] for b in batches[i * accum:(i + 1) * accum]))
                      for i, ls in enumerate(loss_sums)]
            flops = step_flops(n_params, tokens, sq, layers, width)
            results.append({"engine": engine_name, "detail": eng.description, "attn_implementation": eng.attn_implementation,
                            "fused_loss": eng.fused_loss, "useful_tokens_per_s": tokens / secs,
                            "mfu": flops / secs / PEAK if on_gpu else None, "steps_measured": n_timed,
                            "setup_s": setup_s, "losses": losses,
                            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
                            "profile": profile})
            recipe = eng = None  # free the engine before the next one (not `del`: the closure reads recipe)
        except Exception as e:  # one engine failing must not lose the other
            import traceback

            results.append({"engine": engine_name, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]})
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
        Path(out_file).write_text(json.dumps(results))  # after each engine: a run cut short keeps the first


def checks(data_file: str, model_name: str, seq_len: int, out_file: str) -> None:
    """Varlen attention vs SDPA's block-diagonal mask, and fused vs unfused loss, on real packed rows."""
    import torch
    import torch.nn.functional as F

    from raywiz.data.tokenize import IGNORE_INDEX
    from raywiz.modeling import build_model
    from raywiz.training import kernels

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch = packed_batches(data_file, model_name, seq_len, 2)[0]
    ids, pos, labels = (batch[k].to(device) for k in ("input_ids", "position_ids", "labels"))
    target = kernels.shift_labels(labels).reshape(-1)
    keep = target != IGNORE_INDEX
    out = {"dtype": str(dtype), "rows": 2, "row_tokens": seq_len, "samples_in_rows": len(batch["cu_seqlens"]) - 1}
    with torch.no_grad(), torch.device(device):
        ref_model = build_model(model_name, dtype=dtype, attn_implementation="sdpa", seed=0).to(device).eval()
        logits = ref_model(input_ids=ids, position_ids=pos, use_cache=False).logits
        ref = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target, reduction="none")[keep]
        vmodel = build_model(model_name, dtype=dtype, attn_implementation=kernels.register_varlen_attention(),
                             seed=0).to(device).eval()
        vlogits = vmodel(input_ids=ids, position_ids=pos, use_cache=False, **kernels.varlen_kwargs(batch, device)).logits
        got = F.cross_entropy(vlogits.float().reshape(-1, vlogits.shape[-1]), target, reduction="none")[keep]
        rel = ((got - ref).norm() / ref.norm()).item()
        out["varlen_vs_sdpa_block_diagonal"] = {"per_token_loss_rel_l2": rel, "max_abs": (got - ref).abs().max().item(),
                                                "ok_1e-2": rel < 1e-2}
        for impl in ["chunked"] + (["liger"] if kernels._liger() is not None and device.type == "cuda" else []):
            with kernels.fused_loss_head(ref_model, labels, impl):
                fused = ref_model(input_ids=ids, position_ids=pos, use_cache=False).logits
            r = abs(fused.item() - ref.sum().item()) / abs(ref.sum().item())
            out[f"fused_{impl}_vs_logits"] = {"loss_sum_rel": r, "ok_1e-3": r < 1e-3}
    Path(out_file).write_text(json.dumps(out))


def _sub(args: list[str], timeout: float) -> tuple[bool, str]:
    try:
        p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, PYTHONPATH=f"{REPO}:{os.environ.get('PYTHONPATH', '')}"))
    except subprocess.TimeoutExpired:
        return False, "timed out"
    return p.returncode == 0, p.stdout[-2000:] + p.stderr[-6000:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="default: bench/results/train_throughput.json, "
                    "or train_engines.json with --engine-loop")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed-steps", type=int, default=15)
    ap.add_argument("--raywiz-steps", type=int, default=11)
    ap.add_argument("--plain-steps", type=int, default=10)
    ap.add_argument("--variants", default="auto:16:2,auto:8:4,sdpa:8:4:train.fused_loss=off,"
                    "auto:8:4:train.deepspeed.resident_params=never",
                    help="comma list of attn:micro:accum[:override...] raywiz variants, in priority order; the first "
                    "is raywiz's default configuration and is reported as `raywiz`")
    ap.add_argument("--engines", default="deepspeed",
                    help="comma list of train.engine values: the first raywiz variant runs once per engine (the first "
                    "engine is the default and is reported as `raywiz`), e.g. deepspeed,fsdp2")
    ap.add_argument("--engine-loop", action="store_true",
                    help="only compare the --engines in one process, with raywiz's engine and step but no Ray "
                    "(about 45 s on an H200 for the 1B shape); no seed recipe, plain loop or checks")
    ap.add_argument("--engine-steps", type=int, default=6)
    ap.add_argument("--plain-variants", default="varlen+liger+bf16,varlen+liger+bf16master")
    ap.add_argument("--budget-s", type=float, default=400, help="start no new part after this many seconds")
    ap.add_argument("--skip-seed", action="store_true")
    ap.add_argument("--seed-after", type=int, default=1, help="run the seed recipe after this many raywiz variants")
    ap.add_argument("--cpu", "--tiny", dest="cpu", action="store_true",
                    help="smoke test on CPU: tiny model, short rows, few steps (numbers mean nothing)")
    ap.add_argument("--_seed_worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--_plain_worker", nargs=8, help=argparse.SUPPRESS)
    ap.add_argument("--_checks_worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--_engine_worker", nargs=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._seed_worker:
        seed_recipe(args._seed_worker[0], int(args._seed_worker[1]), args._seed_worker[2])
        return
    if args._plain_worker:
        d, m, v, s, mi, ac, sl, o = args._plain_worker
        plain_loop(d, m, v.split(","), int(s), int(mi), int(ac), int(sl), o)
        return
    if args._engine_worker:
        d, m, e, s, mi, ac, sl, o = args._engine_worker
        engine_loop(d, m, e.split(","), int(s), int(mi), int(ac), int(sl), o)
        return
    if args._checks_worker:
        checks(args._checks_worker[0], args._checks_worker[1], int(args._checks_worker[2]), args._checks_worker[3])
        return

    import torch

    t0 = time.perf_counter()
    model, seq_len, micro, accum = MODEL, 2048, 8, 4
    if args.cpu:
        model, seq_len, args.samples, args.skip_seed = TINY, 256, 400, True
        args.raywiz_steps, args.plain_steps = 6, 5
        args.variants = "auto:2:2,varlen:2:2:train.fused_loss=chunked"
        args.plain_variants = "varlen+chunked+bf16,sdpa+off+bf16"
        micro, accum = 2, 2
    engines = [e for e in args.engines.split(",") if e]
    args.out = args.out or str(REPO / "bench/results" / ("train_engines.json" if args.engine_loop else "train_throughput.json"))
    if args.engine_loop:
        if args.engine_steps < 3:  # two warm-up steps (the second profiled), then the timed ones
            ap.error("--engine-steps must be at least 3")
        # rows for engine-steps x accum micro-batches of 16 rows, and no more (tokenizing is host time)
        # 8 x 4 rows: both engines' peaks (~45 GiB each on an H200) fit together, should the first not free all
        micro, accum = (2, 2) if args.cpu else (8, 4)
        args.samples = 400 if args.cpu else 1300
    work = tempfile.mkdtemp(prefix="raywiz-bench-")
    data = os.path.join(work, "samples.jsonl")
    with open(data, "w") as f:
        for s in make_samples(args.samples, max_len=seq_len, median=350 if seq_len >= 2048 else 60):
            f.write(json.dumps(s) + "\n")
    on_gpu = torch.cuda.is_available() and not args.cpu
    result = {"card": torch.cuda.get_device_name(0) if on_gpu else "cpu (smoke test: numbers mean nothing)",
              "one_call": True, "model": model, "peak_flops": PEAK, "row_tokens": seq_len,
              "samples": {"n": args.samples, "length": f"lognormal median 350, sigma 0.7, [64, {seq_len}]",
                          "prompt_fraction": 0.35}, "skipped_for_time": []}
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

    def over_budget(part: str) -> bool:
        if time.perf_counter() - t0 > args.budget_s:
            result["skipped_for_time"].append(part)
            return True
        return False

    if args.engine_loop:
        out = os.path.join(work, "engines.json")
        ok, logs = _sub(["--_engine_worker", data, model, ",".join(engines), str(args.engine_steps), str(micro),
                         str(accum), str(seq_len), out], 300)
        done = json.loads(Path(out).read_text()) if os.path.exists(out) else []
        result["engine_loop"] = done if ok else done + [{"error": logs}]
        result["bench_wall_s"] = time.perf_counter() - t0
        save(result, args.out)
        print(json.dumps(result.get("summary"), indent=2))
        return
    # 1. correctness checks, and the plain loop (cheap: no Ray, no DeepSpeed)
    chk = os.path.join(work, "checks.json")
    ok, logs = _sub(["--_checks_worker", data, model, str(seq_len), chk], 300)
    result["checks"] = json.loads(Path(chk).read_text()) if ok else {"error": logs}
    plain_out = os.path.join(work, "plain.json")
    ok, logs = _sub(["--_plain_worker", data, model, args.plain_variants, str(args.plain_steps), str(micro), str(accum),
                     str(seq_len), plain_out], 400)
    result["plain_loop"] = json.loads(Path(plain_out).read_text()) if ok else [{"error": logs}]
    save(result, args.out)
    # 2. raywiz, variants in priority order; the seed recipe after the first two (its number changes least)
    runs = result["raywiz_variants"] = []
    variants = list(filter(None, args.variants.split(",")))
    if engines != ["deepspeed"]:  # the default configuration once per engine, first; then the other variants
        first = variants[0]
        variants = [f"{first}:train.engine={e}" for e in engines] + variants[1:]
    for i, v in enumerate(variants):
        if i == args.seed_after:
            run_seed(args, data, work, result, over_budget)
        if i and over_budget(f"raywiz variant {v}"):
            continue
        attn, mi, ac, *extra = v.split(":")
        if engines[0] != "deepspeed" and i >= len(engines):
            extra.append(f"train.engine={engines[0]}")
        runs.append(raywiz_run(data, work, f"bench{i}", args.raywiz_steps, int(mi), int(ac), attn, extra,
                               model=model, use_gpu=on_gpu, max_length=seq_len))
        if i == 0 and "error" not in runs[0]:
            result["raywiz"] = runs[0]
        print(json.dumps({k: runs[-1].get(k) for k in ("attn_implementation", "overrides", "useful_tokens_per_s", "mfu",
                                                       "chosen", "error")}), flush=True)
        save(result, args.out)
    if "seed_recipe" not in result:
        run_seed(args, data, work, result, over_budget)
    result["bench_wall_s"] = time.perf_counter() - t0
    save(result, args.out)
    print(json.dumps(result.get("summary"), indent=2))


def run_seed(args, data: str, work: str, result: dict, over_budget) -> None:
    if args.skip_seed or over_budget("seed recipe"):
        return
    seed_out = os.path.join(work, "seed.json")
    ok, logs = _sub(["--_seed_worker", data, str(args.seed_steps), seed_out], 300)
    result["seed_recipe"] = json.loads(Path(seed_out).read_text()) if ok else {"error": logs}
    save(result, args.out)


def save(result: dict, out: str) -> None:
    """Written after every part, so a call cut short still brings back what it measured."""
    summarize(result)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))


def summarize(result: dict) -> None:
    """Speedup, overhead against the plain loop, and the issue's targets, with the card named."""
    rw, seed = result.get("raywiz"), result.get("seed_recipe", {})
    plain = [p for p in result.get("plain_loop", []) if "useful_tokens_per_s" in p]
    s = {"card": result["card"]}
    if rw:
        s["raywiz"] = {k: rw.get(k) for k in ("useful_tokens_per_s", "mfu", "peak_memory_gib", "data_wait_fraction",
                                               "chosen")}
    if rw and "useful_tokens_per_s" in seed:
        s["speedup_vs_seed"] = rw["useful_tokens_per_s"] / seed["useful_tokens_per_s"]
    for p in plain:
        if rw:
            s[f"overhead_vs_plain[{p['variant']}]"] = 1 - rw["useful_tokens_per_s"] / p["useful_tokens_per_s"]
    if rw and rw.get("mfu") is not None:
        s["targets"] = {"mfu>=45%": rw["mfu"] >= 0.45,
                        "speedup>=10x": s.get("speedup_vs_seed", 0) >= 10 if "speedup_vs_seed" in s else None,
                        "data_wait<2%": rw["data_wait_fraction"] < 0.02}
    by_engine = {}
    for r in result.get("raywiz_variants", []):
        e = next((o.split("=", 1)[1] for o in r.get("overrides", []) if o.startswith("train.engine=")), None)
        if e and "useful_tokens_per_s" in r:
            by_engine.setdefault(e, r)
    loop = [r for r in result.get("engine_loop", []) if "useful_tokens_per_s" in r]
    for name, rows in (("engines", list(by_engine.items())), ("engine_loop", [(r["engine"], r) for r in loop])):
        if rows:
            s[name] = {e: {k: r.get(k) for k in ("useful_tokens_per_s", "mfu", "peak_memory_gib")} for e, r in rows}
            if len(rows) > 1:
                s[name][f"{rows[1][0]}_vs_{rows[0][0]}"] = rows[1][1]["useful_tokens_per_s"] / rows[0][1]["useful_tokens_per_s"]
    if len(loop) > 1:  # same rows, same seed: the engines' per-step losses (bf16 on GPU: close, not equal)
        a, b = loop[0]["losses"], loop[1]["losses"]
        s["engine_loop"]["loss_max_rel_diff"] = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    result["summary"] = s


if __name__ == "__main__":
    main()
