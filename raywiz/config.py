"""The job config: one typed object for the whole pipeline, loaded from YAML.

Each stage owns its own section class (``raywiz/<stage>/config.py``); this module composes them,
applies ``--set key=value`` overrides and turns pydantic's errors into messages that name the file
and the field's dotted path. Everything is validated before any Ray work starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from raywiz.config_base import ConfigError, ConfigSection  # noqa: F401  (ConfigError: re-exported)
from raywiz.eval.config import EvalConfig
from raywiz.evolve.config import EvolveConfig
from raywiz.rl.config import RLConfig
from raywiz.serve.config import ServeConfig
from raywiz.train.config import TrainConfig


class ModelConfig(ConfigSection):
    name_or_path: str = Field(
        "tiny-gpt-bigcode",
        description="Hugging Face hub name, local directory, or a named tiny config "
        "(see raywiz.modeling.TINY_CONFIGS) that is random-initialised.",
    )
    tokenizer: str | None = Field(
        None, description="Tokenizer name or path; default: the model's own (tiny models: the shipped one)."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto = bfloat16 on GPU, float32 on CPU."
    )
    attn_implementation: str | None = Field(
        None, description="transformers attention backend; default: raywiz picks one that handles packing."
    )
    trust_remote_code: bool = False
    revision: str | None = None


class ClusterConfig(ConfigSection):
    address: str | None = Field(
        None,
        description="Ray address ('auto', 'ray://host:10001'); None starts a local Ray cluster "
        "unless RAY_ADDRESS is set.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local cluster (default: all).")
    num_gpus: int | None = Field(None, ge=0, description="GPUs for a local cluster (default: all).")


class WandbConfig(ConfigSection):
    enabled: bool = False
    project: str = "raywiz"
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="Default: the WANDB_MODE environment variable, else online."
    )
    tags: list[str] = Field(default_factory=list)


RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class JobConfig(ConfigSection):
    name: str = Field(description="The run id: names the run directory, the Ray run, the W&B group.")
    storage: str = Field(
        "./runs", description="Local path or s3://, gs:// URI; the run lives in {storage}/{name}."
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    evolve: EvolveConfig | None = None
    train: TrainConfig | None = None
    rl: RLConfig | None = None
    eval: EvalConfig | None = None
    serve: ServeConfig | None = None

    @field_validator("name")
    @classmethod
    def _run_name(cls, v: str) -> str:
        if not RUN_NAME.match(v):
            raise ValueError("must be 1-128 characters of letters, digits, '_', '.', '-' and start with a letter or digit")
        return v

    @model_validator(mode="after")
    def _train_evaluation_needs_eval(self):
        if self.train is not None and self.train.evaluate.enabled and self.eval is None:
            raise ValueError("train.evaluate.enabled: the job needs an `eval:` section (benchmarks, decoding)")
        return self

    @model_validator(mode="after")
    def _rl_starts_from_a_model(self):
        if self.rl is not None and self.rl.model in ("best", "last") and self.train is None:
            raise ValueError(f"rl.model: {self.rl.model!r} means this run's train checkpoint, but the job has no "
                             "`train:` section (name a model directory or hub name instead)")
        return self

    @property
    def run_dir(self) -> str:
        return self.layout.root

    @property
    def layout(self):
        """This run's directory layout (raywiz.artifacts.RunLayout): every stage asks it for paths."""
        from raywiz.artifacts import RunLayout

        return RunLayout.of(self.storage, self.name)

    def require(self, stage: str) -> Any:
        """The stage's section, or a ConfigError saying it is missing."""
        section = getattr(self, stage)
        if section is None:
            raise ConfigError(f"{stage}: this job has no '{stage}:' section, so `raywiz {stage}` has nothing to run")
        return section


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid job config"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {path}: {e['msg']}")
    return "\n".join(lines)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.optim.lr=1e-5")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from None
    return keys, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys in the raw YAML mapping (before validation, so errors name the field)."""
    for item in overrides:
        keys, value = _parse_override(item)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: '{k}' is not a section")
            node = nxt
        node[keys[-1]] = value
    return data


def parse_job(data: Any, source: str = "<job>", overrides: list[str] | None = None) -> JobConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a job config must be a YAML mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        return JobConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (not the last one wins)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
            except TypeError:
                pass  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep=deep)


def load_job(path: str | os.PathLike, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML job file, apply overrides, validate. Raises ConfigError naming file and field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: job file not found")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    except RecursionError:
        raise ConfigError(f"{p}: not valid YAML: nested too deep") from None
    job = parse_job(data, str(p), overrides)
    # Relative local paths in a job file are relative to the file, so jobs run from any directory.
    job_dir = p.resolve().parent
    return _resolve_relative_paths(job, job_dir)


def _resolve_relative_paths(job: JobConfig, base: Path) -> JobConfig:
    from raywiz.artifacts import PACKAGE_SCHEME, is_remote

    def fix(path: str) -> str:
        if is_remote(path) or path.startswith(PACKAGE_SCHEME):
            return path
        if os.path.isabs(path) or path.startswith("~"):
            return os.path.expanduser(path)
        # Named things (tiny configs, hub ids) are not paths: keep them unless the file exists.
        candidate = base / path
        return str(candidate) if (path.startswith(".") or candidate.exists()) else path

    # storage is where outputs go: relative to the working directory, like any CLI's output path.
    if not is_remote(job.storage):
        job.storage = os.path.abspath(os.path.expanduser(job.storage))
    if job.model.name_or_path.startswith(".") or (base / job.model.name_or_path).exists():
        job.model.name_or_path = fix(job.model.name_or_path)
    for section in (job.evolve, job.train, job.rl, job.eval, job.serve):
        hook = getattr(section, "resolve_paths", None)
        if hook is not None:
            hook(fix)
    return job
