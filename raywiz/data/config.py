"""The `train.data:` section of a job config: where the samples come from, their template, and packing.

It lives with the data library (raywiz.data.pipeline reads it) and train's section composes it, so the
data pipeline never imports a stage.
"""

from __future__ import annotations

from typing import Callable, Literal

from pydantic import Field, model_validator

from raywiz.config_base import ConfigSection


class TemplateConfig(ConfigSection):
    name: Literal["wizardcoder", "alpaca", "chat", "custom"] = Field(
        "wizardcoder",
        description="wizardcoder: WizardCoder's Alpaca prompt (input ignored, as theirs); alpaca: adds the "
        "'### Input:' variant when a row has input; chat: the tokenizer's chat template; custom: `prompt`.",
    )
    prompt: str | None = Field(None, description="custom template with {instruction} and {input} fields")

    @model_validator(mode="after")
    def _custom_needs_prompt(self):
        if self.name == "custom" and not self.prompt:
            raise ValueError("name 'custom' needs a `prompt` with an {instruction} field")
        if self.prompt is not None and "{instruction}" not in self.prompt:
            raise ValueError("prompt must contain {instruction}")
        return self


class DataSourceConfig(ConfigSection):
    """One source of training samples: files, or a Hugging Face dataset, in one format, with a weight."""

    path: str | None = Field(None, description="files, a directory or a glob (local, s3://, gs://), as `paths`")
    hf_dataset: str | None = Field(
        None, description="a Hugging Face dataset: a hub name (online) or a directory written by save_to_disk")
    split: str = "train"
    formatting: Literal["alpaca", "sharegpt", "messages"] = Field(
        "alpaca", description="alpaca: instruction/input/output; sharegpt: conversations [{from, value}]; "
        "messages: OpenAI-style [{role, content}]. The loss falls on assistant turns only.")
    weight: float = Field(1.0, gt=0, description="relative share of the mix (see raywiz/data/mix.py)")

    @model_validator(mode="after")
    def _one_origin(self):
        if (self.path is None) == (self.hf_dataset is None):
            raise ValueError("give exactly one of `path` or `hf_dataset`")
        return self

    @property
    def name(self) -> str:
        return self.path or f"{self.hf_dataset}[{self.split}]"


class DataConfig(ConfigSection):
    paths: list[str] = Field(
        default_factory=list,
        description="instruction shards: files, directories or globs; local, s3:// or gs://; "
        "'raywiz:quickstart/instructions.jsonl' names a file shipped with raywiz. "
        "Empty (and no `sources`): this run's evolve output ({storage}/{name}/evolve).",
    )
    sources: list[DataSourceConfig] = Field(
        default_factory=list,
        description="several sources mixed by weight, each with its own formatting; `paths` is the "
        "one-source form (alpaca formatting, weight 1)")
    format: Literal["auto", "parquet", "jsonl"] = "auto"
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    max_length: int = Field(2048, ge=16, description="tokens per sample and per packed row")
    overlong: Literal["drop", "truncate"] = Field("drop", description="samples longer than max_length")
    pack: bool = Field(True, description="pack samples into rows of max_length tokens (no cross-sample attention)")
    pack_window: int = Field(1024, ge=1, description="samples considered together when packing")
    on_bad_row: Literal["report", "error"] = Field(
        "report", description="report: count bad rows and skip them; error: fail on the first one"
    )
    shuffle: bool = True
    shuffle_buffer_rows: int = Field(1024, ge=1, description="per-worker buffer for the per-epoch reshuffle")
    tokenize_batch_size: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _paths_or_sources(self):
        if self.paths and self.sources:
            raise ValueError("give `paths` or `sources`, not both (a path is a source: {path: ..., weight: 1})")
        return self

    def resolve_paths(self, fix: Callable[[str], str]) -> None:
        self.paths = [fix(p) for p in self.paths]
        for source in self.sources:
            if source.path:
                source.path = fix(source.path)
            if source.hf_dataset and source.hf_dataset.startswith((".", "~")):  # a local save_to_disk dir
                source.hf_dataset = fix(source.hf_dataset)
