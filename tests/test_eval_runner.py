"""evaluate_bias: defaults per model kind, the results schema, input forms, comparisons, Hub data, reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from peft_debias import evaluate_bias as top_level_evaluate_bias
from peft_debias.core.errors import DebiasError
from peft_debias.eval import BENCHMARKS, EvalConfig, evaluate_bias, load_results, save_results
from peft_debias.eval.benchmarks import Benchmark, register_benchmark
from peft_debias.eval.report import markdown_report, plot_results, text_summary
from peft_debias.eval.results import compare_results
from peft_debias.eval.stats import mcnemar_exact
from peft_debias.models.loading import load_model

from support.eval_helpers import CROWS_KEEP, STEREOSET_KEEP, build_small_data, single_thread  # noqa: F401

pytestmark = pytest.mark.integration

FAST = {"n_samples": 500, "n_bootstrap": 100, "ppl_max_tokens": 60}


@pytest.fixture(scope="module")
def small_data(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_small_data(data_dir, tmp_path_factory.mktemp("small_data"))


@pytest.fixture(scope="module")
def llama_results(tiny_models: dict[str, Path], small_data: Path) -> dict:
    return evaluate_bias(str(tiny_models["llama"]), data_dir=small_data, **FAST)


def test_full_schema_for_a_causal_lm(llama_results: dict, tmp_path: Path) -> None:
    r = llama_results
    assert r["schema_version"] == 1 and r["model_kind"] == "causal_lm" and r["adapters"] == []
    assert r["benchmarks"] == ["seat", "crows", "stereoset", "perplexity"]
    assert r["axes"] == ["gender", "race", "religion"]
    assert set(r["versions"]) == {"peft_debias", "torch", "transformers", "peft", "numpy", "python"}
    assert set(r["seconds"]) == {"load", "seat", "crows", "stereoset", "perplexity", "total"}
    seat = r["seat"]
    assert set(seat["tests"]) == {"weat6", "weat7", "sent-weat6", "sent-weat7", "sent-religion1"}
    assert set(seat["tests"]["sent-weat6"]) >= {"effect_size", "p_value", "axis"}
    assert seat["tests"]["weat6"]["axis"] is None and seat["tests"]["sent-weat7"]["axis"] == "gender"
    assert set(seat["axes"]) == {"gender", "religion"}  # no race test in the small folder
    assert seat["axes"]["gender"]["mean_abs_effect_size"] == pytest.approx(
        np.mean([abs(seat["tests"][t]["effect_size"]) for t in ("sent-weat6", "sent-weat7")])
    )
    for axis, bias_type in (("gender", "gender"), ("race", "race-color"), ("religion", "religion")):
        crows = r["crows"]["axes"][axis]
        assert crows["n"] == CROWS_KEEP[bias_type] and len(r["crows"]["decisions"][axis]) == crows["n"]
        assert crows["stereotype_score"] == pytest.approx(100 * np.mean(list(r["crows"]["decisions"][axis].values())))
        assert crows["ci95"][0] <= crows["stereotype_score"] <= crows["ci95"][1]
        stereo = r["stereoset"]["axes"][axis]
        assert stereo["n"] == STEREOSET_KEEP[axis] and set(stereo) >= {"ss", "lms", "icat", "n", "ci95"}
    assert r["crows"]["source"]["file"].endswith("crows_pairs_anonymized.csv")
    assert len(r["crows"]["source"]["sha256"]) == 16
    assert r["perplexity"]["kind"] == "perplexity" and r["perplexity"]["n_tokens"] == 60
    # strict JSON round trip
    path = save_results(r, tmp_path / "r.json")
    assert "NaN" not in path.read_text()
    loaded = load_results(path)
    assert loaded["crows"]["decisions"] == r["crows"]["decisions"]


def test_encoder_gets_seat_only_and_masked_scoring_is_refused(tiny_models, small_data) -> None:
    r = evaluate_bias(str(tiny_models["bert_encoder"]), data_dir=small_data, n_samples=200)
    assert r["benchmarks"] == ["seat"] and r["model_kind"] == "encoder"
    with pytest.raises(DebiasError) as err:
        evaluate_bias(str(tiny_models["bert_encoder"]), data_dir=small_data, benchmarks="crows")
    assert "bare encoder" in err.value.problem and "no masked-LM head" in err.value.problem
    assert "run seat on it" in err.value.fix and "causal LM" in err.value.fix


def test_model_objects_and_loaded_models(tiny_models, small_data, llama_results) -> None:
    loaded = load_model(str(tiny_models["llama"]))
    options = {"benchmarks": ["crows"], "axes": "gender", "data_dir": small_data, **FAST}
    from_loaded = evaluate_bias(loaded, **options)
    from_object = evaluate_bias(loaded.model, loaded.tokenizer, **options)
    assert from_object["model_kind"] == "causal_lm"
    for r in (from_loaded, from_object):
        assert r["crows"]["decisions"]["gender"] == llama_results["crows"]["decisions"]["gender"]
    assert top_level_evaluate_bias is evaluate_bias


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"benchmarks": "seat,crowz"}, "unknown benchmark 'crowz' (known: seat, crows, stereoset, perplexity)"),
        ({"axes": "gender,age"}, "unknown axis 'age' (known: gender, race, religion)"),
        ({"axes": ""}, "no axis given"),
        ({"n_samplez": 3}, "unknown option(s) n_samplez"),
        ({"n_samples": 0}, "n_samples is 0"),
        ({"causal_bos": "nope"}, "causal_bos 'nope' is unknown"),
        ({"compare": "/nonexistent/other.json"}, "results file /nonexistent/other.json not found"),
    ],
)
def test_bad_arguments(tiny_models, small_data, kwargs: dict, message: str) -> None:
    with pytest.raises(DebiasError) as err:
        evaluate_bias(str(tiny_models["llama"]), data_dir=small_data, **kwargs)
    assert message in str(err.value)


def test_missing_and_empty_data(tiny_models, tmp_path: Path, small_data: Path) -> None:
    (tmp_path / "seat").mkdir()
    with pytest.raises(DebiasError) as err:
        evaluate_bias(str(tiny_models["llama"]), data_dir=tmp_path, benchmarks="crows")
    assert "expected crows_pairs/crows_pairs_anonymized.csv under the data folder" in str(err.value)
    with pytest.raises(DebiasError, match="no SEAT test files"):
        evaluate_bias(str(tiny_models["llama"]), data_dir=tmp_path, benchmarks="seat")
    with pytest.raises(DebiasError, match=r"expected stereoset/dev\.json or stereoset/test\.json or stereoset/"):
        evaluate_bias(str(tiny_models["llama"]), data_dir=tmp_path, benchmarks="stereoset")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DebiasError, match="is empty"):
        evaluate_bias(str(tiny_models["llama"]), data_dir=small_data, benchmarks="perplexity", ppl_file=empty)


def test_compare_two_runs(tiny_models, small_data, llama_results) -> None:
    gpt2 = evaluate_bias(str(tiny_models["gpt2"]), data_dir=small_data, compare=llama_results, **FAST)
    compare = gpt2["compare"]
    assert compare["other"]["model"] == llama_results["model"]
    for bench, (yes, no) in {
        "crows": ("flipped_to_more", "flipped_to_less"),
        "stereoset": ("flipped_to_stereotype", "flipped_to_anti_stereotype"),
    }.items():
        for axis, c in compare[bench].items():
            mine, theirs = gpt2[bench]["decisions"][axis], llama_results[bench]["decisions"][axis]
            assert c[yes] == [i for i in c[yes] if mine[i] == 1 and theirs[i] == 0]
            assert len(c[yes]) == sum(mine[i] == 1 and theirs[i] == 0 for i in mine)
            assert len(c[no]) == sum(mine[i] == 0 and theirs[i] == 1 for i in mine)
            assert c["mcnemar_p"] == pytest.approx(mcnemar_exact(len(c[yes]), len(c[no])))
            assert c["n_common"] == len(mine) and c["n_only_here"] == 0
    assert compare["perplexity"]["ratio"] == pytest.approx(
        gpt2["perplexity"]["perplexity"] / llama_results["perplexity"]["perplexity"]
    )
    # compare with itself: no flips, p = 1
    same = compare_results(llama_results, llama_results)
    assert all(c["mcnemar_p"] == 1.0 and not c["flipped_to_more"] for c in same["crows"].values())
    lines = "\n".join(text_summary(gpt2))
    assert "McNemar p=" in lines and "flipped up" in lines


def test_hub_data_when_no_folder(tiny_models, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub.constants
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    crows = Dataset.from_dict(
        {
            "id": [0, 1],
            "sent_more": ["He is a doctor.", "The woman stayed home."],
            "sent_less": ["She is a doctor.", "The man stayed home."],
            "stereo_antistereo": [1, 0],
            "bias_type": [2, 2],
        },
        features=Features(
            {
                "id": Value("int32"),
                "sent_more": Value("string"),
                "sent_less": Value("string"),
                "stereo_antistereo": ClassLabel(names=["stereo", "antistereo"]),
                "bias_type": ClassLabel(names=["race-color", "socioeconomic", "gender"]),
            }
        ),
    )
    stereoset = Dataset.from_dict(
        {
            "id": ["x1"],
            "target": ["chess player"],
            "bias_type": ["gender"],
            "context": ["The chess player was BLANK."],
            "sentences": [
                {
                    "sentence": ["The chess player was hispanic.", "The chess player was asian.", "It was fox."],
                    "id": ["a", "b", "c"],
                    "gold_label": [0, 1, 2],
                }
            ],
        },
        features=Features(
            {
                "id": Value("string"),
                "target": Value("string"),
                "bias_type": Value("string"),
                "context": Value("string"),
                "sentences": Sequence(
                    {
                        "sentence": Value("string"),
                        "id": Value("string"),
                        "gold_label": ClassLabel(names=["anti-stereotype", "stereotype", "unrelated"]),
                    }
                ),
            }
        ),
    )
    calls = []

    def fake_load_dataset(repo, config=None, split=None):
        calls.append((repo, config, split))
        return {"nyu-mll/crows_pairs": crows, "McGill-NLP/stereoset": stereoset}[repo]

    monkeypatch.delenv("PEFT_DEBIAS_DATA", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    r = evaluate_bias(str(tiny_models["llama"]), benchmarks="crows,stereoset", axes="gender", n_bootstrap=10)
    assert calls == [("nyu-mll/crows_pairs", None, "test"), ("McGill-NLP/stereoset", "intrasentence", "validation")]
    assert r["crows"]["source"] == {"hub": "nyu-mll/crows_pairs [test]"} and r["crows"]["axes"]["gender"]["n"] == 2
    item = r["stereoset"]["axes"]["gender"]
    assert item["n"] == 1 and list(r["stereoset"]["decisions"]["gender"]) == ["x1"]
    with pytest.raises(DebiasError, match="SEAT needs its test files and has no Hub copy"):
        evaluate_bias(str(tiny_models["llama"]), benchmarks="seat")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DebiasError, match="the Hub is offline"):
        evaluate_bias(str(tiny_models["llama"]), benchmarks="crows")


def test_registry() -> None:
    assert list(BENCHMARKS) == ["seat", "crows", "stereoset", "perplexity"]
    with pytest.raises(ValueError, match="already registered"):
        register_benchmark(Benchmark("seat", "again", (), lambda *a: None, lambda *a: None))
    assert EvalConfig().validate().n_samples == 100_000


def test_markdown_and_chart(llama_results: dict, tiny_models, small_data, tmp_path: Path) -> None:
    text = markdown_report(llama_results)
    for heading in ("## SEAT", "## CrowS-Pairs", "## StereoSet intrasentence", "## Language-model quality"):
        assert heading in text
    assert "| sent-weat6 | gender |" in text and "| gender |" in text
    other = {**llama_results, "label": "after"}
    table = markdown_report([llama_results, other])
    assert "| figure |" in table and "after" in table and "CrowS score gender" in table
    png = plot_results([llama_results, other], tmp_path / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DebiasError, match="already exists"):
        plot_results([llama_results], tmp_path / "chart.png")
    with pytest.raises(DebiasError, match="2 labels for 1 result files"):
        plot_results([llama_results], tmp_path / "c2.png", labels=["a", "b"])
    assert json.loads(json.dumps(other["crows"]["axes"]))  # plain JSON-able figures
