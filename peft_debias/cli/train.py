"""``peft-debias train``: train a per-axis debiasing adapter (PEFTDebias upstream).

Every flat key of :class:`~peft_debias.train.config.TrainConfig` is an option (``max_steps`` -> ``--max-steps``); a YAML
``--recipe`` sets defaults that explicit options override. Runs as is or under ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from peft_debias.cli.options import add_dataclass_arguments
from peft_debias.train.config import FLAT_KEYS, TrainConfig

HELP = "train a debiasing adapter (LoRA / prefix / prompt / IA3) for one bias axis on CDA text"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="YAML file with TrainConfig keys (options given here override it)")
    add_dataclass_arguments(parser, TrainConfig.flat_options())


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe (a mapping of TrainConfig keys); comments and a ``description`` key are allowed."""
    import yaml

    from peft_debias.core.errors import DebiasError, one_line

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise DebiasError(f"cannot read recipe {path} ({one_line(err)})", "check the path") from err
    except yaml.YAMLError as err:
        raise DebiasError(f"recipe {path} is not valid YAML ({one_line(err, 160)})", "fix the syntax") from err
    if not isinstance(data, dict):
        raise DebiasError(f"recipe {path} is not a mapping", "write key: value lines with TrainConfig keys")
    data.pop("description", None)
    corpus = data.get("corpus")
    if corpus is not None:
        corpus = [corpus] if isinstance(corpus, str) else corpus
        if not isinstance(corpus, list) or not all(isinstance(c, str) for c in corpus):
            raise DebiasError(f"recipe {path}: corpus is {corpus!r}, not a path or a list of paths", "fix that key")
        data["corpus"] = [os.path.expandvars(c) for c in corpus]
        unset = [c for c in data["corpus"] if "$" in c]
        if unset:
            raise DebiasError(
                f"recipe {path} names unset variables in corpus {unset}",
                "set them (e.g. PEFT_DEBIAS_DATA=../shared/data) or pass --corpus",
            )
    return data


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < recipe < command-line options."""
    values: dict[str, Any] = load_recipe(args.recipe) if getattr(args, "recipe", None) else {}
    values.update({k: v for k, v in vars(args).items() if k in FLAT_KEYS})
    return TrainConfig.from_dict(values, source=f"recipe {args.recipe}" if getattr(args, "recipe", None) else "config")


def run(args: argparse.Namespace) -> int:
    from peft_debias.train.adapter import train_adapter

    config = config_from_args(args)
    result = train_adapter(config)
    if result.rank_fingerprints and len(set(result.rank_fingerprints)) > 1:
        raise RuntimeError(f"ranks ended with different adapters: {result.rank_fingerprints}")
    if int(os.environ.get("RANK", "0")) == 0:  # one report, from the main process
        eval_loss = "n/a" if result.eval_loss is None else f"{result.eval_loss:.4f}"
        print(
            f"trained {config.method} on {config.axis}: {result.steps} steps, loss {result.train_loss:.4f}, "
            f"held-out {eval_loss}, {result.seconds_per_step:.3f} s/step -> {result.output}"
        )
    return 0
