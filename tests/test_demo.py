"""``peft-debias demo --quick`` end to end on tiny models: every artifact exists and loads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.portable import assert_portable


@pytest.fixture(scope="module")
def demo_run(tiny_models: dict[str, Path], data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    argv = [
        sys.executable, "-m", "peft_debias", "demo", "--quick", "--data-dir", str(data_dir), "--output", str(out),
        "--causal-model", str(tiny_models["llama"]), "--encoder-model", str(tiny_models["bert_encoder"]),
        "--lora-steps", "4", "--prefix-steps", "3", "--encoder-steps", "3", "--biased-steps", "3",
        "--lambdas", "0.5,1", "--ppl-tokens", "300", "--n-bootstrap", "200", "--no-progress",
        "--benchmarks", "crows,stereoset,perplexity",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.e2e
def test_demo_prints_a_line_per_stage_and_the_total(demo_run) -> None:
    out, result = demo_run
    for stage in (
        "baseline:",
        "lora adapter:",
        "prefix adapter:",
        "merge:",
        "biased model:",
        "bias vector:",
        "encoder:",
        "report:",
    ):
        assert stage in result.stdout
    assert "demo finished in" in result.stdout
    assert not (out / ".work").exists() and not list(out.parent.glob(".demo*"))


@pytest.mark.e2e
def test_demo_output_carries_no_local_path(demo_run, tiny_models: dict[str, Path], data_dir: Path) -> None:
    out, _ = demo_run
    assert_portable(out, extra=[out.parent, data_dir, *tiny_models.values()])


@pytest.mark.e2e
def test_demo_report_and_results(demo_run) -> None:
    out, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["base", "lora", "prefix", "vector@0.5", "vector@1"]
    for run in summary["runs"]:
        results = json.loads((out / run["results"]).read_text())
        assert results["crows"]["source"]["split"] == results["stereoset"]["source"]["split"] == "report"
        assert 0 <= results["crows"]["axes"]["gender"]["stereotype_score"] <= 100
        assert results["perplexity"]["perplexity"] > 1
        if run["name"] != "base":
            assert "mcnemar_p" in results["compare"]["crows"]["gender"]
    report = (out / "report.md").read_text()
    for text in (
        "PEFTDebias lora",
        "PEFTDebias prefix",
        "Bias Vector, lambda 0.5",
        "One seed",
        "report** half",
        "SEAT on the sentence encoder",
        "charts/bias.png",
        "peft-debias publish adapters/gender-lora",
    ):
        assert text in report
    for png in ("charts/bias.png", "sweep/sweep.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    encoder = json.loads((out / summary["encoder"]["adapter_results"]).read_text())
    assert set(encoder["seat"]["axes"]) == {"gender"}
    # the report names the objective the encoder adapter really trained, and shows each test's association gap
    assert summary["encoder"]["invariance"] == "tokens" and summary["encoder"]["names"] == 100
    assert "token-level invariance" in report and "100 first-name pairs" in report
    for name, test in encoder["seat"]["tests"].items():
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
        assert row.rstrip(" |").endswith(f"{test['association_gap']:+.4f}")


@pytest.mark.e2e
def test_demo_report_links_resolve(demo_run) -> None:
    """Every relative link and image in report.md names a file the quick run wrote (the sweep's table and chart too)."""
    out, _ = demo_run
    targets = re.findall(r"\]\(([^)\s]+)\)", (out / "report.md").read_text())
    relative = [t for t in targets if "://" not in t and not t.startswith("#")]
    assert {"charts/bias.png", "sweep/sweep.md", "sweep/sweep.png"} <= set(relative)
    assert [t for t in relative if not (out / t).is_file()] == []


@pytest.mark.e2e
def test_demo_adapters_and_merged_model_load(demo_run, tiny_models: dict[str, Path]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = demo_run
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    ids = tok(["The doctor said he was late."], return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    with torch.inference_mode():
        plain = base(**ids).logits
    lora = PeftModel.from_pretrained(base, out / "adapters" / "gender-lora").eval()
    with torch.inference_mode():
        adapted = lora(**ids).logits
    assert not torch.allclose(adapted, plain)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged" / "gender-lora")
    with torch.inference_mode():
        assert torch.allclose(merged(**ids).logits, adapted, atol=1e-5)
    for name in ("gender-prefix", "gender-encoder-counterfactual"):
        assert (out / "adapters" / name / "adapter_model.safetensors").is_file()
        assert (out / "adapters" / name / "README.md").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--biased-method", "nope"], "unknown biased method 'nope'; use lora or full"),
        (["--lora-steps", "0"], "lora_steps is 0; pass a positive number"),
        (["--lambdas", "nan"], "lambda"),
    ],
)
def test_demo_bad_options_fail_before_any_work(argv, message, data_dir: Path, tmp_path: Path, capsys) -> None:
    from peft_debias.cli.main import main

    out = tmp_path / "demo"
    code = main(["demo", "--data-dir", str(data_dir), "--output", str(out), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("peft-debias: error:") and message in err[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_report_rows_flag_a_damaged_language_model(tmp_path: Path) -> None:
    from peft_debias.demo.report import causal_rows

    def write(name: str, ppl: float, score: float) -> str:
        data = {"crows": {"axes": {"gender": {"stereotype_score": score, "ci95": [score - 5, score + 5]}}},
                "perplexity": {"perplexity": ppl}}  # fmt: skip
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        return f"{name}.json"

    runs = [
        {"name": "base", "label": "base", "results": write("base", 20.0, 56.0)},
        {"name": "lora", "label": "lora", "results": write("lora", 21.0, 51.0)},
        {"name": "prefix", "label": "prefix", "results": write("prefix", 459.0, 50.0)},
    ]
    rows = causal_rows(runs, tmp_path, "gender")
    assert rows[0][1] == "56.00 [51.0, 61.0]" and rows[0][5] == "20.00"
    assert rows[1][5] == "21.00 (+5.0%)"
    assert rows[2][5] == "459.00 (+2195.0%) **LM damaged**"


def test_an_empty_encoder_name_skips_the_encoder_and_passes_the_checks(tiny_models, data_dir: Path, tmp_path) -> None:
    """``--encoder-model ''`` is the documented way to skip the encoder stages: the up-front check accepts it (and
    the causal model is still checked), while a blank name is refused."""
    from peft_debias.core.errors import DebiasError
    from peft_debias.demo.run import DemoConfig

    config = DemoConfig(
        quick=True, output=str(tmp_path / "demo"), data_dir=str(data_dir), causal_model=str(tiny_models["llama"]),
        encoder_model="",
    ).resolved()  # fmt: skip
    assert config.check() == data_dir
    with pytest.raises(DebiasError, match="--encoder-model name is empty"):
        DemoConfig(**{**config.__dict__, "encoder_model": " "}).check()
    with pytest.raises(DebiasError, match="--causal-model name is empty"):
        DemoConfig(**{**config.__dict__, "causal_model": ""}).check()
    assert not list(tmp_path.iterdir())
