"""One GRPO step on one GPU: raywiz's against a naive loop kept here, in the same run (issue #23).

    python bench/rl_step.py            # one GPU: StarCoderBase-1B shape, 64 prompts x group 8, 512 new tokens
    python bench/rl_step.py --tiny     # CPU smoke run: tiny model, few prompts and tokens (JSON under /tmp)

Both run raywiz.rl.loop.GRPOLoop on the same model (random init, bf16 on GPU) and the same tasks; only the
rollouts and the scoring differ:
  raywiz   EngineRollouts (raywiz's engine on the trained module itself: continuous batching, one
           prefill per group, CUDA-graph decode steps) and ClusterRewardScorer (the sandbox workers of a
           local Ray cluster, one per spare CPU), rl.async_rewards on: each sample is scored as it ends.
           One warm-up step (decoder, graphs, workers) is left out; `steps` more are measured.
  naive    GenerateRollouts (HF generate, one prompt's group at a time), sequential sandboxed scoring
           (one check after another, after generation), the same update. HF generate of 64 x 8 x 512
           tokens takes tens of minutes, so the naive step runs on --naive-prompts prompts (x group)
           and each phase is scaled linearly to the full step (each prompt's group is its own
           generate call, each check its own process, the update is per sample).
Tasks: each prompt is a HumanEval prompt (real prompt lengths for prefill), its body closed with
`pass`, then a function that opens a string literal; assert tests count characters of the returned
string (raywiz.rl.toy). The response is cut to the literal's contents (toy_program), so every sample
is a program that parses and runs its asserts in the sandbox (a random model's raw text would mostly
fail to parse and be scored in no time).
`offline_gen_tokens_per_s` reruns bench/generation_throughput.py's raywiz measurement (HumanEval's 164
prompts, greedy, 512 tokens, a fresh engine on the same model) on the same card in the same process.
JSON goes to --out after every phase, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from types import SimpleNamespace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))

from generation_throughput import card, humaneval_file, load_prompts, run_raywiz, sync  # noqa: E402

from raywiz.rl.toy import toy_program  # noqa: E402

PHASES = ("generate_s", "score_s", "update_s", "sync_s")


def bench_tasks(n: int):
    """n assert-test tasks whose prompts start with HumanEval's prompts (raywiz.rl.toy's tests)."""
    from dataclasses import replace

    from raywiz.benchmarks import load_tasks
    from raywiz.rl.toy import toy_tasks

    code = [t.prompt.rstrip() + "\n    pass\n\n\n" for t in load_tasks("humaneval")]
    return [replace(task, prompt=code[i % len(code)] + task.prompt) for i, task in enumerate(toy_tasks(n))]


def rl_config(args, prompts: int, async_rewards: bool):
    from raywiz.rl.config import RLConfig

    return RLConfig.model_validate({
        "tasks": {"path": "bench"}, "group_size": args.group_size, "prompts_per_step": prompts,
        "mini_batch_size": min(args.mini_batch_size, prompts * args.group_size), "reward": args.reward,
        "lr": 1e-6, "async_rewards": async_rewards,
        "sampling": {"max_tokens": args.max_new_tokens, "temperature": 1.0, "top_p": 1.0}})


def timed_step(loop) -> dict:
    sync()
    metrics = loop.step()
    sync()
    generated = round(metrics["response_length"] * loop.cfg.prompts_per_step * loop.cfg.group_size)
    return {**{k: round(metrics[k], 4) for k in ("step_s", *PHASES)}, "generated_tokens": generated,
            "gen_tokens_per_s": round(generated / metrics["generate_s"], 1),
            "reward_mean": round(metrics["reward_mean"], 4)}


def mean_of(steps: list[dict]) -> dict:
    out = {k: round(sum(s[k] for s in steps) / len(steps), 4) for k in ("step_s", *PHASES, "generated_tokens")}
    out["gen_tokens_per_s"] = round(out["generated_tokens"] / out["generate_s"], 1)
    out["score_share"] = round(out["score_s"] / out["step_s"], 4)
    return out


def run_raywiz_step(model, tok, tasks, args) -> dict:
    from raywiz.benchmarks.score import ScoreSettings
    from raywiz.inference import EngineSpec
    from raywiz.rl.loop import GRPOLoop
    from raywiz.rl.reward_service import ClusterRewardScorer
    from raywiz.rl.rollout import EngineRollouts
    from raywiz.runtime import connect_ray

    cfg = rl_config(args, args.prompts, async_rewards=True)
    connect_ray(None)
    started = time.perf_counter()
    scorer = ClusterRewardScorer(cfg, ScoreSettings(workers=1), workers=args.score_workers, code_of=toy_program)
    workers_s = time.perf_counter() - started
    rollouts = EngineRollouts(model, tok, args.max_new_tokens, spec=EngineSpec(max_batch_size=args.lanes))
    loop = GRPOLoop(model, tok, tasks, cfg, rollouts=rollouts, scorer=scorer, code_of=toy_program)
    workers = len(scorer.cluster.actors)
    try:
        warmup = timed_step(loop)
        steps = [timed_step(loop) for _ in range(args.steps)]
        lanes = rollouts.engine._offline.slots if rollouts.engine._offline is not None else None
    finally:
        rollouts.close()
        scorer.close()
    return {**mean_of(steps), "steps": steps, "warmup_step": warmup, "score_workers": workers,
            "score_workers_start_s": round(workers_s, 2), "lanes": lanes}


def run_naive_step(model, tok, tasks, args) -> dict:
    """The naive loop on --naive-prompts prompts, each phase scaled to --prompts."""
    from raywiz.benchmarks.score import ScoreSettings
    from raywiz.rl.loop import GRPOLoop
    from raywiz.rl.reward_service import ThreadRewardScorer
    from raywiz.rl.rollout import GenerateRollouts

    measured = min(args.naive_prompts, args.prompts)
    cfg = rl_config(args, measured, async_rewards=False)
    loop = GRPOLoop(model, tok, tasks[:measured], cfg, code_of=toy_program,
                    rollouts=GenerateRollouts(model, tok, args.max_new_tokens, 1.0, 1.0),
                    scorer=ThreadRewardScorer(cfg, ScoreSettings(workers=1), workers=1, code_of=toy_program))
    try:
        step = timed_step(loop)
    finally:
        loop.scorer.close()
    scale = args.prompts / measured
    scaled = {k: round(step[k] * scale, 3) for k in PHASES}
    return {"step_s": round(sum(scaled.values()), 3), **scaled, "gen_tokens_per_s": step["gen_tokens_per_s"],
            "prompts_measured": measured, "scaled_to_prompts": args.prompts, "measured_step": step}


def run_offline(model, tok, args) -> dict:
    """bench/generation_throughput.py's raywiz measurement on this model (a fresh engine)."""
    model.eval()
    prompts = load_prompts(humaneval_file(), args.offline_prompts)
    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    options = SimpleNamespace(max_batch_size=None, cuda_graphs=None)
    result, _, engine = run_raywiz(model, tok, ids, args.max_new_tokens, options)
    engine.close()
    return {"tokens_per_s": result["tokens_per_s"], "warm_tokens_per_s": result["warm"]["tokens_per_s"],
            "prompts": len(ids)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny-gpt-bigcode, 4 prompts x 4, 16 tokens")
    ap.add_argument("--model", default="starcoderbase-1b-shape")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--mini-batch-size", type=int, default=8, help="samples per optimizer step of the update")
    ap.add_argument("--reward", choices=["binary", "fraction"], default="binary",
                    help="binary: one sandboxed check per sample; fraction: one per test (3 per sample)")
    ap.add_argument("--lanes", type=int, default=None, help="decode lanes (default: the engine's, 256 on GPU)")
    ap.add_argument("--score-workers", type=int, default=None,
                    help="sandbox workers (default: the CPUs less two, for the driver and the GPU's host work)")
    ap.add_argument("--steps", type=int, default=2, help="measured raywiz steps after the warm-up step")
    ap.add_argument("--naive-prompts", type=int, default=4, help="prompts the naive step runs on (then scaled)")
    ap.add_argument("--offline-prompts", type=int, default=None, help="HumanEval prompts of the offline rate "
                    "(default: all 164, as bench/generation_throughput.py)")
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: naive, offline")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/rl_step.json; with --tiny a "
                    "temporary file: no CPU numbers in bench/results)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.model, args.prompts, args.group_size = "tiny-gpt-bigcode", min(args.prompts, 4), min(args.group_size, 4)
        args.max_new_tokens, args.naive_prompts = min(args.max_new_tokens, 16), min(args.naive_prompts, 2)
        args.offline_prompts, args.steps = args.offline_prompts or 8, min(args.steps, 1)
        args.score_workers = args.score_workers or 2
    args.out = args.out or (os.path.join(tempfile.gettempdir(), "rl_step.tiny.json") if args.tiny else
                            os.path.join(REPO, "bench", "results", "rl_step.json"))
    args.score_workers = args.score_workers or max(1, (os.cpu_count() or 1) - 2)
    skip = set(filter(None, args.skip.split(",")))

    import torch
    import transformers

    from raywiz.modeling import build_model, decodable_tokenizer, load_tokenizer

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    started = time.perf_counter()
    with torch.device("cuda" if on_gpu else "cpu"):
        model = build_model(args.model, dtype=dtype, seed=0)
    tok = decodable_tokenizer(load_tokenizer(args.model), model.config.vocab_size)  # every id decodes to text
    tasks = bench_tasks(args.prompts)
    report = {"card": card(), "model": args.model, "dtype": str(dtype).removeprefix("torch."),
              "prompts": args.prompts, "group_size": args.group_size, "max_new_tokens": args.max_new_tokens,
              "reward": args.reward, "mini_batch_size": args.mini_batch_size, "torch": torch.__version__,
              "transformers": transformers.__version__, "model_init_s": round(time.perf_counter() - started, 2)}

    def save():
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)

    report["raywiz"] = run_raywiz_step(model, tok, tasks, args)
    save()
    if "naive" not in skip:
        report["naive"] = run_naive_step(model, tok, tasks, args)
        report["speedup"] = round(report["naive"]["step_s"] / report["raywiz"]["step_s"], 2)
        save()
    if "offline" not in skip:
        offline = run_offline(model, tok, args)
        report["offline_gen_tokens_per_s"] = offline["tokens_per_s"]
        report["offline_gen_tokens_per_s_warm"] = offline["warm_tokens_per_s"]
        report["offline_prompts"] = offline["prompts"]
        report["gen_vs_offline"] = round(report["raywiz"]["gen_tokens_per_s"] / offline["tokens_per_s"], 3)
        report["gen_vs_offline_warm"] = round(report["raywiz"]["gen_tokens_per_s"] / offline["warm_tokens_per_s"], 3)
        save()
    report["targets"] = {"speedup_at_least_5x": report.get("speedup", 0) >= 5,
                         "generation_at_least_70pct_of_offline": report.get("gen_vs_offline", 0) >= 0.7,
                         "score_share_under_10pct": report["raywiz"]["score_share"] < 0.1}
    save()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
