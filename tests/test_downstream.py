"""``peft-debias downstream``: WinoBias and CSV tasks on the tiny models, metrics checked against the predictions by
hand, the training set's composition against the real files, and the saved model against the run's predictions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from peft_debias import load_downstream
from peft_debias.cli.main import main
from peft_debias.eval.winobias import load_winobias

from support.loader import (
    one_torch_thread,  # noqa: F401 - autouse fixture
    trained_adapter,
)

pytestmark = pytest.mark.integration


def _lines(folder: Path, pattern: str) -> int:
    return sum(1 for path in folder.glob(pattern) for line in path.read_text().splitlines() if line.strip())


def _run(*argv: str) -> int:
    return main(["downstream", *argv])


def _records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]


def _accuracy(rows: list[dict]) -> float:
    return 100 * sum(r["label"] == r["prediction"] for r in rows) / len(rows)


def _tpr_gap(rows: list[dict], groups: tuple[str, str] = ("male", "female")) -> float:
    """RMS over classes of TPR(first group) - TPR(second group), in percent, from the predictions by hand."""
    gaps = []
    for label in sorted({r["label"] for r in rows}, key=str):
        tprs = []
        for group in groups:
            true = [r for r in rows if r["label"] == label and r["group"] == group]
            tprs.append(sum(r["prediction"] == label for r in true) / len(true) if true else None)
        if None not in tprs:
            gaps.append(tprs[0] - tprs[1])
    return 100 * math.sqrt(sum(g * g for g in gaps) / len(gaps))


@pytest.fixture(scope="module")
def winobias_run(tiny_models, data_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("downstream") / "plain"
    argv = ["--model", str(tiny_models["bert"]), "--task", "winobias", "--data-dir", str(data_dir)]
    assert _run(*argv, "--output", str(output), "--max-steps", "4", "--batch-size", "32", "--lr", "1e-3") == 0
    return output


def test_winobias_trains_on_pro_dev_and_tests_on_pro_and_anti_test(winobias_run, data_dir) -> None:
    metrics = json.loads((winobias_run / "metrics.json").read_text())
    folder = data_dir / "winobias"
    assert metrics["n_train"] == _lines(folder, "pro_stereotyped_type[12].txt.dev") == 792
    assert metrics["n_test"] == _lines(folder, "*_stereotyped_type[12].txt.test") == 1584
    assert metrics["train_stereotypes"] == {"pro": 792}
    assert metrics["train"]["steps"] == 4 and metrics["config"]["task"] == "winobias"
    rows = _records(winobias_run)
    assert len(rows) == metrics["n_test"]
    assert [r["stereotype"] for r in rows].count("anti") == _lines(folder, "anti_stereotyped_type[12].txt.test")


def test_winobias_metrics_equal_a_hand_count_of_the_predictions(winobias_run) -> None:
    metrics = json.loads((winobias_run / "metrics.json").read_text())
    rows = _records(winobias_run)
    pro = [r for r in rows if r["stereotype"] == "pro"]
    anti = [r for r in rows if r["stereotype"] == "anti"]
    assert metrics["accuracy_pro"] == pytest.approx(_accuracy(pro))
    assert metrics["accuracy_anti"] == pytest.approx(_accuracy(anti))
    assert metrics["gap"] == pytest.approx(_accuracy(pro) - _accuracy(anti))
    assert metrics["accuracy"] == pytest.approx(_accuracy(rows))
    assert metrics["tpr_gap"] == pytest.approx(_tpr_gap(rows))
    assert not any("/tmp/" in line or "/work/" in line for line in (winobias_run / "metrics.json").read_text().split())


def test_the_saved_plain_model_predicts_what_the_run_reported(winobias_run, data_dir) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(str(winobias_run / "model")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(winobias_run / "model"))
    items = load_winobias(data_dir, "test")[:48]
    with torch.no_grad():
        enc = tokenizer([i.text for i in items], padding=True, truncation=True, max_length=128, return_tensors="pt")
        enc.pop("token_type_ids", None)
        predicted = model(**enc).logits.argmax(-1).tolist()
    assert predicted == [r["prediction"] for r in _records(winobias_run)[:48]]


def test_anti_share_adds_that_share_of_the_anti_dev_sentences(tiny_models, data_dir, tmp_path) -> None:
    output = tmp_path / "out"
    argv = ["--model", str(tiny_models["bert"]), "--data-dir", str(data_dir), "--output", str(output)]
    assert _run(*argv, "--anti-share", "0.25", "--max-steps", "1", "--no-save-model") == 0
    anti = _lines(data_dir / "winobias", "anti_stereotyped_type[12].txt.dev")
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["n_train"] == 792 + round(0.25 * anti)
    assert metrics["train_stereotypes"] == {"pro": 792, "anti": round(0.25 * anti)}
    assert not (output / "model").exists()


def test_the_same_seed_gives_the_same_run(tiny_models, data_dir, tmp_path) -> None:
    """Arms of one seed share the head's initialisation and the data order: the run is reproducible."""
    argv = ["--model", str(tiny_models["bert"]), "--data-dir", str(data_dir), "--max-steps", "2", "--no-save-model"]
    assert _run(*argv, "--output", str(tmp_path / "a"), "--seed", "3") == 0
    assert _run(*argv, "--output", str(tmp_path / "b"), "--seed", "3") == 0
    assert _run(*argv, "--output", str(tmp_path / "c"), "--seed", "4", "--lr", "1e-2") == 0
    first, second, other = (_records(tmp_path / n) for n in "abc")
    assert first == second
    assert first != other


def test_a_frozen_adapter_run_keeps_the_adapter_and_saves_it(tiny_models, data_dir, tmp_path_factory, tmp_path) -> None:
    adapter = trained_adapter(tiny_models, tmp_path_factory, "bert", "lora")
    output = tmp_path / "out"
    argv = ["--model", str(tiny_models["bert"]), "--adapter", str(adapter), "--data-dir", str(data_dir)]
    assert _run(*argv, "--output", str(output), "--max-steps", "2", "--lr", "1e-2") == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["config"]["adapter"] == [adapter.name]  # no local path
    assert metrics["adapters_unchanged"] is True
    assert {"accuracy_pro", "accuracy_anti", "gap", "accuracy", "tpr_gap", "n_train", "n_test"} <= set(metrics)
    # the saved model is the whole fine-tuned classifier with its frozen adapter: it predicts what the run reported
    model = load_downstream(output / "model")
    assert list(model.peft_config) == ["gender"]
    tokenizer = AutoTokenizer.from_pretrained(str(output / "model"))
    items = load_winobias(data_dir, "test")[:48]
    with torch.no_grad():
        enc = tokenizer([i.text for i in items], padding=True, truncation=True, max_length=128, return_tensors="pt")
        predicted = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.argmax(-1)
    assert predicted.tolist() == [r["prediction"] for r in _records(output)[:48]]


def test_csv_task_scores_accuracy_and_tpr_gap(tiny_models, tmp_path) -> None:
    rows = ["text,label,group"]
    for i in range(24):
        group = ("male", "female")[i % 2]
        rows.append(f"{'He' if group == 'male' else 'She'} writes code number {i}.,{i % 3 == 0:d},{group}")
    data = tmp_path / "rows.csv"
    data.write_text("\n".join(rows) + "\n")
    output = tmp_path / "out"
    argv = ["--model", str(tiny_models["bert"]), "--task", "csv", "--train-file", str(data), "--test-file", str(data)]
    assert _run(*argv, "--output", str(output), "--max-steps", "2", "--no-save-model") == 0
    metrics = json.loads((output / "metrics.json").read_text())
    records = _records(output)
    assert metrics["n_train"] == metrics["n_test"] == 24 and metrics["labels"] == [0, 1]
    assert metrics["accuracy"] == pytest.approx(_accuracy(records))
    assert metrics["tpr_gap"] == pytest.approx(_tpr_gap(records))
    assert "accuracy_pro" not in metrics


def test_arms_of_one_seed_differ_only_in_the_adapter(tiny_models, data_dir, tmp_path_factory, tmp_path) -> None:
    """A LoRA adapter whose B matrices are zero changes nothing the model computes: its arm must then equal plain
    fine-tuning with the same seed, prediction for prediction and loss for loss (same head, data order and dropout
    masks, although injecting the adapter draws random numbers). A real adapter changes the losses."""
    import shutil

    from safetensors.torch import load_file, save_file

    adapter = trained_adapter(tiny_models, tmp_path_factory, "bert", "lora")
    zero = shutil.copytree(adapter, tmp_path / "zero-adapter")
    weights = load_file(str(zero / "adapter_model.safetensors"))
    save_file(
        {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in weights.items()},
        str(zero / "adapter_model.safetensors"),
    )
    argv = ["--model", str(tiny_models["bert"]), "--data-dir", str(data_dir), "--max-steps", "3", "--lr", "1e-2"]
    argv += ["--no-save-model", "--seed", "5"]
    for name, extra in (("plain", []), ("zero", ["--adapter", str(zero)]), ("real", ["--adapter", str(adapter)])):
        assert _run(*argv, *extra, "--output", str(tmp_path / name)) == 0
    losses = {n: json.loads((tmp_path / n / "metrics.json").read_text())["train"] for n in ("plain", "zero", "real")}
    assert _records(tmp_path / "zero") == _records(tmp_path / "plain")
    assert losses["zero"]["final_loss"] == losses["plain"]["final_loss"]
    assert losses["real"]["first_loss"] != losses["plain"]["first_loss"]
