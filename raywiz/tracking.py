"""Weights & Biases tracking: one project per job, one run per stage, rank 0 only.

Every stage calls ``start_run(job, stage)``. The run lands in W&B project ``job.wandb.project``,
grouped by the pipeline run id (``job.name``), with ``job_type`` = the stage. Its id is derived
from (``job.name``, stage), so a re-run or a resumed stage continues the same W&B run instead of
starting a new one. The whole job config is logged, with secrets redacted.

Artifacts carry the pipeline's lineage: dataset (evolve output) -> model (a checkpoint's HF export)
-> eval results. They are logged *by reference* (the files stay in the run directory or bucket;
only the directory's ``manifest.json`` is uploaded, which fingerprints the content), so a 30 GB
checkpoint costs nothing to track. W&B's graph needs ``use_artifact``, which offline mode refuses;
each artifact therefore also records its inputs in its metadata (``lineage``), in every mode.

Under Ray Train V2, ``ray.air.integrations.wandb.setup_wandb(rank_zero_only=True)`` still logs from
every worker and ``WandbLoggerCallback`` is rejected by V2's ``RunConfig``, so raywiz calls wandb
directly and ``start_run`` returns None on every worker but world rank 0.

All helpers accept ``run=None`` and then do nothing, so stage code needs no ``if run:`` checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from raywiz.artifacts import MANIFEST, ModelInfo, check_manifest, is_remote, list_files, read_json
from raywiz.log import get_logger

if TYPE_CHECKING:  # wandb is imported lazily: `raywiz --help` stays instant
    import wandb

    from raywiz.config import JobConfig

log = get_logger(__name__)

REDACTED = "<redacted>"
# A config key is secret when one of its words is one of these (api_key, hf_token, OPENAI_API_KEY,
# db_password, ...). Whole words only: max_tokens and tokenizer stay visible, and so do keys that
# name where a secret is kept or how it is used rather than hold it (api_key_env, token_path,
# secret_name, RAY_AUTH_MODE).
SECRET_WORDS = {"key", "apikey", "token", "secret", "secrets", "password", "passwd", "credential",
                "credentials", "auth", "authorization", "cookie"}
NOT_SECRET_LAST_WORDS = {"env", "var", "name", "path", "file", "mode", "type", "enabled"}
_URL_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")

DATASET_TYPE = "dataset"
MODEL_TYPE = "model"
EVAL_TYPE = "eval-results"


# ---------------------------------------------------------------- config and identity


def is_secret_key(key: str) -> bool:
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower())
    return words[-1] not in NOT_SECRET_LAST_WORDS and any(w in SECRET_WORDS for w in words)


def redact(value: Any) -> Any:
    """A copy of a config tree with secret-named values and URL passwords replaced by <redacted>."""
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _URL_USERINFO.sub(rf"\g<1>{REDACTED}@", value)
    return value


def world_rank() -> int:
    """This process's rank in a Ray Train (or torchrun) worker group; 0 anywhere else."""
    if "ray.train" in sys.modules:  # only a process that uses Ray Train can be a train worker
        import ray.train

        try:
            return ray.train.get_context().get_world_rank()
        except RuntimeError:  # not inside a training function
            pass
    return int(os.environ.get("RANK", "0"))


def wandb_mode(job: JobConfig) -> str:
    """job.wandb.mode, else the WANDB_MODE environment variable, else online."""
    return job.wandb.mode or os.environ.get("WANDB_MODE") or "online"


def run_id(job_name: str, stage: str) -> str:
    """The W&B run id of one stage of one pipeline run: the same every time, so re-runs resume."""
    rid = f"{job_name}-{stage}"
    if len(rid) <= 64 and re.fullmatch(r"[A-Za-z0-9_.-]+", rid):
        return rid
    digest = hashlib.sha256(f"{job_name}\x1f{stage}".encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '-', job_name)[:40]}-{stage[:12]}-{digest}"


def start_run(job: JobConfig, stage: str, config: dict | None = None) -> wandb.Run | None:
    """Start (or resume) this stage's W&B run; None when W&B is off or this is not rank 0.

    ``config`` adds stage-specific values (world size, derived batch sizes) to the logged job config.
    """
    if not job.wandb.enabled or world_rank() != 0:
        return None
    mode = wandb_mode(job)
    if mode == "disabled":
        return None
    import wandb

    full_config = redact(job.model_dump(mode="json"))
    full_config.update(redact(config or {}))
    return wandb.init(
        project=job.wandb.project,
        entity=job.wandb.entity,
        group=job.name,
        job_type=stage,
        name=f"{job.name}-{stage}",
        id=run_id(job.name, stage),
        resume="allow",
        reinit="finish_previous",  # the pipeline runs stages one after another in one process
        config=full_config,
        tags=list(job.wandb.tags),
        mode=mode,
        dir=wandb_dir(job),
    )


def wandb_dir(job: JobConfig) -> str | None:
    """Local runs keep W&B's files ({run_dir}/wandb) beside their outputs; remote ones use WANDB_DIR/cwd."""
    if is_remote(job.run_dir) or os.environ.get("WANDB_DIR"):
        return None
    os.makedirs(job.run_dir, exist_ok=True)
    return job.run_dir


def log_metrics(run: wandb.Run | None, metrics: Mapping[str, Any], step: int | None = None) -> None:
    if run is not None:
        run.log(dict(metrics), step=step)


def finish(run: wandb.Run | None, exit_code: int = 0) -> None:
    if run is not None:
        run.finish(exit_code=exit_code)


# ---------------------------------------------------------------- artifacts (by reference)


def artifact_name(job_name: str, kind: str) -> str:
    """W&B artifact names: letters, digits, '-', '_', '.'; one name per (pipeline run, kind)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{job_name}-{kind}")


def directory_artifact(name: str, type: str, path: str, metadata: dict | None = None,
                       inputs: Iterable[wandb.Artifact] = ()) -> wandb.Artifact:
    """A W&B artifact that points at a directory without uploading it.

    Uploaded: ``manifest.json`` (raywiz's manifest when the directory is sealed, else a listing of
    file sizes), which gives the artifact a content digest. Referenced: the directory itself.
    """
    import wandb

    sealed = check_manifest(path)
    listing = read_json(_join(path, MANIFEST)) if sealed.complete else {"files": list_files(path)}
    files = listing.get("files", {})
    meta = {
        "uri": path,
        "sealed": sealed.complete,
        "n_files": len(files),
        "bytes": sum(f["size"] if isinstance(f, dict) else f for f in files.values()),
        "manifest_meta": listing.get("meta", {}),
        "lineage": [{"name": a.name, "type": a.type, "digest": a.manifest.digest()} for a in inputs],
        **(metadata or {}),
    }
    art = wandb.Artifact(name, type=type, metadata=meta)
    with art.new_file(MANIFEST) as f:
        f.write(json.dumps(listing, indent=1, sort_keys=True))
    uri = path if is_remote(path) else "file://" + os.path.abspath(path)
    try:
        # checksum=False: W&B records the URI instead of hashing every byte of a large checkpoint;
        # the uploaded manifest already fingerprints the content.
        art.add_reference(uri, name="files", checksum=False)
    except wandb.Error as e:  # e.g. s3:// without boto3 installed: the URI stays in the metadata
        log.warning("tracking: %s: reference to %s not recorded (%s)", name, uri, e)
    return art


def _join(path: str, name: str) -> str:
    return path.rstrip("/") + "/" + name if is_remote(path) else os.path.join(path, name)


def use_inputs(run: wandb.Run | None, inputs: Iterable[wandb.Artifact]) -> None:
    """Declare artifacts as this run's inputs (W&B's lineage graph). Offline mode cannot; the
    produced artifacts' ``lineage`` metadata carries the same information there."""
    if run is None or run.offline:
        return
    for art in inputs:
        run.use_artifact(art)


def dataset_artifact(job: JobConfig, evolve_dir: str) -> wandb.Artifact:
    return directory_artifact(artifact_name(job.name, "instructions"), DATASET_TYPE, evolve_dir)


def model_artifact(job: JobConfig, hf_dir: str, dataset_dir: str | None = None) -> wandb.Artifact:
    inputs = [dataset_artifact(job, dataset_dir)] if dataset_dir else []
    info = ModelInfo.read(hf_dir).to_dict()
    return directory_artifact(artifact_name(job.name, "model"), MODEL_TYPE, hf_dir,
                              metadata={"checkpoint": info}, inputs=inputs)


def log_dataset(run: wandb.Run | None, job: JobConfig, evolve_dir: str) -> wandb.Artifact | None:
    """Log the evolved instruction shards (by reference) as the run's dataset artifact."""
    if run is None:
        return None
    return run.log_artifact(dataset_artifact(job, evolve_dir), aliases=["latest"])


def log_checkpoint(run: wandb.Run | None, job: JobConfig, hf_dir: str,
                   dataset_dir: str | None = None) -> wandb.Artifact | None:
    """Log a checkpoint's HF export as a model artifact, made from ``dataset_dir``'s dataset."""
    if run is None:
        return None
    art = model_artifact(job, hf_dir, dataset_dir)
    use_inputs(run, [dataset_artifact(job, dataset_dir)] if dataset_dir else [])
    step = art.metadata.get("checkpoint", {}).get("step")
    aliases = ["latest"] + ([f"step-{step}"] if step is not None else [])
    return run.log_artifact(art, aliases=aliases)


def log_eval_results(run: wandb.Run | None, job: JobConfig, eval_dir: str, summaries: list[dict],
                     checkpoints: Iterable[str] = ()) -> wandb.Artifact | None:
    """Log eval outputs (by reference), with the summaries in the metadata and the evaluated
    checkpoints as inputs; also logs every summary's pass@1 as a metric and a bar chart."""
    if run is None:
        return None
    inputs = [model_artifact(job, c) for c in checkpoints]
    use_inputs(run, inputs)
    art = directory_artifact(artifact_name(job.name, "eval"), EVAL_TYPE, eval_dir,
                             metadata={"summaries": summaries}, inputs=inputs)
    log_pass_at_1(run, summaries)
    return run.log_artifact(art, aliases=["latest"])


# ---------------------------------------------------------------- tables and media


def eval_table(rows: Iterable[Mapping[str, Any]]) -> wandb.Table:
    """A W&B table from per-task result rows (columns: the union of keys, in first-seen order)."""
    import wandb

    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    data = [[_cell(row.get(c)) for c in columns] for row in rows]
    return wandb.Table(columns=columns, data=data)


def _cell(v: Any) -> Any:
    return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v, default=str)


def log_eval_table(run: wandb.Run | None, key: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Per-task pass/fail rows, e.g. {"task_id": "HumanEval/0", "passed": True, "completion": ...}."""
    if run is not None:
        run.log({key: eval_table(rows)})


def pass_at(summary: Mapping[str, Any], k: int = 1) -> float | None:
    """pass@k from an eval summary: {"pass@1": x} or {"pass@k": {"pass@1": x}} or {"pass@k": {"1": x}}."""
    if f"pass@{k}" in summary:
        return summary[f"pass@{k}"]
    table = summary.get("pass@k") or {}
    return table.get(f"pass@{k}", table.get(str(k)))


def summary_label(summary: Mapping[str, Any]) -> str:
    ckpt = summary.get("checkpoint") or summary.get("model") or ""
    return f"{os.path.basename(str(ckpt).rstrip('/'))}/{summary.get('benchmark', '?')}" if ckpt else str(
        summary.get("benchmark", "?"))


def log_pass_at_1(run: wandb.Run | None, summaries: Iterable[Mapping[str, Any]]) -> None:
    """pass@1 per (checkpoint, benchmark): summary metrics plus one bar chart ("eval/pass@1")."""
    if run is None:
        return
    import wandb

    points = [(summary_label(s), pass_at(s)) for s in summaries]
    points = [(label, float(v)) for label, v in points if v is not None]
    if not points:
        return
    for label, value in points:
        run.summary[f"eval/{label}/pass@1"] = value
    table = wandb.Table(columns=["benchmark", "pass@1"], data=[list(p) for p in points])
    run.log({"eval/pass@1": wandb.plot.bar(table, "benchmark", "pass@1", title="pass@1")})


def log_image(run: wandb.Run | None, key: str, image: Any, caption: str | None = None) -> None:
    """Log an image: a file path, a numpy array (HxW or HxWxC) or a PIL image (needs pillow)."""
    if run is not None:
        import wandb

        run.log({key: wandb.Image(image, caption=caption)})
