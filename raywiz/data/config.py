"""The `train.data:` section of a job config: where the samples come from, their template, and packing.

It lives with the data library (raywiz.data.pipeline reads it) and train's section composes it, so the
data pipeline never imports a stage.
"""

from __future__ import annotations

from typing import Callable, Literal

from pydantic import Field, model_validator

from raywiz.config_base import ConfigSection


class TemplateConfig(ConfigSection):
    name: Literal["wizardcoder", "alpaca", "chat", "model", "chatml", "custom"] = Field(
        "wizardcoder",
        description="wizardcoder: WizardCoder's Alpaca prompt (input ignored, as theirs); alpaca: adds the "
        "'### Input:' variant when a row has input; model (or chat): the tokenizer's own chat template; chatml: "
        "ChatML on any tokenizer (<|im_start|>/<|im_end|> added when missing, the model's embeddings grown, the "
        "template saved with the tokenizer in hf/); custom: `prompt`. Chat templates render multi-turn "
        "conversations with the loss on assistant turns only.",
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
    formatting: Literal["alpaca", "sharegpt", "messages", "code"] = Field(
        "alpaca", description="alpaca: instruction/input/output; sharegpt: conversations [{from, value}]; "
        "messages: OpenAI-style [{role, content}]. The loss falls on assistant turns only. code: plain code "
        "(each plain text file is one sample, or a `content` column of JSONL/Parquet/a HF dataset), learned "
        "whole; train.data.fim rearranges it for fill-in-the-middle")
    weight: float = Field(1.0, gt=0, description="relative share of the mix (see raywiz/data/mix.py)")

    @model_validator(mode="after")
    def _one_origin(self):
        if (self.path is None) == (self.hf_dataset is None):
            raise ValueError("give exactly one of `path` or `hf_dataset`")
        return self

    @property
    def name(self) -> str:
        return self.path or f"{self.hf_dataset}[{self.split}]"


class FimConfig(ConfigSection):
    """Fill-in-the-middle on `formatting: code` sources (raywiz/data/fim.py: bigcode's transformation)."""

    rate: float = Field(0.5, ge=0, le=1, description="share of code samples turned into FIM samples "
                        "(StarCoder: 0.5)")
    spm_rate: float = Field(0.5, ge=0, le=1, description="share of those laid out suffix-prefix-middle "
                            "instead of prefix-suffix-middle (StarCoder: 0.5)")


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
    fim: FimConfig | None = Field(None, description="fill-in-the-middle for code sources, with the model's own "
                                  "FIM tokens (a tokenizer without them is refused); none: code is learned as is")
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
