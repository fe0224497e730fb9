"""`raywiz run JOB.yaml`: the whole recipe, evolve -> train -> rl -> eval (-> serve), as one run.

Read top to bottom: ``run_pipeline`` calls each stage's entry point in order and passes each
stage's output to the next. Every stage runs under the job's one run id (``job.name``): its
outputs live in ``{storage}/{name}/`` and its W&B run in the group ``name``.

- A stage runs when the job has its section (``evolve:``, ``train:``, ``rl:``, ``eval:``); ``--skip``
  leaves stages out; serve runs only with ``--serve`` (it blocks, serving until stopped).
- A stage can be pointed at an earlier output instead of being run: ``--evolve-output DIR``
  (instruction shards for train), ``--checkpoint DIR`` (a model for rl, eval and serve).
- rl starts from train's checkpoint (``rl.model``); when rl ran, eval and serve take rl's final checkpoint.
- Re-running resumes: when a stage finishes, ``{run_dir}/pipeline.json`` records its output and a
  fingerprint of what produced it (its config section and its inputs). Next time, a stage whose
  fingerprint is unchanged and whose output is still complete (manifest check) is not run again;
  one whose config or input changed runs again (and may itself resume from its checkpoints).
- Ray starts once, in the first stage that runs (a local cluster unless ``cluster.address`` or
  ``RAY_ADDRESS`` names one), sized for every stage of the run; a run whose stages all resume
  starts no Ray at all.
- W&B lineage: evolve's shards are logged here as the dataset artifact; train logs the model made
  from it and eval the results of the model. See raywiz.tracking.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow.fs as pafs

from raywiz.artifacts import MANIFEST, Kind, RunLayout, check_manifest, filesystem, join, read_json, write_json_atomic
from raywiz.config import ConfigError, JobConfig, load_job
from raywiz.log import say
from raywiz.runtime import init_ray

STAGES = ("evolve", "train", "rl", "eval", "serve")
# The agreed stage entry points (raywiz/<stage>/...), imported only when the stage runs.
ENTRY_POINTS = {
    "evolve": ("raywiz.evolve.recipe", "run_evolve"),
    "train": ("raywiz.train.launch", "run_train"),
    "rl": ("raywiz.rl.launch", "run_rl"),
    "eval": ("raywiz.eval.recipe", "run_eval"),
    "serve": ("raywiz.serve.app", "run_serve"),
}


@dataclass
class PipelineResult:
    run_dir: str
    ran: list[str] = field(default_factory=list)  # stages run now
    resumed: list[str] = field(default_factory=list)  # stages finished earlier, outputs reused
    skipped: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)  # evolve/train: a directory; eval: summaries; serve: URL


def entry_point(stage: str) -> Callable:
    module_name, func = ENTRY_POINTS[stage]
    return getattr(importlib.import_module(module_name), func)


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def section_dump(job: JobConfig, stage: str) -> Any:
    section = getattr(job, stage)
    return section.model_dump(mode="json") if section is not None else None


# ---------------------------------------------------------------- state: what finished, with what


def load_state(run_dir: str) -> dict:
    path = RunLayout(run_dir).pipeline_state
    if not _exists(path, file=True):
        return {"stages": {}}
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable pipeline state ({e}); delete it to run every stage again") from None


def record(state: dict, run_dir: str, stage: str, output: Any, fp: str) -> str:
    """Note a finished stage; returns its output's id (new each time the stage produces an output)."""
    finished = time.time()
    output_id = fingerprint(fp, finished)
    state.setdefault("stages", {})[stage] = {"output": output, "fingerprint": fp, "output_id": output_id,
                                             "finished_at": finished}
    write_json_atomic(RunLayout(run_dir).pipeline_state, state)
    return output_id


def still_complete(stage: str, output: Any) -> bool:
    """Is an output recorded earlier still there and whole?"""
    if stage == "evolve":
        return check_manifest(output, kind=Kind.INSTRUCTION_SHARDS).complete
    if stage in ("train", "rl"):  # raywiz's own export (hf/, or a LoRA run's adapter/) is sealed; unsealed is partial
        return is_sealed_model(output)
    if stage == "eval":
        return isinstance(output, list)
    return False


def is_sealed_model(path: str) -> bool:
    return any(check_manifest(path, kind=k).complete for k in (Kind.HF_EXPORT, Kind.ADAPTER_EXPORT))


def is_model_dir(path: str) -> bool:
    """A sealed HF export or adapter, or a plain HF model directory (a user's own model, no manifest)."""
    if is_sealed_model(path):
        return True
    return not _exists(join(path, MANIFEST)) and _exists(join(path, "config.json"), file=True)


def given_output(flag: str, path: str, stage: str) -> tuple[str, str]:
    """Check an output the user points a stage at; returns (path, an id for it)."""
    sealed = check_manifest(path, kind=Kind.HF_EXPORT if stage == "train" else Kind.INSTRUCTION_SHARDS)
    if stage == "train":
        ok = is_model_dir(path)
    else:  # raywiz evolve output (sealed), or the user's own data files (no manifest)
        ok = sealed.complete or (_exists(path) and not _exists(join(path, MANIFEST)))
    if not ok:
        raise ConfigError(f"{flag} {path}: not a complete {stage} output (missing, or a partial manifest)")
    return path, fingerprint(path, (sealed.manifest or {}).get("created"))


def _exists(path: str, file: bool = False) -> bool:
    fs, p = filesystem(path)
    kind = fs.get_file_info(p).type
    return kind == pafs.FileType.File if file else kind != pafs.FileType.NotFound


# ---------------------------------------------------------------- the recipe


def stages_to_run(job: JobConfig, skip: set[str], serve: bool, evolve_output: str | None,
                  checkpoint: str | None) -> list[str]:
    """The stages that run: those the job configures, minus skipped ones and ones given an output."""
    unknown = skip - set(STAGES)
    if unknown:
        raise ConfigError(f"--skip: unknown stage(s) {', '.join(sorted(unknown))}; stages are {', '.join(STAGES)}")
    given = {"evolve"} if evolve_output else set()
    given |= {"train"} if checkpoint else set()
    stages = [s for s in ("evolve", "train", "rl", "eval") if getattr(job, s) is not None]
    if serve:
        stages.append("serve")
    return [s for s in stages if s not in skip | given]


def run_pipeline(job: JobConfig, skip: set[str] = frozenset(), redo: set[str] = frozenset(), serve: bool = False,
                 evolve_output: str | None = None, checkpoint: str | None = None,
                 log: Callable[[str], None] = say) -> PipelineResult:
    stages = stages_to_run(job, set(skip), serve, evolve_output, checkpoint)
    # skipped: the stages that do not run now (rl, the optional step, only when the job has it)
    configured = [s for s in STAGES if s != "serve" and (s != "rl" or job.rl is not None)]
    result = PipelineResult(job.run_dir, skipped=[s for s in configured if s not in stages])
    state = load_state(job.run_dir)
    done = state.get("stages", {})

    # What flows between stages: an output and its id (which changes whenever the output is made
    # again, so everything downstream of a re-made output runs again). A stage that does not run
    # now still passes on what it produced earlier: `--skip train` evaluates the model trained before.
    def earlier(stage: str) -> tuple[str | None, str]:
        prev = done.get(stage)
        if prev and still_complete(stage, prev["output"]):
            return prev["output"], prev["output_id"]
        return None, ""

    dataset, dataset_id = given_output("--evolve-output", evolve_output, "evolve") if evolve_output else earlier("evolve")
    model, model_id = given_output("--checkpoint", checkpoint, "train") if checkpoint else earlier("train")

    def run_stage(stage: str, inputs: Any, call: Callable[[], Any]) -> tuple[Any, str]:
        model_cfg = job.model.model_dump(mode="json") if stage in ("train", "rl", "eval") else None  # evolve: its own LLM
        fp = fingerprint(stage, section_dump(job, stage), model_cfg, inputs)
        prev = done.get(stage)
        if stage not in redo and prev and prev["fingerprint"] == fp and still_complete(stage, prev["output"]):
            log(f"{stage}: finished earlier, using {_short(brief(stage, prev['output']))}")
            result.resumed.append(stage)
            result.outputs[stage] = prev["output"]
            return prev["output"], prev["output_id"]
        log(f"{stage}: starting")
        if stage in ("evolve", "train", "rl"):  # the stages that always run on Ray
            init_ray(job, extra_cpus_needed=cpus_needed(job, stages))
        t0 = time.time()
        output = call()
        log(f"{stage}: done in {time.time() - t0:.1f}s -> {_short(brief(stage, output))}")
        output_id = record(state, job.run_dir, stage, output, fp)
        result.ran.append(stage)
        result.outputs[stage] = output
        track(job, stage, output)
        return output, output_id

    if "evolve" in stages:
        dataset, dataset_id = run_stage("evolve", None, lambda: entry_point("evolve")(job))
    if "train" in stages:
        # Shards from elsewhere (--evolve-output) are handed to train; this run's own evolve output is
        # where train looks by default (and logs the lineage from). The job config stays as loaded.
        handed = dataset if dataset and dataset != job.layout.evolve else None
        model, model_id = run_stage("train", dataset_id, lambda: entry_point("train")(job, dataset=handed))
    if "rl" in stages:
        # rl finds train's checkpoint of this run itself (rl.model: best or last); a model from
        # elsewhere (--checkpoint, or a job without train:) is handed to it.
        handed = model if checkpoint or job.train is None else None
        model, model_id = run_stage("rl", model_id, lambda: entry_point("rl")(job, model=handed))
    elif not checkpoint and job.rl is not None and earlier("rl")[0]:  # skipped now: what rl made before
        model, model_id = earlier("rl")
    if "eval" in stages:
        checkpoints = [model] if model else None  # None: eval's own config names the models
        run_stage("eval", [checkpoints, model_id], lambda: entry_point("eval")(job, checkpoints))
    if "serve" in stages:
        if job.serve is None:  # --serve without a serve: section: serve's defaults, on a copy of the job
            from raywiz.serve.config import ServeConfig

            job = job.model_copy(update={"serve": ServeConfig()})
        log(f"serve: starting on {model or 'the configured model'}")
        result.outputs["serve"] = entry_point("serve")(job, checkpoint=model, blocking=True)
        result.ran.append("serve")
    return result


def cpus_needed(job: JobConfig, stages: list[str]) -> float:
    """The most CPUs one stage's Ray actors hold (stages run one at a time). Ray starts once, in the
    first stage that runs, and later stages' init_ray is a no-op, so a local cluster must be sized for
    all of them: one sized for evolve alone would leave train's workers waiting forever."""
    needs = [0.0]
    if "evolve" in stages:
        needs.append(job.evolve.llm.num_workers * job.evolve.llm.num_cpus_per_worker)
    if "train" in stages:
        needs.append(job.train.scaling.num_workers * job.train.scaling.cpus_per_worker)
    if "rl" in stages:
        needs.append(job.rl.workers * job.rl.cpus_per_worker)
    return max(needs)


def track(job: JobConfig, stage: str, output: Any) -> None:
    """Attach evolve's shards to the evolve W&B run as the dataset artifact. The other stages log
    their own outputs with lineage: train the model (made from the dataset), eval the results (of
    the model); see raywiz.tracking."""
    if stage != "evolve" or not job.wandb.enabled:
        return
    from raywiz import tracking

    run = tracking.start_run(job, stage)
    if run is not None:
        tracking.log_dataset(run, job, output)
        tracking.finish(run)


def brief(stage: str, output: Any) -> Any:
    """What the console shows of a stage's output: a path, or eval's pass@1 per checkpoint."""
    if stage == "eval" and isinstance(output, list):
        return [{"checkpoint": r.get("checkpoint"), "out_dir": r.get("out_dir"), "pass@1": r.get("pass@1")}
                for r in output if isinstance(r, dict)]
    return output


def _short(output: Any) -> str:
    text = output if isinstance(output, str) else json.dumps(output, default=str)
    return text if len(text) < 200 else text[:197] + "..."


# ---------------------------------------------------------------- CLI


def _stage_list(text: str) -> set[str]:
    return {s.strip() for s in text.split(",") if s.strip()}


def _run(args) -> int:
    job = load_job(args.job, args.overrides)
    skip = set().union(*map(_stage_list, args.skip)) if args.skip else set()
    redo = set().union(*map(_stage_list, args.redo)) if args.redo else set()
    if "all" in redo:
        redo = set(STAGES)
    result = run_pipeline(job, skip=skip, redo=redo, serve=args.serve,
                          evolve_output=_abs(args.evolve_output), checkpoint=_abs(args.checkpoint))
    outputs = {stage: brief(stage, output) for stage, output in result.outputs.items()}
    print(json.dumps({"run_dir": result.run_dir, "ran": result.ran, "resumed": result.resumed,
                      "skipped": result.skipped, "outputs": outputs}, indent=2, default=str))
    return 0


def _abs(path: str | None) -> str | None:
    return path if path is None or "://" in path else os.path.abspath(os.path.expanduser(path))


def register(subparsers) -> None:
    from raywiz.cli import add_job_arguments

    p = subparsers.add_parser("run", help="run the whole pipeline: evolve -> train -> rl -> eval (-> serve)",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description=__doc__.split("\n\n", 1)[1])
    add_job_arguments(p)
    p.add_argument("--skip", action="append", metavar="STAGES",
                   help="comma-separated stages to leave out, e.g. --skip evolve,eval")
    p.add_argument("--redo", action="append", metavar="STAGES",
                   help="run these stages even if they finished earlier ('all' for every stage)")
    p.add_argument("--evolve-output", metavar="DIR", help="use these instruction shards instead of running evolve")
    p.add_argument("--checkpoint", metavar="DIR", help="use this model (HF export) instead of running train")
    p.add_argument("--serve", action="store_true", help="serve the trained model at the end (blocks)")
    p.set_defaults(handler=_run)
