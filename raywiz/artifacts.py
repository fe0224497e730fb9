"""The contracts between stages: run-directory layout, manifests, the instruction-shard schema.

One rule gives resume, hot-load and partial-write safety: a directory is complete only when its
``manifest.json`` exists and every file it lists is present with the listed size. The manifest is
written last, through a temporary name and a rename, so a reader never sees a half-written one.

Paths are local paths or ``s3://`` / ``gs://`` URIs; remote ones go through pyarrow filesystems.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.fs as pafs

MANIFEST = "manifest.json"
MODEL_INFO = "raywiz.json"  # what a raywiz-trained model says about itself (ModelInfo)
PACKAGE_SCHEME = "raywiz:"  # "raywiz:quickstart/instructions.jsonl" -> a file shipped in raywiz/assets
ASSETS_DIR = Path(__file__).parent / "assets"

# ---------------------------------------------------------------- run directory layout


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(base, *parts)


def resolve_package_path(path: str) -> str:
    """Map 'raywiz:relative/path' to the file shipped inside the package."""
    if path.startswith(PACKAGE_SCHEME):
        return str(ASSETS_DIR / path[len(PACKAGE_SCHEME) :])
    return path


class Kind(str, Enum):
    """What a sealed directory holds: the ``kind`` of its manifest. Readers ask for the kind they expect."""

    INSTRUCTION_SHARDS = "instruction_shards"  # {run}/evolve/
    TRAIN_CHECKPOINT = "train_checkpoint"  # {run}/train/checkpoint_*/
    HF_EXPORT = "hf_export"  # {run}/train/checkpoint_*/hf/
    ADAPTER_EXPORT = "adapter_export"  # {run}/train/checkpoint_*/adapter/ (peft's format)
    EVAL_RESULTS = "eval_results"  # {run}/eval/{checkpoint}/{benchmark}/

    def __str__(self) -> str:  # manifests store the plain string
        return self.value


CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)$")
EXPORT_DIRS = ("hf", "adapter")  # CheckpointDir.hf and .adapter: the full model, a peft adapter


def _path_under(parent: str, name: str, doc: str | None = None) -> property:
    """A layout's fixed path: `name` below `parent` (another of its paths: "root", "path", "train" ...)."""
    return property(lambda self: join(getattr(self, parent), name), doc=doc)


@dataclass(frozen=True)
class CheckpointDir:
    """One training checkpoint: ``{run}/train/checkpoint_{step:08d}/`` or ``{run}/rl/...`` (or a copy of one
    elsewhere).

        zero/ or fsdp2/    the engine's sharded model + optimizer state (DeepSpeed's, or FSDP2's DCP files)
        rng/rank_N.pt      each rank's RNG states (torch, CUDA, numpy, python)
        train_state.json   step, epoch, position inside the epoch, schedule length, the engine that wrote it
        hf/, adapter/      the exports inference loads, each sealed by its own manifest, with raywiz.json
        manifest.json      every file above with its size, written last
    """

    path: str

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def step(self) -> int | None:
        m = CHECKPOINT_RE.match(self.name)
        return int(m.group(1)) if m else None

    hf = _path_under("path", "hf", "The Hugging Face export (its own manifest, Kind.HF_EXPORT).")
    adapter = _path_under("path", "adapter", "The peft adapter of a LoRA/DoRA/QLoRA run (its own manifest, "
                          "Kind.ADAPTER_EXPORT).")
    zero = _path_under("path", "zero", "DeepSpeed's sharded state (train.engine: deepspeed).")
    fsdp2 = _path_under("path", "fsdp2", "FSDP2's sharded state, torch.distributed.checkpoint's format "
                        "(train.engine: fsdp2).")

    def rng(self, rank: int) -> str:
        """One rank's RNG states (torch, CUDA, numpy, python)."""
        return join(self.path, "rng", f"rank_{rank}.pt")

    train_state = _path_under("path", "train_state.json", "Where training is (step, epoch, position in it) and "
                              "the engine that wrote the state (rank 0).")

    @property
    def label(self) -> str:
        """Its id in eval results and serve's API: train's checkpoints go by their name, a later stage's are
        prefixed with it (``rl-checkpoint_00000100``), since both stages number their steps from the start."""
        return f"{self.stage}-{self.name}" if self.stage in TRAINING_STAGES[1:] else self.name

    @property
    def run(self) -> "RunLayout":
        return RunLayout(self.path.rstrip("/").rsplit("/", 2)[0])

    @property
    def stage(self) -> str:
        """The training stage that wrote it ("train" or "rl", from its parent directory)."""
        return self.path.rstrip("/").rsplit("/", 2)[-2]

    def is_complete(self) -> bool:
        return check_manifest(self.path, kind=Kind.TRAIN_CHECKPOINT).complete

    def hf_is_complete(self) -> bool:
        return check_manifest(self.hf, kind=Kind.HF_EXPORT).complete

    @property
    def model_dir(self) -> str | None:
        """What inference loads: the sealed full export, else a sealed adapter (base + adapter), else None."""
        if self.hf_is_complete():
            return self.hf
        if check_manifest(self.adapter, kind=Kind.ADAPTER_EXPORT).complete:
            return self.adapter
        return None


@dataclass(frozen=True)
class TrainingDir:
    """The directory of one training stage of a run: ``{run}/train/`` (SFT) or ``{run}/rl/`` (GRPO).
    Both stages run on raywiz.training, so both write the same checkpoints and files here.

        checkpoint_{step:08d}/                 zero/, rng/, train_state.json, hf/ (Kind.TRAIN_CHECKPOINT)
        metrics.jsonl, data_report.json, best_checkpoint.json, .staging/
        workers/, trace/, profile_step_N.json  train.debug's opt-in output
    """

    path: str

    staging = _path_under("path", ".staging", "Where ranks write checkpoint parts before they are moved "
                          "into place (local storage).")
    metrics = _path_under("path", "metrics.jsonl")
    data_report = _path_under("path", "data_report.json")
    best_checkpoint = _path_under("path", "best_checkpoint.json")

    # opt-in debug output of training (train.debug)
    def worker_pid_file(self, rank: int) -> str:
        return join(self.path, "workers", f"rank_{rank}.json")

    def trace_file(self, step: int, rank: int) -> str:
        """The sample ids one rank trained on at one step."""
        return join(self.path, "trace", f"step_{step:08d}.rank_{rank}.json")

    def profile_file(self, step: int) -> str:
        return join(self.path, f"profile_step_{step}.json")

    def checkpoint(self, step: int) -> CheckpointDir:
        return CheckpointDir(join(self.path, f"checkpoint_{step:08d}"))

    def staged_checkpoint(self, step: int, rank: int) -> CheckpointDir:
        """Where one rank writes its part of a checkpoint before it is moved into place (local storage)."""
        return CheckpointDir(join(self.staging, f"{self.checkpoint(step).name}.rank_{rank}"))

    def checkpoints(self, complete: bool = False) -> list[CheckpointDir]:
        """The checkpoints, oldest first; with ``complete``, only those with a sealed model to load
        (``model_dir``: the hf/ export, or the adapter of a run that does not merge it)."""
        found = [CheckpointDir(join(self.path, name)) for name in list_dirs(self.path) if CHECKPOINT_RE.match(name)]
        found.sort(key=lambda c: c.step)
        return [c for c in found if c.model_dir] if complete else found

    def latest_checkpoint(self) -> CheckpointDir | None:
        """The newest checkpoint whose own manifest checks out (the one to resume from)."""
        return next((c for c in reversed(self.checkpoints()) if c.is_complete()), None)


TRAINING_STAGES = ("train", "rl")  # the stages that write TrainingDirs, in pipeline order


@dataclass(frozen=True)
class RunLayout:
    """Every path of a run directory ``{storage}/{run}/``. Stages ask it; none builds run paths itself.

        {run}/evolve/                          instruction shards + manifest (Kind.INSTRUCTION_SHARDS)
        {run}/evolve_report/, evolve_cache/    evolve's drop report and its answered requests
        {run}/train/                           SFT's TrainingDir: checkpoint_{step:08d}/, metrics.jsonl, ...
        {run}/rl/                              GRPO's TrainingDir, the same files
        {run}/eval/{checkpoint}/{benchmark}/   samples.jsonl, results.jsonl, summary.json (Kind.EVAL_RESULTS)
        {run}/pipeline.json                    which stages finished, with what

    The train paths (``checkpoint``, ``metrics``, ...) are also reachable directly on the layout, as
    ``layout.training("train")``'s.
    """

    root: str

    @classmethod
    def of(cls, storage: str, name: str) -> "RunLayout":
        return cls(join(storage, name))

    # evolve
    evolve = _path_under("root", "evolve")
    evolve_report = _path_under("root", "evolve_report")
    evolve_cache = _path_under("root", "evolve_cache")

    # train and rl
    train = _path_under("root", "train")
    rl = _path_under("root", "rl")

    def training(self, stage: str = "train") -> TrainingDir:
        """The TrainingDir of ``train`` (SFT) or ``rl`` (GRPO)."""
        if stage not in TRAINING_STAGES:
            raise ValueError(f"no training directory for stage {stage!r} (one of {TRAINING_STAGES})")
        return TrainingDir(join(self.root, stage))

    def all_checkpoints(self, complete: bool = False) -> list[CheckpointDir]:
        """Every training stage's checkpoints in pipeline order: train's, then rl's (newest last)."""
        return [c for stage in TRAINING_STAGES for c in self.training(stage).checkpoints(complete=complete)]

    # train's paths, kept on the layout itself (most readers mean train's)
    train_staging = property(lambda self: self.training().staging)
    metrics = property(lambda self: self.training().metrics)
    data_report = property(lambda self: self.training().data_report)
    best_checkpoint = property(lambda self: self.training().best_checkpoint)

    def worker_pid_file(self, rank: int) -> str:
        return self.training().worker_pid_file(rank)

    def trace_file(self, step: int, rank: int) -> str:
        return self.training().trace_file(step, rank)

    def profile_file(self, step: int) -> str:
        return self.training().profile_file(step)

    def checkpoint(self, step: int) -> CheckpointDir:
        return self.training().checkpoint(step)

    def staged_checkpoint(self, step: int, rank: int) -> CheckpointDir:
        return self.training().staged_checkpoint(step, rank)

    def checkpoints(self, complete: bool = False) -> list[CheckpointDir]:
        return self.training().checkpoints(complete=complete)

    def latest_checkpoint(self) -> CheckpointDir | None:
        return self.training().latest_checkpoint()

    # eval
    eval = _path_under("root", "eval")

    def eval_dir(self, checkpoint: str, benchmark: str | None = None) -> str:
        """``{run}/eval/{checkpoint}/`` (or one benchmark's directory inside it)."""
        return join(self.eval, checkpoint, *([benchmark] if benchmark else []))

    # pipeline
    pipeline_state = _path_under("root", "pipeline.json")


def checkpoint_of(path: str) -> CheckpointDir | None:
    """The checkpoint a path belongs to (a ``.../train/checkpoint_*`` or ``.../rl/checkpoint_*``
    directory, its ``hf/`` or ``adapter/``)."""
    parts = path.rstrip("/").split("/")
    if parts and parts[-1] in EXPORT_DIRS:
        parts = parts[:-1]
    if len(parts) >= 3 and parts[-2] in TRAINING_STAGES and CHECKPOINT_RE.match(parts[-1]):
        return CheckpointDir("/".join(parts))
    return None


def export_of(path: str) -> CheckpointDir | None:
    """The checkpoint whose model export (``hf/`` or ``adapter/``) this path is, else None."""
    ckpt = checkpoint_of(path)
    return ckpt if ckpt is not None and path.rstrip("/") in (ckpt.hf, ckpt.adapter) else None


def list_dirs(path: str) -> list[str]:
    """Names of the sub-directories of a local or remote directory (none if it does not exist)."""
    fs, p = filesystem(path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(p, recursive=False))
    except FileNotFoundError:
        return []
    return sorted(i.path.rstrip("/").rsplit("/", 1)[-1] for i in infos if i.type == pafs.FileType.Directory)


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    if is_remote(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path.removeprefix("file://")))


# ---------------------------------------------------------------- manifests


@dataclass
class ManifestCheck:
    complete: bool
    reason: str = ""
    manifest: dict | None = None


def _atomic_write_local(path: str, data: bytes) -> None:
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write a whole file so that readers see either nothing or all of it."""
    if is_remote(path):
        fs, p = filesystem(path)
        # Object stores make a PUT visible only when complete; no rename needed.
        with fs.open_output_stream(p) as f:
            f.write(data)
    else:
        _atomic_write_local(path, data)


def write_json_atomic(path: str, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str) -> Any:
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return json.loads(f.read().decode())


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def list_files(directory: str) -> dict[str, int]:
    """Relative path -> size for every file under a directory (manifests and temp files excluded)."""
    fs, root = filesystem(directory)
    out: dict[str, int] = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = os.path.relpath(info.path, root) if not is_remote(directory) else info.path[len(root) :].lstrip("/")
        name = os.path.basename(rel)
        if name == MANIFEST or name.startswith(".tmp-"):
            continue
        out[rel.replace(os.sep, "/")] = info.size
    return out


def write_manifest(directory: str, kind: str, meta: dict | None = None, files: dict[str, int] | None = None,
                   checksums: bool = False) -> dict:
    """Seal a directory: list its files and sizes, then write manifest.json last (atomically)."""
    files = list_files(directory) if files is None else files
    manifest: dict[str, Any] = {
        "kind": str(kind),
        "created": time.time(),
        "files": {name: {"size": size} for name, size in sorted(files.items())},
        "meta": meta or {},
    }
    if checksums and not is_remote(directory):
        for name in manifest["files"]:
            manifest["files"][name]["sha256"] = sha256_file(os.path.join(directory, name))
    write_json_atomic(join(directory, MANIFEST), manifest)
    return manifest


def check_manifest(directory: str, kind: str | None = None, verify_checksums: bool = False) -> ManifestCheck:
    """Is this directory complete? Checks the manifest exists and every listed file has its size."""
    fs, root = filesystem(directory)
    mpath = join(directory, MANIFEST)
    if fs.get_file_info(filesystem(mpath)[1]).type != pafs.FileType.File:
        return ManifestCheck(False, f"{directory}: no {MANIFEST} (incomplete or still being written)")
    try:
        manifest = read_json(mpath)
    except (OSError, json.JSONDecodeError) as e:
        return ManifestCheck(False, f"{mpath}: unreadable manifest: {e}")
    if kind is not None and manifest.get("kind") != str(kind):
        return ManifestCheck(False, f"{mpath}: kind is {manifest.get('kind')!r}, expected {str(kind)!r}")
    present = list_files(directory)
    for name, entry in manifest.get("files", {}).items():
        if name not in present:
            return ManifestCheck(False, f"{directory}: {name} is listed in the manifest but missing")
        if present[name] != entry["size"]:
            return ManifestCheck(
                False, f"{directory}: {name} has {present[name]} bytes, the manifest says {entry['size']}"
            )
        if verify_checksums and "sha256" in entry and not is_remote(directory):
            if sha256_file(os.path.join(directory, name)) != entry["sha256"]:
                return ManifestCheck(False, f"{directory}: {name} does not match its sha256")
    return ManifestCheck(True, "", manifest)


# ---------------------------------------------------------------- model info (raywiz.json)


@dataclass(frozen=True)
class ModelInfo:
    """``raywiz.json`` in a model export (``hf/``, ``adapter/``): what a raywiz-trained model says about
    itself. Train writes it; eval, serve, evolve and tracking read it. ``template`` decides how inference
    renders prompts: the model sees instructions in the template it was trained with.

    Other models (a hub id, a user's own directory) have none: ``read`` gives an empty ModelInfo.
    """

    step: int | None = None
    run: str | None = None
    base_model: str | None = None
    template: str | None = None  # train.data.template.name (raywiz.data.template)
    prompt: str | None = None  # the custom template's text (template: custom)
    final: bool | None = None  # written by the last checkpoint of its run
    peft: str | None = None  # adapter/ only: lora | dora | qlora
    base_quantized: bool | None = None  # adapter/ only: the base trained in 4 bits (QLoRA)
    fim: dict | None = None  # the fill-in-the-middle tokens it knows (raywiz.data.fim.FimTokens.to_dict())

    @staticmethod
    def path(model_dir: str) -> str:
        return join(model_dir, MODEL_INFO)

    def write(self, model_dir: str) -> None:
        write_json_atomic(self.path(model_dir), self.to_dict())

    @classmethod
    def read(cls, model_dir: str) -> "ModelInfo":
        """A local or remote model directory's info; empty for other models, or a file that is unreadable."""
        try:
            data = read_json(cls.path(model_dir))
        except (OSError, ValueError):  # absent, unreadable, not JSON (ValueError covers pyarrow's bad URIs)
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}) if isinstance(data, dict) else cls()

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set: what the file holds, and what manifests and W&B metadata carry."""
        return {k: v for k, v in asdict(self).items() if v is not None}


# ---------------------------------------------------------------- instruction shards

# The columns `raywiz evolve` writes and `raywiz train` reads (instruction and output are required,
# `input` is optional: raywiz.data.shards checks rows).
SHARD_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("evol_round", pa.int32()),
        ("method", pa.string()),
        ("parent_id", pa.string()),
        ("source", pa.string()),
        ("model", pa.string()),
    ]
)


def stable_sample_id(*parts: str) -> str:
    """A content-derived id: the same text always gets the same id, across runs and machines."""
    h = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return h[:16]


def expand_paths(patterns: Iterable[str]) -> list[str]:
    """Expand globs and directories (local or remote) into a sorted list of data files."""
    import fnmatch
    import glob

    out: list[str] = []
    for pattern in patterns:
        pattern = resolve_package_path(pattern)
        if is_remote(pattern):
            fs, p = filesystem(pattern)
            if any(c in p for c in "*?["):
                base = p.split("*")[0].rsplit("/", 1)[0]
                infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
                scheme = pattern.split("://", 1)[0]
                matched = sorted(
                    f"{scheme}://{i.path}" for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, p)
                )
            else:
                info = fs.get_file_info(p)
                if info.type == pafs.FileType.Directory:
                    scheme = pattern.split("://", 1)[0]
                    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True))
                    matched = sorted(f"{scheme}://{i.path}" for i in infos if _is_data_file(i.path))
                else:
                    matched = [pattern]
        else:
            pattern = os.path.expanduser(pattern)
            if os.path.isdir(pattern):
                matched = sorted(
                    os.path.join(r, f) for r, _, fs_ in os.walk(pattern) for f in fs_ if _is_data_file(f)
                )
            else:
                matched = sorted(glob.glob(pattern, recursive=True)) if any(c in pattern for c in "*?[") else [pattern]
        if not matched:
            raise FileNotFoundError(f"{pattern}: no data files match")
        out.extend(matched)
    return out


def _is_data_file(name: str) -> bool:
    return name.endswith((".parquet", ".jsonl", ".json", ".jsonl.gz")) and os.path.basename(name) != MANIFEST


# ---------------------------------------------------------------- eval results


class _EvalFile:
    """One file of an EvalDir: ``eval_dir.summary`` is its path."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, eval_dir: "EvalDir | None", owner=None):
        return self if eval_dir is None else join(eval_dir.path, eval_dir.prefix + self.name)


@dataclass(frozen=True)
class EvalDir:
    """One model's results on one benchmark (Kind.EVAL_RESULTS), ``{run}/eval/{checkpoint}/{benchmark}/``:

        samples.jsonl          the model's outputs (task_id, completion, raw, prompt)
        samples.fingerprint    the settings that made them (a rerun with the same ones reuses them)
        results.partial.jsonl  verdicts appended as samples finish (an interrupted scoring resumes)
        results.jsonl          a verdict per sample
        summary.json           pass@k
        manifest.json          written last, with the fingerprint: the directory is complete only with it

    `prefix` names the files of `raywiz eval score`, which writes ``{stem}_results.jsonl`` beside a
    samples file of the user's."""

    path: str
    prefix: str = ""

    samples = _EvalFile("samples.jsonl")
    samples_fingerprint = _EvalFile("samples.fingerprint")
    results_partial = _EvalFile("results.partial.jsonl")
    results = _EvalFile("results.jsonl")
    summary = _EvalFile("summary.json")

    def samples_made_with(self, fingerprint: str) -> bool:
        """Whether samples.jsonl exists and was generated with these settings."""
        try:
            with open(self.samples_fingerprint) as f:
                return f.read().strip() == fingerprint and os.path.exists(self.samples)
        except OSError:
            return False

    def write_samples_fingerprint(self, fingerprint: str) -> None:
        write_bytes_atomic(self.samples_fingerprint, (fingerprint + "\n").encode())

    def is_complete(self, fingerprint: str | None = None) -> bool:
        """Sealed (manifest checks out), and by the same settings when a fingerprint is given."""
        check = check_manifest(self.path, kind=Kind.EVAL_RESULTS)
        return check.complete and (fingerprint is None or check.manifest["meta"].get("fingerprint") == fingerprint)

    def seal(self, fingerprint: str, benchmark: str) -> None:
        write_manifest(self.path, Kind.EVAL_RESULTS, meta={"fingerprint": fingerprint, "benchmark": benchmark})

    def read_summary(self) -> dict | None:
        """summary.json of a complete directory; None while it is incomplete or unreadable."""
        if not self.is_complete():
            return None
        try:
            summary = read_json(self.summary)
        except (OSError, json.JSONDecodeError):
            return None
        return summary if isinstance(summary, dict) else None


def model_identity(model_dir: str) -> dict:
    """{"name", "step", "run_dir"} of a model directory: a run's checkpoint export, or any model."""
    path = os.path.abspath(model_dir) if os.path.exists(model_dir) else model_dir
    info_file = os.path.join(path, "raywiz.json")
    info = read_json(info_file) if os.path.exists(info_file) else {}
    ckpt = export_of(path)
    if ckpt is not None:
        return {"name": ckpt.label, "step": info.get("step"), "run_dir": ckpt.run.root}
    name = os.path.basename(path.rstrip("/")) if os.path.isdir(path) else path.replace("/", "--")
    return {"name": name, "step": info.get("step"), "run_dir": None}


def model_results_dir(model_dir: str, output_dir: str | None = None, run_dir: str | None = None) -> str:
    """Where one model's eval results go (a directory per benchmark inside): ``{output_dir}/{name}``
    when given, else its own run's ``eval/{checkpoint}``, else beside a local model directory, else
    `run_dir`'s ``eval/{name}`` (a hub id)."""
    ident = model_identity(model_dir)
    if output_dir:
        return join(output_dir, ident["name"])
    if ident["run_dir"]:
        return RunLayout(ident["run_dir"]).eval_dir(ident["name"])
    if os.path.isdir(model_dir):
        return RunLayout(os.path.dirname(os.path.abspath(model_dir))).eval_dir(ident["name"])
    if run_dir is None:
        raise ValueError(f"{model_dir}: not a local directory; set eval.output_dir")
    return RunLayout(run_dir).eval_dir(ident["name"])
