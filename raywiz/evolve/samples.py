"""One instruction-response pair as the evolve stage carries it: exactly a row of the shard schema."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from raywiz.artifacts import SHARD_SCHEMA, stable_sample_id
from raywiz.data.template import fold_input


@dataclass
class Sample:
    sample_id: str
    instruction: str
    input: str
    output: str
    evol_round: int  # 0 = seed
    method: str  # "seed" or a name from raywiz.evolve.prompts.METHODS
    parent_id: str | None
    source: str  # where the seed came from (file or dataset name); evolved samples inherit it
    model: str | None  # the LLM that wrote this row's instruction/response (None: the seed's own)
    # Set by the verify step (raywiz/evolve/verify.py) on the rows it kept; None/False elsewhere.
    entry_point: str | None = None
    tests: list[str] | None = None
    verified: bool = False
    answers_tried: int | None = None
    answers_passed: int | None = None

    def row(self) -> dict:
        return asdict(self)

    @property
    def text(self) -> str:
        """Instruction and input together: what dedup compares and what gets evolved."""
        return fold_input(self.instruction, self.input)


def seed_id(instruction: str, input: str) -> str:
    return stable_sample_id("seed", instruction, input)


def evolved_id(parent_id: str, evol_round: int, method: str, instruction: str) -> str:
    return stable_sample_id(parent_id, str(evol_round), method, instruction)


assert [f.name for f in SHARD_SCHEMA] == list(Sample.__dataclass_fields__), "Sample must mirror SHARD_SCHEMA"
