"""`raywiz evolve JOB.yaml`: Code Evol-Instruct from seeds to sealed instruction shards.

Read top to bottom, this is the whole stage:

  1. load the seeds (Code Alpaca records); answer any seed that has no output;
  2. screen them: drop benchmark-contaminated and duplicate instructions;
  3. for each round: evolve the previous round's survivors with a drawn method, eliminate failed
     evolutions, answer the rest (with `verify` on: tests and candidate answers, run in the sandbox on
     the cluster, raywiz/evolve/verify.py), screen them; survivors become the next round's parents;
  4. write each round's kept samples as Parquet shards as soon as the round ends;
  5. write the report, then seal the directory with a manifest (kind "instruction_shards").

Resume and idempotence come from the request cache (``raywiz/evolve/cache.py``): a rerun after a
kill replays every answered request from the cache (and every sandbox verdict from the verdict
cache), draws the same methods (seeded), makes the same decisions and writes the same shards, sending
and running only what never finished. A sealed output with
the same config is returned at once; one made with another config is an error, not overwritten.
"""

from __future__ import annotations

import os
import time

from raywiz.artifacts import Kind, check_manifest, is_remote, verdict_cache_dir, write_manifest
from raywiz.evolve.decontam import Decontaminator
from raywiz.evolve.dedup import Deduplicator
from raywiz.evolve.engine import LLMEngine
from raywiz.evolve.report import EvolveReport
from raywiz.evolve.rounds import Dropped, answer, run_round
from raywiz.evolve.samples import Sample
from raywiz.evolve.seeds import load_seeds
from raywiz.evolve.verify import Verifier
from raywiz.evolve.writer import ShardWriter, clear_unsealed
from raywiz.log import get_logger, say
from raywiz.runtime import init_ray

log = get_logger(__name__)

def default_cache_dir(job) -> str:
    if is_remote(job.run_dir):  # an object store can't take appends: keep the cache on local disk
        return os.path.join(os.path.expanduser("~/.cache/raywiz/evolve"), job.name)
    return job.layout.evolve_cache


class Screen:
    """Decontamination and dedup over the whole run (earlier samples win duplicates)."""

    def __init__(self, cfg):
        self.decontaminator = Decontaminator.from_config(cfg.decontam) if cfg.decontam.enabled else None
        self.dedup = Deduplicator.from_config(cfg.dedup)
        for name, why in (self.decontaminator.skipped if self.decontaminator else {}).items():
            log.warning("evolve: not decontaminating against %s (no data): %s", name, why.splitlines()[0])

    def __call__(self, samples: list[Sample]) -> tuple[list[Sample], list[Dropped]]:
        hits = self.decontaminator.check([s.text + "\n" + s.output for s in samples],
                                         answers=[s.output for s in samples]) if self.decontaminator \
            else [None] * len(samples)
        kept, dropped = [], []
        for sample, hit in zip(samples, hits):
            if hit is not None:
                dropped.append(Dropped(sample.sample_id, sample.evol_round, sample.method, sample.parent_id,
                                       "decontam", hit.benchmark, sample.instruction, hit.to_dict()))
                continue
            dup = self.dedup.offer(sample.sample_id, sample.text)
            if dup is not None:
                kind, of = dup
                dropped.append(Dropped(sample.sample_id, sample.evol_round, sample.method, sample.parent_id,
                                       "dedup", kind, sample.instruction, {"duplicate_of": of}))
                continue
            kept.append(sample)
        return kept, dropped


def run_evolve(job) -> str:
    """Run the evolve stage of a JobConfig; returns the sealed output directory ({run_dir}/evolve)."""
    cfg = job.require("evolve")
    out_dir = job.layout.evolve
    config_hash = cfg.content_hash()
    sealed = check_manifest(out_dir, kind=Kind.INSTRUCTION_SHARDS)
    if sealed.complete:
        made_with = sealed.manifest["meta"].get("config_hash")
        if made_with == config_hash:
            say(f"evolve: {out_dir} is already complete")
            return out_dir
        from raywiz.config_base import ConfigError

        before_verify = cfg.verify.enabled and "verify" not in sealed.manifest["meta"]
        raise ConfigError(f"{out_dir} was made with another evolve config (hash {made_with}, now {config_hash}); "
                          + ("it was made before evolve verified by execution (evolve.verify, on by default): "
                             "set evolve.verify.enabled: false to use it as it is, or " if before_verify else "")
                          + "use a new run name, or delete that directory to evolve again")
    clear_unsealed(out_dir)  # a killed run's shards: rewritten identically below
    started = time.time()

    init_ray(job, extra_cpus_needed=cfg.llm.num_workers * cfg.llm.num_cpus_per_worker)
    seeds, seed_counts = load_seeds(cfg.seeds)
    screen = Screen(cfg)
    report = EvolveReport()
    writer = ShardWriter(out_dir, cfg.rows_per_shard, cfg.write_messages, cfg.response_system_prompt)
    cache_dir = cfg.cache_dir or default_cache_dir(job)
    verifier = Verifier(cfg, verdict_cache_dir(cache_dir)) if cfg.verify.enabled else None
    try:
        with LLMEngine(cfg.llm, cache_dir) as engine:
            llm_stats = _rounds(cfg, engine, seeds, screen, report, writer, verifier)
    finally:
        if verifier is not None:
            verifier.close()  # its sandbox workers' CPUs go back, its verdict file is closed

    summary = report.summary()
    decontam = screen.decontaminator
    report_path = report.write(job.layout.evolve_report, {
        "run": job.name,
        "config_hash": config_hash,
        "model": cfg.llm.model,
        "backend": cfg.llm.backend,
        "rounds": cfg.rounds,
        "seeds": dict(seed_counts),
        "decontam": {"benchmark_tasks_checked": decontam.benchmarks_checked() if decontam else {},
                     "benchmarks_skipped": decontam.skipped if decontam else {}},
        "llm": llm_stats,
        "verify": verifier.report() if verifier else {"enabled": False},
        "seconds": round(time.time() - started, 2),
    })
    write_manifest(out_dir, Kind.INSTRUCTION_SHARDS, meta={
        "config_hash": config_hash, "rows": summary["kept"], "rows_by_file": writer.files,
        "rounds": cfg.rounds, "model": cfg.llm.model, "report": report_path, **summary,
        "verify": {"enabled": cfg.verify.enabled},
    })
    _log_to_wandb(job, summary, llm_stats)
    say(f"evolve: kept {summary['kept']} samples ({summary['kept_by_round']} by round; {summary['verified']} verified "
        f"by execution), dropped "
        f"{summary['dropped']} {summary['dropped_by_reason']}; {llm_stats['sent']} requests sent, "
        f"{llm_stats['cache_hits']} from cache, {llm_stats['prompt_tokens']}+{llm_stats['completion_tokens']} "
        f"tokens, ~${llm_stats['cost_usd']:.4f}. Shards: {out_dir}; report: {report_path}")
    return out_dir


def _rounds(cfg, engine, seeds: list[Sample], screen: Screen, report: EvolveReport, writer: ShardWriter,
            verifier: Verifier | None) -> dict:
    """Round 0 (the seeds) and the evolution rounds, each written as it ends; returns the LLM's stats."""
    # Round 0: the seeds, answered where they came without an output.
    report.candidates(0, len(seeds))
    unanswered = [s for s in seeds if not s.output.strip()]
    answered, failed = answer(unanswered, cfg, engine, "seeds: respond") if unanswered else ([], [])
    report.drop(failed)
    answered_ids = {s.sample_id for s in answered}
    seeds = [s for s in seeds if s.output.strip() or s.sample_id in answered_ids]
    parents, dropped = screen(seeds)
    report.drop(dropped)
    report.keep(0, parents if cfg.keep_seeds else [])
    if cfg.keep_seeds:
        writer.write_round(0, parents)

    for evol_round in range(1, cfg.rounds + 1):
        if not parents:
            break
        report.candidates(evol_round, len(parents))
        evolved, failed = run_round(parents, evol_round, cfg, engine, verifier)
        report.drop(failed)
        parents, dropped = screen(evolved)
        report.drop(dropped)
        report.keep(evol_round, parents)
        writer.write_round(evol_round, parents)
    return engine.stats.to_dict(cfg.llm)


def _log_to_wandb(job, summary: dict, llm_stats: dict) -> None:
    """The run's counts as W&B metrics (when job.wandb.enabled); the pipeline logs the shards as an artifact."""
    from raywiz import tracking

    run = tracking.start_run(job, "evolve")
    if run is None:
        return
    metrics = {"evolve/kept": summary["kept"], "evolve/dropped": summary["dropped"]}
    metrics.update({f"evolve/kept_round_{r}": n for r, n in summary["kept_by_round"].items()})
    metrics.update({f"evolve/dropped/{reason}": n for reason, n in summary["dropped_by_reason"].items()})
    metrics.update({f"evolve/llm/{k}": v for k, v in llm_stats.items() if isinstance(v, (int, float))})
    tracking.log_metrics(run, metrics)
    tracking.finish(run)
