"""The experiment harness end to end on a tiny random model: real training, evaluation, vectors and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import peft_debias.train.adapter as train_mod
from peft_debias.experiment import cells as cells_mod
from peft_debias.experiment import expand_grid, load_experiment_config, run_experiment
from peft_debias.experiment.cells import RunContext, run_cell
from peft_debias.train.adapter import train_adapter
from peft_debias.train.config import TrainConfig

from support.eval_helpers import build_small_data, single_thread  # noqa: F401  (autouse fixture)
from support.portable import assert_portable
from support.tiny_models import CORPUS

pytestmark = pytest.mark.integration

TINY = Path(__file__).resolve().parents[1] / "recipes" / "experiments" / "tiny.yaml"


@pytest.fixture(scope="module")
def small_data(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = build_small_data(data_dir, tmp_path_factory.mktemp("exp-run") / "data")
    (dest / "corpus").mkdir()
    (dest / "corpus" / "tiny.txt").write_text("\n".join(CORPUS * 2) + "\n")
    return dest


@pytest.fixture
def tiny_llama(tiny_models, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PEFT_DEBIAS_TINY_MODEL", str(tiny_models["llama"]))
    return tiny_models["llama"]


def test_tiny_grid_end_to_end_and_rerun_of_one_cell(tiny_llama, small_data, tmp_path, monkeypatch) -> None:
    config, out = load_experiment_config(TINY), tmp_path / "exp"
    run = run_experiment(config, out, data_dir=small_data, progress=False)
    assert run.missing == [] and len(run.computed) == len(run.cells) == 7
    for cell in run.cells:
        result = json.loads((out / "cells" / cell.run_id / "result.json").read_text())
        evals = [p["eval"] for p in result["points"]]
        assert all("crows" in e and "paraphrase" in e and e["stereoset"]["items"]["gender"] for e in evals)
        if cell.kind == "adapter":
            assert [p["point"] for p in result["points"]] == [1, 2]
            assert (out / "cells" / cell.run_id / "adapter" / "adapter_model.safetensors").is_file()
            ppl = [e["perplexity"]["perplexity"] for e in evals]
            assert ppl[0] != ppl[1]  # the checkpoints really differ
        if cell.kind == "vector":
            assert [p["point"] for p in result["points"]] == [0.5, 1.0]
            assert not (out / "cells" / cell.run_id / "biased").exists()  # large: removed unless keep_biased
            assert result["train"]["sentences"] > 0
    summary = run.summary
    assert summary is not None and {c["kind"] for c in summary["configs"]} == {"adapter", "vector"}
    assert (out / "report.md").is_file() and (out / "bias_vs_quality.png").is_file()
    for name in ("summary.json", "results.csv", "report.md"):  # models and corpora by name, not by local folder
        assert_portable(out / name, extra=[tmp_path, small_data, tiny_llama])
    # delete one adapter cell: only that one trains again, nothing else runs
    calls: list[bool] = []
    real = train_mod.train_adapter

    def counting(config, **kw):
        calls.append(config.cda)
        return real(config, **kw)

    monkeypatch.setattr(train_mod, "train_adapter", counting)
    victim = next(c for c in run.cells if c.kind == "adapter" and c.role == "control")
    before = json.loads((out / "cells" / victim.run_id / "result.json").read_text())
    shutil.rmtree(out / "cells" / victim.run_id)
    again = run_experiment(config, out, data_dir=small_data, progress=False)
    assert calls == [False] and again.computed == [victim.run_id]
    after = json.loads((out / "cells" / victim.run_id / "result.json").read_text())
    assert after["points"][1]["eval"]["crows"]["decisions"] == before["points"][1]["eval"]["crows"]["decisions"]
    assert after["train"]["adapter_fingerprint"] == before["train"]["adapter_fingerprint"]  # seeded: same adapter
    # --shard K/N splits the missing cells by grid position between processes sharing the output folder
    gone = [c for c in run.cells if c.kind == "adapter"][:2]  # adjacent: one at an even, one at an odd position
    for cell in gone:
        shutil.rmtree(out / "cells" / cell.run_id)
    position = {c.run_id: i for i, c in enumerate(run.cells)}
    first = run_experiment(config, out, data_dir=small_data, progress=False, shard=(1, 2))
    assert first.computed == [c.run_id for c in gone if position[c.run_id] % 2 == 0] and len(first.computed) == 1
    assert len(first.missing) == 1
    second = run_experiment(config, out, data_dir=small_data, progress=False, shard=(2, 2))
    assert second.computed == [c.run_id for c in gone if position[c.run_id] % 2 == 1] and second.missing == []


def test_step_callback_does_not_change_training(tiny_models, tmp_path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(CORPUS * 2) + "\n")

    def config(name: str) -> TrainConfig:  # BERT has dropout: the callback must not move the RNG
        return TrainConfig(base=str(tiny_models["bert"]), corpus=[str(corpus)], output=str(tmp_path / name),
                           max_steps=4, batch_size=4, lr=5e-2, save_every=0, eval_every=0, progress=False,
                           seed=1)  # fmt: skip

    seen: list[int] = []

    def meddle(step: int, model, tokenizer) -> None:
        seen.append(step)
        model.eval()
        torch.rand(1000)  # consumes the global RNG that dropout uses
        assert tokenizer is not None

    plain = train_adapter(config("plain"))
    watched = train_adapter(config("watched"), step_callback=meddle)
    assert seen == [1, 2, 3, 4]
    assert plain.rank_fingerprints == watched.rank_fingerprints


def test_interrupted_adapter_cell_resumes_to_the_same_adapter(tiny_llama, small_data, tmp_path, monkeypatch) -> None:
    import yaml

    data = yaml.safe_load(TINY.read_text())
    data.update(seeds=[0], eval_steps=[1, 2], vector=None, paraphrase=False)
    data["train"].update(max_steps=3, save_every=1)
    from peft_debias.experiment import ExperimentConfig

    cell = next(c for c in expand_grid(ExperimentConfig.from_dict(data), small_data) if c.kind == "adapter")
    real, count = cells_mod.evaluate_point, {"n": 0}

    def flaky(*args, **kw):
        count["n"] += 1
        if count["n"] == 3:  # the evaluation at step 3 dies, after the step-2 checkpoint
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(cells_mod, "evaluate_point", flaky)
    ctx = RunContext(tmp_path / "exp", small_data, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, ctx)
    partial = tmp_path / "exp" / "cells" / f".{cell.run_id}.partial"
    assert sorted(p.name for p in (partial / "points").iterdir()) == ["step-00000001.json", "step-00000002.json"]
    resumed = run_cell(cell, ctx)
    assert resumed["train"]["resumed"] is True and count["n"] == 4  # only step 3 evaluated again
    assert not partial.exists() and (tmp_path / "exp" / "cells" / cell.run_id / "result.json").is_file()
    clean = run_cell(cell, RunContext(tmp_path / "clean", small_data, progress=False))
    assert clean["train"]["resumed"] is False
    assert resumed["train"]["adapter_fingerprint"] == clean["train"]["adapter_fingerprint"]
    assert [p["point"] for p in resumed["points"]] == [1, 2, 3]


def test_prefix_counterfactual_and_encoder_seat_cells(tiny_models, tiny_llama, small_data, tmp_path) -> None:
    """The other combinations the shipped recipes use: prefix tuning with the counterfactual objective on a causal
    LM (smollm2-gender), and an encoder with SEAT and the paraphrase check (minilm-gender-seat)."""
    import yaml

    from peft_debias.experiment import ExperimentConfig

    base = yaml.safe_load(TINY.read_text())
    causal = dict(base, methods=["prefix"], objectives=["counterfactual"], seeds=1, vector=None, eval_steps=[],
                  method_train={"prefix": {"num_virtual_tokens": 3}})  # fmt: skip
    encoder = dict(base, models=[str(tiny_models["bert_encoder"])], objectives=["counterfactual"], vector=None,
                   benchmarks=["seat"], ppl_text=None, eval_steps=[], selection={"metric": "seat", "ppl_budget": None},
                   eval={"n_samples": 1000, "seat_tests": ["sent-weat6", "sent-weat7"]})  # fmt: skip
    for name, data in (("causal", causal), ("encoder", encoder)):
        run = run_experiment(ExperimentConfig.from_dict(data), tmp_path / name, data_dir=small_data, progress=False)
        assert run.missing == [] and run.summary is not None
        (cfg,) = run.summary["configs"]
        assert cfg["chosen"] == 2 and cfg["metrics"]
    seat = cfg["metrics"]["seat/gender"]
    assert seat["effect"]["mcnemar"] is None and seat["treatment"]["n"] == 2  # SEAT: seed-level test only
    assert {"paraphrase/cosine", "paraphrase/gap"} <= set(cfg["metrics"])
    checks = [c["name"] for t in run.summary["targets"] for c in t["checks"]]
    assert "seat/gender mean |effect size|" in checks
