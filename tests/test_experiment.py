"""The experiment harness with stand-in cells: configs, grid and run ids, caching and resume, analysis, report."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from peft_debias.cli.main import main
from peft_debias.core.errors import DebiasError
from peft_debias.experiment import ExperimentConfig, expand_grid, load_experiment_config, run_experiment
from peft_debias.experiment import cells as cells_mod

from support.eval_helpers import build_small_data
from support.experiment import results_from_items

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "experiments" / "tiny.yaml"


@pytest.fixture(scope="module")
def small_data(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = build_small_data(data_dir, tmp_path_factory.mktemp("exp") / "data")
    (dest / "corpus").mkdir()
    (dest / "corpus" / "text.txt").write_text("He is a doctor and she is a nurse.\n")
    return dest


@pytest.fixture(autouse=True)
def tiny_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFT_DEBIAS_TINY_MODEL", "org/tiny-model")


def tiny_config(**changes) -> ExperimentConfig:
    import yaml

    data = yaml.safe_load(TINY.read_text())
    for key, value in changes.items():
        data[key] = value
    return ExperimentConfig.from_dict(data)


# ---------------------------------------------------------------------------------------------- config


GRIDS = [p for p in sorted((REPO / "recipes" / "experiments").glob("*.yaml")) if "\ndownstream:" not in p.read_text()]


def test_a_downstream_config_is_named_as_such() -> None:
    """The downstream experiments (tests/test_downstream_experiment.py) are not grids of adapter cells."""
    with pytest.raises(DebiasError, match="is a downstream experiment"):
        load_experiment_config(REPO / "recipes" / "experiments" / "minilm-winobias-downstream.yaml")
    assert len(GRIDS) >= 10


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.stem)
def test_shipped_experiment_configs_parse_and_expand(path: Path, data_dir: Path) -> None:
    config = load_experiment_config(path)
    assert isinstance(config, ExperimentConfig) and config.name == path.stem
    cells = expand_grid(config, data_dir)
    assert len({c.run_id for c in cells}) == len(cells)
    treatments = [c for c in cells if c.role == "treatment"]
    controls = {(c.group, c.seed) for c in cells if c.role == "control"}
    assert treatments and all((c.group, c.seed) in controls for c in treatments)  # a control for every treatment
    assert len([c for c in cells if c.kind == "baseline"]) == len(config.models)
    if path.stem == "smollm2-gender":  # 2 methods x 2 objectives x 3 seeds x 2 roles, 3 seeds x 2 vector roles
        assert len(config.seeds) >= 3 and len(cells) == 1 + 24 + 6
        corpora = {c.spec["train"]["corpus"][0] for c in treatments if c.kind == "adapter"}
        assert corpora == {str((data_dir / "gutenberg").resolve())}


def test_grid_ids_are_deterministic_and_follow_the_config(small_data: Path) -> None:
    cells = expand_grid(tiny_config(), small_data)
    assert [c.run_id for c in cells] == [c.run_id for c in expand_grid(tiny_config(), small_data)]
    kinds = [c.kind for c in cells]
    assert kinds == ["baseline"] + ["adapter"] * 4 + ["vector"] * 2
    for treated in (c for c in cells if c.kind == "adapter" and c.role == "treatment"):
        control = next(c for c in cells if c.group == treated.group and c.role == "control" and c.seed == treated.seed)
        assert treated.spec["train"]["cda"] is True and control.spec["train"]["cda"] is False
        same = {k: v for k, v in treated.spec["train"].items() if k != "cda"}
        assert same == {k: v for k, v in control.spec["train"].items() if k != "cda"}  # identical but the swaps
        assert treated.spec["steps"] == [1, 2] and treated.spec["train"]["seed"] == treated.seed
    ids = {c.run_id for c in cells}
    # analysis-only keys and logging intervals do not change any id
    same = tiny_config(targets={"crows_effect": 1.0}, selection={"criterion": "bias"},
                       train={**tiny_config().train, "log_every": 7})  # fmt: skip
    assert {c.run_id for c in expand_grid(same, small_data)} == ids
    # the split seed only matters to vector cells (their biased model trains on the select half)
    resplit = {c.run_id: c.kind for c in expand_grid(tiny_config(split_seed=5), small_data)}
    assert {k for k, kind in resplit.items() if kind != "vector"} <= ids
    assert not {k for k, kind in resplit.items() if kind == "vector"} & ids
    # a training value changes the adapter cells only
    other = {c.kind: c.run_id for c in expand_grid(tiny_config(train={**tiny_config().train, "lr": 0.01}), small_data)}
    assert other["baseline"] in ids and other["adapter"] not in ids and other["vector"] in ids


def test_vector_cells_train_on_the_select_half_the_evaluation_uses(data_dir: Path, small_data: Path) -> None:
    """The biased copy of a vector cell never sees a report-half StereoSet stereotype (halves keyed by template)."""
    from peft_debias.train.biased import stereotype_sentences

    cell = next(c for c in expand_grid(tiny_config(), small_data) if c.kind == "vector" and c.role == "treatment")
    path = data_dir / "stereoset" / "stereoset_dev_flat.jsonl"
    spec = {**cell.spec, "stereoset_file": str(path), "axis": "gender"}
    trained = cells_mod.vector_sentences(spec)
    report = set(stereotype_sentences(path, "gender", split="report"))
    assert trained == stereotype_sentences(path, "gender", split="select") and not report & set(trained)
    assert cell.spec["split_key"] == "template"
    everything = cells_mod.vector_sentences({**spec, "train_items": "all"})
    assert sorted(everything) == sorted(trained + stereotype_sentences(path, "gender", split="report"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bogus": 1}, "unknown key(s) bogus; known keys: axes, benchmarks"),
        ({"methods": ["lora", "adapterx"]}, "unknown method 'adapterx' (known: lora, prefix, prompt, ia3)"),
        ({"axes": ["age"]}, "unknown axis 'age' (known: gender, race, religion)"),
        ({"objectives": ["mse"]}, "unknown objective 'mse'"),
        ({"seeds": 0}, "seeds is 0 (< 1)"),
        ({"seeds": []}, "seeds is []"),
        ({"seeds": [-1]}, "seeds has negative seeds [-1]"),
        ({"vector": {"seeds": [0, -2]}}, "vector.seeds has negative seeds [-2]"),
        ({"eval_steps": [5]}, "eval step 5 is beyond max_steps"),
        ({"train": {"max_steps": 2, "seed": 3}}, "train sets seed; these are set by the grid"),
        ({"train": {"learning_rate": 1}}, "train has unknown key(s) learning_rate; known keys: allow_pickle, alpha"),
        ({"vector": {"control": "shuffled"}}, "vector.control 'shuffled'"),
        ({"selection": {"metric": "seat"}}, "selection.metric 'seat' is not evaluated"),
        ({"benchmarks": ["perplexity"]}, "no bias benchmark"),
    ],
)
def test_bad_configs_are_one_line_errors(change: dict, message: str) -> None:
    with pytest.raises(DebiasError) as info:
        tiny_config(**change)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_perplexity_text_must_come_from_another_source(small_data: Path) -> None:
    config = tiny_config(corpus=["${PEFT_DEBIAS_DATA}/wikitext2"])
    with pytest.raises(DebiasError, match="is part of the training corpus"):
        expand_grid(config, small_data)


def test_cli_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [m]\ncorpus: [c]\nmethods: [lorax]\n")
    assert main(["experiment", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("peft-debias: error: experiment config") and err.count("\n") == 1 and "lorax" in err
    for shard in ("3/2", "0/2", "1", "a/b"):
        assert main(["experiment", "--config", str(TINY), "--shard", shard, "--output", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert f"--shard {shard!r} is not K/N with 1 <= K <= N" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ stand-in cells


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16))


def fake_eval(p_stereo: float, ppl: float, rng: np.random.Generator, n: int = 400) -> dict:
    """Results shaped like evaluate_bias's, with a chosen probability of preferring the stereotype."""
    decisions = {str(i): int(rng.random() < p_stereo) for i in range(n)}
    items = {f"s{i}": {"target": f"t{i % 6}", "pro": int(rng.random() < p_stereo), "related": 2} for i in range(n)}
    return results_from_items(
        decisions,
        items,
        perplexity={"perplexity": ppl},
        paraphrase={"cosine": 0.8, "unrelated": 0.3, "gap": 0.5, "accuracy": 0.9},
    )


class FakeCells:
    """Stand-ins for the three cell runners: treatment prefers stereotypes 50% of the time, control 75%."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail_on = fail_on

    def __call__(self, cell, ctx, partial) -> dict:
        self.calls.append(cell.run_id)
        if cell.run_id == self.fail_on:
            partial.mkdir(parents=True, exist_ok=True)
            raise RuntimeError("simulated crash")
        if cell.kind == "baseline":
            return {"points": [{"point": "base", "eval": fake_eval(0.78, 20.0, _rng(cell.model))}]}
        p = 0.5 if cell.role == "treatment" else 0.75
        points = cell.spec.get("steps") or cell.spec["lambdas"]
        rng = [_rng(cell.kind, cell.role, cell.seed, pt) for pt in points]  # the same data in every session
        return {"points": [{"point": pt, "eval": fake_eval(p, 20.2, r)} for pt, r in zip(points, rng, strict=True)]}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeCells:
    runner = FakeCells()
    for kind in cells_mod.RUNNERS:
        monkeypatch.setitem(cells_mod.RUNNERS, kind, runner)
    return runner


def test_caching_resume_and_report(fake: FakeCells, small_data: Path, tmp_path: Path) -> None:
    config, out = tiny_config(seeds=3), tmp_path / "exp"
    run = run_experiment(config, out, data_dir=small_data, progress=False)
    all_ids = [c.run_id for c in run.cells]
    assert sorted(fake.calls) == sorted(all_ids) and run.missing == []
    for rid in all_ids:
        result = json.loads((out / "cells" / rid / "result.json").read_text())
        assert result["run_id"] == rid and result["points"]
    assert not list((out / "cells").glob(".*"))  # no partial folders left
    # rerun: nothing is recomputed
    fake.calls.clear()
    again = run_experiment(config, out, data_dir=small_data, progress=False)
    assert fake.calls == [] and sorted(again.cached) == sorted(all_ids)
    # delete one finished cell: only that one is computed again
    victim = next(c.run_id for c in run.cells if c.kind == "adapter" and c.role == "control")
    shutil.rmtree(out / "cells" / victim)
    run_experiment(config, out, data_dir=small_data, progress=False)
    assert fake.calls == [victim]
    # outputs
    for name in ("report.md", "summary.json", "results.csv", "experiment.json"):
        assert (out / name).is_file()
    for name in ("bias_vs_quality.png", "lambda_curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "report half" in report and "select half" in report and "## Targets" in report
    assert "Effect beyond the no-swap control" in report and "lambda chosen on the select half" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells"] == {"total": len(all_ids), "done": len(all_ids), "missing": []}


def test_interrupted_grid_keeps_finished_cells(monkeypatch, small_data: Path, tmp_path: Path) -> None:
    config, out = tiny_config(), tmp_path / "exp"
    cells = expand_grid(config, small_data)
    crash = FakeCells(fail_on=cells[3].run_id)
    for kind in cells_mod.RUNNERS:
        monkeypatch.setitem(cells_mod.RUNNERS, kind, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(config, out, data_dir=small_data, progress=False)
    assert [p.name for p in sorted((out / "cells").iterdir()) if (p / "result.json").exists()] == sorted(
        c.run_id for c in cells[:3]
    )
    assert not (out / "cells" / cells[3].run_id).exists()  # only a hidden partial folder
    healthy = FakeCells()
    for kind in cells_mod.RUNNERS:
        monkeypatch.setitem(cells_mod.RUNNERS, kind, healthy)
    run = run_experiment(config, out, data_dir=small_data, progress=False)
    assert healthy.calls == [c.run_id for c in cells[3:]] and run.missing == []


def test_report_only_reports_what_is_finished(fake: FakeCells, small_data: Path, tmp_path: Path) -> None:
    run = run_experiment(tiny_config(), tmp_path / "exp", data_dir=small_data, report_only=True)
    assert fake.calls == [] and len(run.missing) == len(run.cells)
    assert "missing: run the experiment again" in (tmp_path / "exp" / "report.md").read_text()
    dry = run_experiment(tiny_config(), tmp_path / "dry", data_dir=small_data, dry_run=True)
    assert fake.calls == [] and not (tmp_path / "dry").exists()
    assert len(dry.missing) == len(dry.cells)


def test_synthetic_effect_is_detected_and_checked(fake: FakeCells, small_data: Path, tmp_path: Path) -> None:
    config = tiny_config(seeds=4, selection={"metric": "crows", "ppl_budget": 0.03})
    summary = run_experiment(config, tmp_path / "exp", data_dir=small_data, progress=False).summary
    assert summary is not None
    lora = next(c for c in summary["configs"] if c["kind"] == "adapter")
    assert lora["chosen"] in (1, 2) and lora["seeds"]["paired"] == [0, 1, 2, 3]
    eff = lora["metrics"]["crows/gender"]["effect"]
    # control ~75 (25 from 50), treatment ~50 (a few points from 50 by chance): ~22 points beyond the control
    assert 15 < eff["mean"] < 27 and eff["p"] < 0.05 and eff["mcnemar"]["to_no"] > eff["mcnemar"]["to_yes"]
    assert eff["p"] == max(eff["p_t"], eff["mcnemar"]["p"])
    assert eff["p_sign_flip"] == pytest.approx(2 / 16)  # 4 seeds, all positive: the floor 2 / 2^4
    ppl = lora["metrics"]["perplexity"]["treatment"]["change_vs_base"]["mean"]
    assert ppl == pytest.approx(0.01)
    checks = {c["name"]: c for t in summary["targets"] if t["kind"] == "adapter" for c in t["checks"]}
    assert checks["crows/gender toward 50 beyond the control (points)"]["pass"] is True
    assert checks["perplexity change vs base (out of domain)"]["pass"] is True


def test_cli_dry_run_lists_cells(small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "exp"
    code = main(["experiment", "--config", str(TINY), "--data-dir", str(small_data), "--output", str(out), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and not out.exists()
    assert sum(line.startswith("to run") for line in lines) == 7 and lines[-1].startswith("7 cells, 0 cached")
