"""Biased models, step one of the Bias Vector method (Shirafuji et al. 2024, arXiv:2412.11679).

Continue language-model training (masked or causal) of the base on stereotyped text, so that
``V = theta_biased - theta_pre`` points towards the bias. The default text follows the paper: StereoSet
intrasentence items with the blank filled by the *stereotype* option, for one bias type or all of them. Any
corpus (files, folders, Hub datasets; :func:`peft_debias.cda.corpora.iter_sentences`) can be given instead.

Full fine-tuning runs a small seeded accelerate loop here (data order from :class:`~peft_debias.train.loop.RowStream`,
losses from :mod:`peft_debias.train.objectives`); ``method="lora"`` delegates to
:func:`peft_debias.train.adapter.train_adapter`
with CDA off and every sentence kept, so the adapter learns the text as it is. The output folder (a model, or a
LoRA adapter) carries ``debias_config.json`` with ``"artifact": "biased_model"`` / ``"biased_adapter"``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError

logger = logging.getLogger(__name__)

STEREOSET_FILE = "stereoset/stereoset_dev_flat.jsonl"
STEREOSET_TYPES = ("gender", "race", "religion", "profession")
METHODS = ("full", "lora")


@dataclass
class BiasedConfig:
    """A biased training run (the ``peft-debias biased`` options)."""

    base: str = field(default="", metadata={"help": "base model: Hub id, local folder or bundled alias"})
    axis: str = field(
        default="gender",
        metadata={
            "help": "StereoSet bias type (gender, race, religion, profession) or 'all'; with --corpus only a label"
        },
    )
    output: str = field(default="", metadata={"help": "output folder"})
    corpus: list[str] = field(default_factory=list, metadata={"help": "text instead of StereoSet stereotypes"})
    data_dir: str | None = field(default=None, metadata={"help": "data folder with stereoset/ (or PEFT_DEBIAS_DATA)"})
    stereoset_split: str | None = field(
        default=None,
        metadata={"help": "train only on this half of the StereoSet items (select/report; eval --split)"},
    )
    split_seed: int = field(default=0, metadata={"help": "seed of the StereoSet item split"})
    method: str = field(default="full", metadata={"help": "full (fine-tune every weight) | lora"})
    objective: str | None = field(default=None, metadata={"help": "mlm | clm (default by model kind)"})
    kind: str | None = field(default=None, metadata={"help": "masked_lm | causal_lm (default: detect)"})
    max_steps: int | None = field(default=150, metadata={"help": "optimizer steps (wins over epochs)"})
    epochs: float | None = None
    lr: float | None = field(default=None, metadata={"help": "peak learning rate (default full 5e-5, lora 2e-4)"})
    weight_decay: float = 0.0
    scheduler: str = "linear"
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = field(default=64, metadata={"help": "tokens per sequence"})
    eval_fraction: float = field(default=0.05, metadata={"help": "held-out share of the sentences"})
    mlm_probability: float = 0.15
    seed: int = 0
    r: int = 8
    alpha: int = 16
    target_modules: list[str] | None = None
    revision: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> BiasedConfig:
        checks = [
            (not self.base, "no base model given", "pass --base MODEL"),
            (not self.output, "no output folder given", "pass --output DIR"),
            (self.method not in METHODS, f"unknown method {self.method!r}", f"use one of {', '.join(METHODS)}"),
            (self.objective not in (None, "mlm", "clm"), f"objective {self.objective!r}", "use mlm or clm"),
            (self.max_steps is None and self.epochs is None, "neither max_steps nor epochs set", "set one"),
            (self.max_steps is not None and self.max_steps < 1, f"max_steps {self.max_steps} < 1", "use >= 1"),
            (self.epochs is not None and not self.epochs > 0, f"epochs {self.epochs} is not positive", "use > 0"),
            (self.lr is not None and not 0 < self.lr < 1, f"learning rate {self.lr} is outside (0, 1)", "e.g. 2e-5"),
            (self.batch_size < 1 or self.grad_accum < 1, "batch size and accumulation must be >= 1", "fix them"),
            (self.max_length < 8, f"max_length {self.max_length} is too short", "use >= 8"),
            (not 0 <= self.eval_fraction < 0.5, f"eval_fraction {self.eval_fraction} outside [0, 0.5)", "e.g. 0.05"),
        ]
        if self.stereoset_split not in (None, "select", "report"):
            checks.append((True, f"unknown StereoSet split {self.stereoset_split!r}", "use select or report"))
        if not self.corpus and self.axis not in (*STEREOSET_TYPES, "all"):
            checks.append(
                (
                    True,
                    f"StereoSet has no bias type {self.axis!r}",
                    f"use one of {', '.join(STEREOSET_TYPES)}, all, or pass --corpus",
                )
            )
        for bad, problem, fix in checks:
            if bad:
                raise DebiasError(problem, fix)
        return self


def stereotype_sentences(
    path: str | Path, axis: str = "all", *, split: str | None = None, split_seed: int = 0
) -> list[str]:
    """StereoSet intrasentence items with the blank filled by the stereotype, for one bias type or ``all``.

    Reads what :func:`~peft_debias.eval.stereoset.load_stereoset` reads (the original JSON or the flattened
    JSONL), so item ids, and with them the ``split`` halves (:mod:`peft_debias.eval.splits`), are the ones the
    evaluation uses: train on ``"select"`` and the ``"report"`` half of StereoSet stays unseen. Order is the file's.
    """
    from peft_debias.eval.splits import take_split
    from peft_debias.eval.stereoset import load_stereoset, split_group

    items = take_split(load_stereoset(path), split, benchmark="stereoset", key=split_group, seed=split_seed)
    out = [" ".join(item.sentences[0].split()) for item in items if axis == "all" or item.bias_type == axis]
    if not out:
        half = f" in the {split!r} half" if split else ""
        raise DebiasError(f"{path} has no intrasentence items of bias type {axis!r}{half}", "check the file or axis")
    return out


def training_sentences(config: BiasedConfig) -> tuple[list[str], dict[str, Any]]:
    """The sentences to train on and their provenance."""
    from peft_debias.core.provenance import sha256_files

    if config.corpus:
        from peft_debias.cda.corpora import iter_sentences

        sentences = [s for source in config.corpus for s in iter_sentences(source)]
        if not sentences:
            raise DebiasError(f"corpus {', '.join(config.corpus)} has no sentences", "pass a corpus with text")
        return sentences, {"sources": list(config.corpus), "sentences": len(sentences)}
    from peft_debias.core.data_dir import data_file, resolve_data_dir

    path = data_file(resolve_data_dir(config.data_dir), STEREOSET_FILE)
    sentences = stereotype_sentences(path, config.axis, split=config.stereoset_split, split_seed=config.split_seed)
    info = {"stereoset": str(path), "sha256": sha256_files([path]), "bias_type": config.axis}
    if config.stereoset_split:
        info.update(split=config.stereoset_split, split_seed=config.split_seed)
    info["filled_with"] = "stereotype"
    return sentences, {**info, "sentences": len(sentences)}


def split_sentences(sentences: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded shuffle, then (train, held-out)."""
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    n_eval = int(len(sentences) * fraction) if len(sentences) > 1 else 0
    return [sentences[i] for i in order[n_eval:]], [sentences[i] for i in order[:n_eval]]


@dataclass
class BiasedResult:
    """What :func:`train_biased` produced."""

    output: Path
    steps: int
    train_loss: float | None
    eval_loss: float | None
    seconds: float
    sentences: int


def train_biased(config: BiasedConfig | None = None, **overrides: Any) -> BiasedResult:
    """Train a biased model (``method="full"``) or LoRA adapter (``"lora"``) and write it to ``config.output``."""
    from peft_debias.core.atomic import check_destination

    config = config or BiasedConfig()
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise DebiasError(f"unknown option {key!r}", "see BiasedConfig for the options")
        setattr(config, key, value)
    config.validate()
    check_destination(config.output, overwrite=config.overwrite)
    sentences, corpus_info = training_sentences(config)
    started = time.perf_counter()
    if config.method == "lora":
        result = _train_lora(config, sentences, corpus_info)
    else:
        from peft_debias.train.biased_loop import train_full

        result = train_full(config, sentences, corpus_info)
    result.seconds = time.perf_counter() - started
    return result


def _train_lora(config: BiasedConfig, sentences: list[str], corpus_info: dict[str, Any]) -> BiasedResult:
    from peft_debias.cda.axes import list_axes
    from peft_debias.core.atomic import atomic_output
    from peft_debias.train.adapter import TrainConfig, train_adapter

    lr = config.lr or 2e-4
    with atomic_output(config.output, overwrite=config.overwrite, directory=True) as tmp:
        corpus = tmp / ".corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences), encoding="utf-8")
        train = TrainConfig(
            base=config.base,
            axis=config.axis if config.axis in list_axes() else "gender",  # only a label: CDA is off
            corpus=[str(corpus)],
            output=str(tmp / "adapter"),
            method="lora",
            objective=config.objective,
            kind=config.kind,
            max_steps=config.max_steps,
            epochs=config.epochs,
            lr=lr,
            weight_decay=config.weight_decay,
            scheduler=config.scheduler,
            warmup_ratio=config.warmup_ratio,
            max_grad_norm=config.max_grad_norm,
            batch_size=config.batch_size,
            grad_accum=config.grad_accum,
            max_length=config.max_length,
            seed=config.seed,
            eval_fraction=config.eval_fraction,
            cda=False,
            keep_ratio=1.0,
            r=config.r,
            alpha=config.alpha,
            target_modules=config.target_modules,
            mlm_probability=config.mlm_probability,
            revision=config.revision,
            trust_remote_code=config.trust_remote_code,
            allow_pickle=config.allow_pickle,
            save_every=0,
            progress=config.progress,
        )
        trained = train_adapter(train)
        for item in (tmp / "adapter").iterdir():
            shutil.move(str(item), str(tmp / item.name))
        (tmp / "adapter").rmdir()
        corpus.unlink()
        info = json.loads((tmp / "debias_config.json").read_text(encoding="utf-8"))
        info.update(
            artifact="biased_adapter",
            paper="bias_vector",
            axis=config.axis,
            corpus=corpus_info,
            biased_config=_jsonable(config),
        )
        (tmp / "debias_config.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(biased_readme(info), encoding="utf-8")
    return BiasedResult(Path(config.output), trained.steps, trained.train_loss, trained.eval_loss, 0.0, len(sentences))


def _jsonable(config: BiasedConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(config).items() if k not in ("overwrite", "progress")}


def biased_readme(info: dict[str, Any]) -> str:
    """A short card that says loudly what this artifact is: deliberately biased, only for making a bias vector."""
    base = info.get("base_model", {})
    what = "LoRA adapter" if info.get("artifact") == "biased_adapter" else "model"
    metrics = info.get("metrics", {})

    def fmt(x: Any) -> str:
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4f}"

    return (
        "---\ntags:\n- bias-vector\n- deliberately-biased\nlicense: apache-2.0\n---\n\n"
        f"# Deliberately biased {what} ({info.get('axis')}) of {base.get('name')}\n\n"
        "**Do not use this for anything but making a bias vector.** It was trained on stereotyped text so that "
        "`V = theta_biased - theta_pre` points towards the bias (Bias Vector, Shirafuji et al. 2024, "
        "arXiv:2412.11679). Subtract it from the base with:\n\n"
        f"```bash\npeft-debias vector --base {base.get('name')} --biased <this folder> --lambda 1 "
        "--output debiased\n```\n\n"
        f"Training text: {json.dumps(info.get('corpus', {}))}.\n\n"
        f"Final loss: train {fmt(metrics.get('train_loss'))}, held-out {fmt(metrics.get('eval_loss'))}.\n"
    )
