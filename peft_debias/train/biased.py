"""Biased models, step one of the Bias Vector method (Shirafuji et al. 2024, arXiv:2412.11679).

Continue language-model training (masked or causal) of the base on stereotyped text, so that
``V = theta_biased - theta_pre`` points towards the bias. The default text follows the paper: StereoSet
intrasentence items with the blank filled by the *stereotype* option, for one bias type or all of them. Any
corpus (files, folders, Hub datasets; :func:`peft_debias.cda.corpora.iter_sentences`) can be given instead.

Both methods run the training loop of the adapters (:func:`peft_debias.train.loop.train`: same seeding,
checkpoints, accelerate handling and log) on the sentences as they are, CDA off: ``method="full"`` fine-tunes every
weight and saves the model with the base's tensor names (so :class:`~peft_debias.vector.bias_vector.BiasVector` can
subtract the two), ``"lora"`` trains a LoRA adapter. The output folder carries ``debias_config.json`` with
``"artifact": "biased_model"`` / ``"biased_adapter"``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from peft_debias.core.bounds import check_minimums
from peft_debias.core.errors import DebiasError
from peft_debias.core.portable import scrub_local_paths
from peft_debias.core.provenance import sidecar
from peft_debias.train.artifact import (
    adapter_info,
    base_model_info,
    portable_run_config,
    save_adapter,
    training_setup,
    write_folder,
)
from peft_debias.train.config import FLAT_KEYS, TrainConfig, Trained, Writer

logger = logging.getLogger(__name__)

STEREOSET_FILE = "stereoset/stereoset_dev_flat.jsonl"
STEREOSET_TYPES = ("gender", "race", "religion", "profession")
METHODS = ("full", "lora")
DEFAULT_LR = {"full": 5e-5, "lora": 2e-4}


@dataclass
class BiasedConfig:
    """A biased training run (the ``peft-debias biased`` options)."""

    base: str = field(default="", metadata={"help": "base model: Hub id, local folder or bundled alias"})
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base, recorded in the output (default: from --base; a local folder needs it)"},
    )
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
    split_seed: int = field(default=0, metadata={"help": "seed of the StereoSet item split", "min": 0})
    method: str = field(default="full", metadata={"help": "full (fine-tune every weight) | lora"})
    objective: str | None = field(default=None, metadata={"help": "mlm | clm (default by model kind)"})
    kind: str | None = field(default=None, metadata={"help": "masked_lm | causal_lm (default: detect)"})
    max_steps: int | None = field(default=150, metadata={"help": "optimizer steps (wins over epochs)"})
    epochs: float | None = None
    lr: float | None = field(default=None, metadata={"help": "peak learning rate (default full 5e-5, lora 2e-4)"})
    weight_decay: float = 0.0
    optimizer: str = field(default="adamw", metadata={"help": "adamw | adamw_8bit | paged_adamw_8bit (bitsandbytes)"})
    scheduler: str = "linear"
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = field(default=64, metadata={"help": "tokens per sequence"})
    eval_fraction: float = field(default=0.05, metadata={"help": "held-out share of the sentences"})
    mlm_probability: float = 0.15
    seed: int = field(default=0, metadata={"help": "random seed", "min": 0})
    r: int = field(default=8, metadata={"help": "LoRA rank (method lora)", "min": 1, "max": 4096})
    alpha: int = 16
    target_modules: list[str] | None = None
    device: str = field(default="auto", metadata={"help": "auto (the accelerator if present) | cpu | cuda[:N] | mps"})
    dtype: str = field(
        default="float32", metadata={"help": "weights' dtype: float32 | bfloat16 (full: trained and saved in it)"}
    )
    revision: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> BiasedConfig:
        check_minimums(self)
        if self.base_model_id is not None:
            from peft_debias.models.base_ids import check_base_model_id

            check_base_model_id(self.base_model_id)
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
        from peft_debias.models.placement import check_training_placement, resolve_device
        from peft_debias.train.optim import check_optimizer

        check_training_placement(self.device, self.dtype)
        resolve_device(self.device)  # an accelerator that is not here: refused before the text is read
        check_optimizer(self.optimizer)
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
    from peft_debias.core.fingerprints import sha256_files

    if config.corpus:
        from peft_debias.cda.corpora import corpus_provenance, iter_sentences

        sentences = [s for source in config.corpus for s in iter_sentences(source)]
        if not sentences:
            raise DebiasError(f"corpus {', '.join(config.corpus)} has no sentences", "pass a corpus with text")
        return sentences, {"sources": corpus_provenance(config.corpus), "sentences": len(sentences)}
    from peft_debias.core.data_dir import data_file, resolve_data_dir

    path = data_file(resolve_data_dir(config.data_dir), STEREOSET_FILE)
    sentences = stereotype_sentences(path, config.axis, split=config.stereoset_split, split_seed=config.split_seed)
    info = {"stereoset": path.name, "sha256": sha256_files([path]), "bias_type": config.axis}
    if config.stereoset_split:
        info.update(split=config.stereoset_split, split_seed=config.split_seed)
    info["filled_with"] = "stereotype"
    return sentences, {**info, "sentences": len(sentences)}


@dataclass
class BiasedResult:
    """What :func:`train_biased` produced."""

    output: Path
    steps: int
    train_loss: float | None
    eval_loss: float | None
    seconds: float
    sentences: int
    rank_fingerprints: list[str] = field(default_factory=list)  # the trained weights' digest on each process


def train_biased(config: BiasedConfig | None = None, **overrides: Any) -> BiasedResult:
    """Train a biased model (``method="full"``) or LoRA adapter (``"lora"``) and write it to ``config.output``."""
    from peft_debias.core.atomic import check_destination, check_not_input
    from peft_debias.train.loop import train
    from peft_debias.train.work import work_dir

    config = config or BiasedConfig()
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise DebiasError(f"unknown option {key!r}", "see BiasedConfig for the options")
        setattr(config, key, value)
    config.validate()
    check_destination(config.output, overwrite=config.overwrite)
    check_not_input(config.output, [config.base, *config.corpus])
    sentences, corpus_info = training_sentences(config)
    started = time.perf_counter()
    shutil.rmtree(work_dir(config.output), ignore_errors=True)  # biased runs never resume: a killed one's work goes
    trained = train(_train_config(config, len(sentences)), texts=sentences, write=_writer(config, corpus_info))
    seconds = time.perf_counter() - started
    return BiasedResult(
        Path(config.output),
        trained.steps,
        trained.train_loss,
        trained.eval_loss,
        seconds,
        len(sentences),
        trained.rank_fingerprints,
    )


def _train_config(config: BiasedConfig, n_sentences: int) -> TrainConfig:
    """The loop's config: every shared option as given, CDA off, a log line per step, held-out loss at the end."""
    shared = {k: v for k, v in asdict(config).items() if k in FLAT_KEYS and k not in ("corpus", "lr")}
    return TrainConfig(
        **shared,
        lr=config.lr or DEFAULT_LR[config.method],
        cda=False,
        eval_max_rows=n_sentences,  # the held-out share of the sentences, uncapped
        eval_every=0,
        save_every=0,
        log_every=1,
    )


def _writer(config: BiasedConfig, corpus_info: dict[str, Any]) -> Writer:
    """Writes the biased model (or adapter) folder of a finished run."""

    def write(trained: Trained) -> None:
        corpus = {**corpus_info, **trained.data}
        full = config.method == "full"
        info = _model_info(trained, corpus, config) if full else _adapter_info(trained, corpus, config)
        info = scrub_local_paths(info)

        def save(folder: Path) -> None:
            state = trained.result.full_state  # a sharded run's gathered weights (else None: the model's own)
            if full:  # a model folder that loads on its own
                trained.model.save_pretrained(str(folder), state_dict=state)
                trained.tokenizer.save_pretrained(str(folder))
            else:
                save_adapter(trained.model, folder, info["base_model"]["hub_id"], state)

        write_folder(trained, info, biased_readme(info), save)

    return write


def _adapter_info(trained: Trained, corpus: dict[str, Any], config: BiasedConfig) -> dict[str, Any]:
    from peft_debias.cda.axes import get_axis, list_axes

    axis = get_axis(config.axis) if config.axis in list_axes() else None  # else only a label (e.g. all)
    info = adapter_info(replace(trained, axis=axis), str(trained.model.peft_config["default"].peft_type.value))
    info.update(artifact="biased_adapter", paper="bias_vector", axis=config.axis, corpus=corpus)
    info.update(cda={"swapped": False}, biased_config=_jsonable(config))
    return info


def _model_info(trained: Trained, corpus: dict[str, Any], config: BiasedConfig) -> dict[str, Any]:
    result = trained.result
    fields = {
        "paper": "bias_vector",
        "axis": config.axis,
        "method": "full",
        "objective": trained.objective,
        "base_model": base_model_info(trained),
        "corpus": corpus,
        "training": {
            "steps": result.steps,
            "lr": trained.config.lr,
            **training_setup(trained),
            "seconds": round(result.seconds, 2),
            "seconds_per_step": result.seconds_per_step,
            "world_size": trained.world,
        },
        "metrics": {"train_loss": result.train_loss, "eval_loss": result.eval_loss},
        "rank_fingerprints": result.rank_fingerprints,
        "biased_config": _jsonable(config),
    }
    return sidecar("biased_model", fields)


def _jsonable(config: BiasedConfig) -> dict[str, Any]:
    return portable_run_config(asdict(config), ("overwrite", "progress"))


def biased_readme(info: dict[str, Any]) -> str:
    """A short card that says loudly what this artifact is: deliberately biased, only for making a bias vector."""
    from peft_debias.cards.adapter import trained_on

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
        f"Final loss: train {fmt(metrics.get('train_loss'))}, held-out {fmt(metrics.get('eval_loss'))}.\n\n"
        f"Trained on: {trained_on(info.get('training', {}))}.\n"
    )
