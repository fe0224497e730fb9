"""Finding and vetting the checkpoints serve may load. Plain functions over the artifact contracts.

A run's checkpoints live in ``{run_dir}/train/checkpoint_{step:08d}/hf`` and, once the run's rl stage
has written some, ``{run_dir}/rl/checkpoint_{step:08d}/hf``; an ``hf/`` directory is complete iff its
manifest (kind ``hf_export``) checks out. Following a run means serving its most trained checkpoint:
rl's newest over any of train's (rl starts from train's model), else train's newest. Any other directory holding a
``config.json`` is a user's own model and is taken as it is (there is nothing to check it against).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from raywiz.artifacts import (MANIFEST, TRAINING_STAGES, CheckpointDir, EvalDir, Kind, ModelInfo, RunLayout,
                              check_manifest, export_of, filesystem, is_remote, join, list_dirs, read_json)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class CheckpointRef:
    """One loadable model: `name` is its model id in the API, `path` its HF directory."""

    name: str
    path: str
    step: int | None = None
    run_dir: str | None = None  # set for a run's checkpoints: where its eval scores live
    stage: str | None = None  # set for a run's checkpoints: the stage that wrote it ("train" or "rl")


@dataclass
class Verdict:
    """Whether a checkpoint may be loaded. `pending`: still being written, look again later."""

    ok: bool
    reason: str = ""
    pending: bool = False
    info: dict = field(default_factory=dict)  # ModelInfo (raywiz.json) / manifest meta when readable


@dataclass
class ServeTarget:
    """What `raywiz serve` was asked to serve: a fixed model, a run to follow, or both."""

    model: CheckpointRef | None
    run_dir: str | None


def _exists(path: str, kind: pafs.FileType) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type == kind


def is_dir(path: str) -> bool:
    return _exists(path, pafs.FileType.Directory)


def is_file(path: str) -> bool:
    return _exists(path, pafs.FileType.File)


def _ref(ckpt: CheckpointDir) -> CheckpointRef:
    # A LoRA run that does not merge its adapter serves base + adapter (raywiz.modeling loads it). A sealed
    # adapter/ that no longer checks out (an interrupted copy) is named too, so verify refuses it and says why.
    path = ckpt.model_dir
    if path is None:
        sealed_adapter = not is_dir(ckpt.hf) and is_file(join(ckpt.adapter, MANIFEST))
        path = ckpt.adapter if sealed_adapter else ckpt.hf
    return CheckpointRef(ckpt.label, path, ckpt.step, ckpt.run.root, ckpt.stage)


def list_run_checkpoints(run_dir: str) -> list[CheckpointRef]:
    """Every checkpoint of a run (complete or not), least trained first: train's by step, then rl's."""
    return [_ref(c) for c in RunLayout(run_dir).all_checkpoints()]


def training_order(stage: str | None, step: int | None) -> tuple[int, int]:
    """How far training had gone when a checkpoint was written: a follower serves the highest. Any rl
    checkpoint is past all of train's; a model outside a run counts as train's at its own step."""
    return TRAINING_STAGES.index(stage if stage in TRAINING_STAGES else "train"), -1 if step is None else step


def _ref_for_model_dir(path: str) -> CheckpointRef:
    """Name a model directory; a run's checkpoint export keeps its run (for its eval scores)."""
    ckpt = export_of(path)
    if ckpt is not None:
        return _ref(ckpt)
    parts = path.rstrip("/").split("/")
    name = parts[-2] if parts[-1] == "hf" and len(parts) > 1 else parts[-1]
    return CheckpointRef(name, path)


def resolve_target(spec: str | None, default_run_dir: str, storage: str) -> ServeTarget:
    """Turn `--checkpoint PATH|RUN` (or None: the job's own run) into a model and/or a run to follow.

    PATH may be an HF directory (has config.json), a checkpoint directory (has hf/), or a run
    directory (has train/ or rl/); RUN is a run name under `storage`. Anything else is taken as a hub id.
    """
    if spec is None:
        return ServeTarget(None, default_run_dir)
    path = spec.rstrip("/") if is_remote(spec) else os.path.abspath(os.path.expanduser(spec))
    if is_dir(path):
        if is_file(join(path, "config.json")):
            ref = _ref_for_model_dir(path)
            return ServeTarget(ref, ref.run_dir)
        if is_dir(CheckpointDir(path).hf):
            ref = _ref_for_model_dir(CheckpointDir(path).hf)
            return ServeTarget(ref, ref.run_dir)
        if any(is_dir(RunLayout(path).training(stage).path) for stage in TRAINING_STAGES):
            return ServeTarget(None, path)
        raise FileNotFoundError(
            f"{spec}: not a model directory (no config.json), a checkpoint (no hf/) or a run (no train/ or rl/)"
        )
    if "/" not in spec and is_dir(RunLayout.of(storage, spec).root):
        return ServeTarget(None, RunLayout.of(storage, spec).root)
    if spec.startswith((".", "/", "~")) or is_remote(spec):
        raise FileNotFoundError(f"{spec}: no such directory")
    if HUB_ID.match(spec):
        return ServeTarget(CheckpointRef(spec, spec), None)  # loaded by transformers from the hub
    raise FileNotFoundError(f"{spec}: not a directory, a run under {storage}, or a hub id (org/name)")


def verify(ref: CheckpointRef, verify_checksums: bool = False) -> Verdict:
    """Cheap checks before loading: manifest complete, config readable, weights and tokenizer present.

    Loading itself (see pool.load_model) catches what files alone cannot show: corrupt tensors,
    shapes that do not match the config, a tokenizer larger than the embedding.
    """
    if not is_remote(ref.path) and not os.path.isabs(ref.path):
        return Verdict(True)  # a hub id: transformers checks it while downloading
    if not is_dir(ref.path):
        if ref.run_dir is not None:
            return Verdict(False, f"{ref.path}: no hf/ export yet", pending=True)
        return Verdict(False, f"{ref.path}: not a directory")
    has_manifest = is_file(join(ref.path, MANIFEST))
    info: dict = {}
    if is_file(join(ref.path, "adapter_config.json")) and not is_file(join(ref.path, "config.json")):
        check = check_manifest(ref.path, kind=Kind.ADAPTER_EXPORT, verify_checksums=verify_checksums)
        return Verdict(check.complete, check.reason, pending=not has_manifest and ref.run_dir is not None,
                       info={**(check.manifest or {}).get("meta", {}), **ModelInfo.read(ref.path).to_dict()})
    if has_manifest:
        check = check_manifest(ref.path, kind=Kind.HF_EXPORT, verify_checksums=verify_checksums)
        if not check.complete:
            return Verdict(False, check.reason)
        info.update((check.manifest or {}).get("meta", {}))
    elif ref.run_dir is not None:
        # train writes hf/manifest.json last: without it the export is still being written.
        return Verdict(False, f"{ref.path}: no {MANIFEST} yet (export still being written)", pending=True)
    info.update(ModelInfo.read(ref.path).to_dict())
    if not is_file(join(ref.path, "config.json")):
        return Verdict(False, f"{ref.path}: no config.json")
    try:
        config = read_json(join(ref.path, "config.json"))
    except (OSError, json.JSONDecodeError) as e:
        return Verdict(False, f"{ref.path}/config.json: unreadable: {e}")
    if not isinstance(config, dict) or "model_type" not in config:
        return Verdict(False, f"{ref.path}/config.json: no model_type")
    if not any(is_file(join(ref.path, w)) for w in WEIGHT_FILES):
        return Verdict(False, f"{ref.path}: no weights (expected one of {', '.join(WEIGHT_FILES)})")
    if not (is_file(join(ref.path, "tokenizer.json")) or is_file(join(ref.path, "tokenizer_config.json"))):
        return Verdict(False, f"{ref.path}: no tokenizer files")
    return Verdict(True, info=info)


def eval_scores(run_dir: str | None, checkpoint: str) -> dict[str, float]:
    """pass@1 per benchmark from the checkpoint's complete eval results (manifest checked), where eval wrote them."""
    if run_dir is None:
        return {}
    scores: dict[str, float] = {}
    layout = RunLayout(run_dir)
    for benchmark in list_dirs(layout.eval_dir(checkpoint)):
        summary = EvalDir(layout.eval_dir(checkpoint, benchmark)).read_summary()
        value = summary.get("pass@1") if summary else None
        if isinstance(value, (int, float)):
            scores[benchmark] = float(value)
    return scores


def fetch_to_local(ref: CheckpointRef, cache_dir: str) -> str:
    """A local copy of a remote (s3://, gs://) model directory; local paths are returned unchanged.

    Copied into a temporary name and renamed, so an interrupted copy is never taken for a whole one.
    """
    if not is_remote(ref.path):
        return ref.path
    import hashlib
    import shutil

    key = hashlib.sha256(ref.path.encode()).hexdigest()[:16]
    dest = os.path.join(cache_dir, f"{ref.name}-{key}")
    if os.path.isdir(dest):
        return dest
    tmp = dest + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    fs, src = filesystem(ref.path)
    pafs.copy_files(src, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    os.replace(tmp, dest)
    return dest
