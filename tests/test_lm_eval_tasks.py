"""The lm-eval task files shipped in peft_debias/evaluate_modules/lm_eval_tasks/, without running lm-eval: every
task has a YAML file naming hooks that exist, the datasets come from the local data folder (one axis or all), and
the scoring hooks count like lm-eval's crows_pairs and like ``peft-debias eval``'s StereoSet metrics.
The run through lm-eval itself is tests/test_clients.py::test_lm_eval_runs_our_tasks_on_the_adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from peft_debias.core.errors import DebiasError
from peft_debias.eval.crows import load_crows_pairs
from peft_debias.eval.stereoset import load_stereoset, stereoset_metrics
from peft_debias.evaluate_modules.lm_eval_tasks import TASKS, tasks, tasks_dir

REPO = Path(__file__).resolve().parent.parent


class _Loader(yaml.SafeLoader):
    """Reads lm-eval's ``!function module.name`` tags as plain strings."""


_Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def _configs() -> dict[str, dict]:
    out = {}
    for path in sorted(tasks_dir().glob("*.yaml")):
        config = yaml.load(path.read_text(), Loader=_Loader)  # a SafeLoader subclass
        if "include" in config:
            config = {**yaml.load((tasks_dir() / config["include"]).read_text(), Loader=_Loader), **config}
        out[config["task"]] = config
    return out


def test_every_task_has_a_yaml_whose_hooks_exist_and_ships_as_package_data() -> None:
    configs = _configs()
    assert set(configs) == set(TASKS)
    for name, config in configs.items():
        for value in config.values():
            if isinstance(value, str) and value.startswith("!function tasks."):
                assert callable(getattr(tasks, value.removeprefix("!function tasks."))), (name, value)
        for metric in config["metric_list"]:
            agg = metric["aggregation"]
            assert agg == "mean" or callable(getattr(tasks, agg.removeprefix("!function tasks."))), (name, agg)
    package_data = (REPO / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    assert '"evaluate_modules/lm_eval_tasks/*.yaml"' in package_data


def test_crows_dataset_from_the_data_folder(data_dir) -> None:
    everything = tasks.crows_pairs_dataset(data_dir=str(data_dir))["test"]
    gender = tasks.crows_pairs_dataset(data_dir=str(data_dir), axis="gender", version=1.0, pretrained="x")["test"]
    pairs = load_crows_pairs(data_dir / "crows_pairs" / "crows_pairs_anonymized.csv")
    assert len(everything) == len(pairs) and len(gender) == 262
    assert set(gender["bias_type"]) == {"gender"}
    first = next(p for p in pairs if p.bias_type == "gender")
    assert gender[0] == {
        "id": first.id,
        "sent_more": first.sent_more,
        "sent_less": first.sent_less,
        "direction": first.direction,
        "bias_type": "gender",
    }
    assert tasks.crows_pairs_choices(gender[0]) == [first.sent_more, first.sent_less]


def test_the_data_folder_comes_from_the_environment_or_an_error(data_dir, monkeypatch) -> None:
    monkeypatch.setenv("PEFT_DEBIAS_DATA", str(data_dir))
    assert len(tasks.crows_pairs_dataset(axis="religion")["test"]) == 105
    monkeypatch.delenv("PEFT_DEBIAS_DATA")
    with pytest.raises(DebiasError, match="PEFT_DEBIAS_DATA=DIR or pass --metadata"):
        tasks.crows_pairs_dataset()


def test_crows_scoring_counts_like_lm_eval() -> None:
    assert tasks.crows_pairs_results({}, [(-10.0, False), (-12.5, False)]) == {
        "pct_stereotype": 1.0,
        "likelihood_diff": 2.5,
    }
    assert tasks.crows_pairs_results({}, [(-12.5, False), (-10.0, True)])["pct_stereotype"] == 0.0
    assert tasks.crows_pairs_results({}, [(-3.0, False), (-3.0, False)])["pct_stereotype"] == 0.0  # a tie is not


def test_stereoset_aggregations_are_our_metrics(data_dir) -> None:
    docs = tasks.stereoset_dataset(data_dir=str(data_dir), axis="gender")["test"]
    items = [i for i in load_stereoset(next((data_dir / "stereoset").glob("*.jsonl"))) if i.bias_type == "gender"]
    assert len(docs) == len(items) and docs[0]["sentences"] == list(items[0].sentences)
    assert tasks.stereoset_choices(docs[0]) == list(items[0].sentences)
    scores = np.random.default_rng(0).normal(size=(len(items), 3))
    entries = [
        tasks.stereoset_results(doc, [(s, False) for s in row])["ss"] for doc, row in zip(docs, scores, strict=True)
    ]
    expected = stereoset_metrics(items, scores)
    assert tasks.stereoset_ss(entries) == pytest.approx(expected["ss"])
    assert tasks.stereoset_lms(entries) == pytest.approx(expected["lms"])
    assert tasks.stereoset_icat(entries) == pytest.approx(expected["icat"])
    assert 0 < expected["ss"] < 100 and expected["ss"] != 50
