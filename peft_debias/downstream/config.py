"""The options of one downstream run (``peft-debias downstream``), as a documented dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from peft_debias.core.errors import DebiasError


@dataclass
class DownstreamConfig:
    """One downstream fine-tuning run: a classifier on ``model`` with ``adapters`` frozen inside, on ``task``."""

    model: str = field(default="", metadata={"help": "base model: Hub id, local folder or bundled alias"})
    adapter: list[str] = field(
        default_factory=list,
        metadata={"help": "debiasing adapter folder or Hub repo id, frozen while the rest trains (none: plain)"},
    )
    task: str = field(default="winobias", metadata={"help": "winobias | csv"})
    data_dir: str | None = field(default=None, metadata={"help": "data folder with winobias/ (or PEFT_DEBIAS_DATA)"})
    output: str = field(default="", metadata={"help": "output folder: metrics.json, predictions.jsonl, model/"})
    train_file: str | None = field(default=None, metadata={"help": "csv task: training CSV/JSONL or Hub dataset id"})
    test_file: str | None = field(default=None, metadata={"help": "csv task: test CSV/JSONL (Hub: the test split)"})
    text_column: str = field(default="text", metadata={"help": "csv task: column with the text"})
    label_column: str = field(default="label", metadata={"help": "csv task: column with the class label"})
    group_column: str = field(default="group", metadata={"help": "csv task: column with the demographic group"})
    groups: str = field(default="male,female", metadata={"help": "the two groups compared by TPR-GAP"})
    identity_terms: str | None = field(
        default=None, metadata={"help": "csv task: comma-separated FPRD identity terms (default: the axis words)"}
    )
    axis: str = field(default="gender", metadata={"help": "csv task: axis whose words are the FPRD identity terms"})
    positive_label: str | None = field(
        default=None, metadata={"help": "csv task: FPRD positive label (default: 1 when the labels are 0/1)"}
    )
    anti_share: float = field(
        default=0.0,
        metadata={
            "help": "winobias: share of anti-stereotyped dev sentences added to the pro-stereotyped training set",
            "min": 0.0,
            "max": 1.0,
        },
    )
    epochs: float = field(default=3.0, metadata={"help": "passes over the training rows", "min": 0.01, "max": 1000})
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps (wins over --epochs)", "min": 1})
    batch_size: int = field(default=16, metadata={"help": "examples per step and process", "min": 1, "max": 65536})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate (linear decay, 6% warm-up)", "min": 0.0})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay", "min": 0.0})
    max_length: int = field(default=128, metadata={"help": "tokens per example", "min": 8, "max": 1_000_000})
    seed: int = field(default=0, metadata={"help": "seed of the head, the data order and dropout", "min": 0})
    freeze_layer_norm: bool = field(default=False, metadata={"help": "also freeze LayerNorms (the paper's code)"})
    save_model: bool = field(default=True, metadata={"help": "save the fine-tuned model under <output>/model"})
    allow_base_mismatch: bool = field(default=False, metadata={"help": "load adapters recorded for another base"})
    allow_pickle: bool = field(default=False, metadata={"help": "accept pickle (.bin) weights"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output folder"})
    device: str = field(default="auto", metadata={"help": "auto (the accelerator if present) | cpu | cuda[:N] | mps"})
    dtype: str = field(default="float32", metadata={"help": "weights: float32 | bfloat16 | float16 (auto: float32)"})

    def __post_init__(self) -> None:
        if not self.model:
            raise DebiasError("no model given", "pass --model (a Hub id, local folder or bundled alias)")
        if not self.output:
            raise DebiasError("no output folder given", "pass --output DIR")
        if len(self.group_pair) != 2:
            raise DebiasError(f"groups {self.groups!r} does not name two groups", "pass e.g. --groups male,female")
        from peft_debias.models.placement import Placement

        Placement(self.device, self.dtype).check()

    @property
    def group_pair(self) -> tuple[str, ...]:
        """The two groups compared by TPR-GAP."""
        return tuple(g.strip() for g in self.groups.split(",") if g.strip())

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> DownstreamConfig:
        """A config from a mapping of field names (unknown keys refused, naming the known ones)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise DebiasError(
                f"unknown downstream option(s) {', '.join(unknown)}", f"known: {', '.join(sorted(names))}"
            )
        return cls(**values)
