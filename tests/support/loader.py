"""Shared helpers of the loader, merge and downstream tests: tiny trained adapters, cached per session,
and a generated classification set with a planted gender shortcut."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch

from peft_debias.loader.attach import adapter_parameters
from peft_debias.train.adapter import train_adapter
from peft_debias.train.config import TrainConfig

from support.tiny_models import CORPUS

_CACHE: dict[tuple[str, str, str], Path] = {}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread per test (autouse where imported): on a shared 2-core machine this is several times faster
    than two (DESIGN.md section 5)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_ROOT: list[Path] = []
_SEEDED: dict[tuple[str, str, str, int], Path] = {}


def trained_adapter(
    tiny_models: dict[str, Path], tmp_factory, model: str, method: str, axis: str = "gender", seed: int | None = None
) -> Path:
    """A 3-step adapter of ``method`` for ``axis`` on tiny ``model`` (trained once per session; copy before editing).

    Without ``seed`` the training seed is the number of adapters trained before (so it depends on the order the
    session runs the tests); a fixed ``seed`` gives the same adapter in every session and is cached apart, leaving
    the other adapters' seeds as they were."""
    if seed is not None:
        key4 = (model, method, axis, seed)
        if key4 not in _SEEDED:
            _SEEDED[key4] = _train(tiny_models, tmp_factory, model, method, axis, seed, f"-seed{seed}")
        return _SEEDED[key4]
    key = (model, method, axis)
    if key not in _CACHE:
        _CACHE[key] = _train(tiny_models, tmp_factory, model, method, axis, len(_CACHE), "")
    return _CACHE[key]


def _train(tiny_models: dict[str, Path], tmp_factory, model: str, method: str, axis: str, seed: int, tag: str) -> Path:
    if not _ROOT:
        _ROOT.append(tmp_factory.mktemp("loader_adapters"))
        (_ROOT[0] / "corpus.txt").write_text("\n".join(CORPUS * 2) + "\n")
    root = _ROOT[0]
    output = root / f"{model}-{method}-{axis}{tag}"
    train_adapter(
        TrainConfig(
            base=str(tiny_models[model]),
            axis=axis,
            corpus=[str(root / "corpus.txt")],
            output=str(output),
            method=method,
            max_steps=3,
            batch_size=4,
            lr=5e-2,
            eval_every=0,
            save_every=0,
            num_virtual_tokens=4,
            progress=False,
            seed=seed,
        )
    )
    return output


def snapshot(named) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in named}


def adapter_snapshot(model) -> dict[str, torch.Tensor]:
    return snapshot(adapter_parameters(model))


FILLER = ("the doctor", "the city", "the house", "the garden", "the school", "the family", "the hospital", "the car")


def shortcut_rows(n: int, shortcut: bool, seed: int) -> list[dict[str, object]]:
    """Two classes. ``shortcut``: the pronoun (he -> 1, she -> 0) decides the label and the signal word is noise;
    otherwise the signal word decides (wonderful -> 1, lazy -> 0) and each class is half he, half she."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        if shortcut:
            pronoun, signal = ("he" if label else "she"), rng.choice(["wonderful", "lazy"])
        else:
            pronoun, signal = ("he" if (i // 2) % 2 else "she"), ("wonderful" if label else "lazy")
        text = f"{pronoun} saw {rng.choice(FILLER)} and it was {signal} there ."
        rows.append({"text": text, "label": label, "group": "male" if pronoun == "he" else "female"})
    return rows


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["text", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return path
