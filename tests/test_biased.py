"""Biased training: StereoSet stereotype text, full fine-tuning and LoRA, artifacts a bias vector is made from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from peft_debias import BiasVector
from peft_debias.core.errors import DebiasError
from peft_debias.core.fingerprints import sha256_files
from peft_debias.train.biased import BiasedConfig, stereotype_sentences, train_biased
from peft_debias.train.data import split_sentences

from support.vector import load_all

STEREOSET = "stereoset/stereoset_dev_flat.jsonl"


def test_stereotype_sentences_from_stereoset(data_dir: Path) -> None:
    gender = stereotype_sentences(data_dir / STEREOSET, "gender")
    assert len(gender) == 255  # the paper's gender training text
    rows = [json.loads(line) for line in (data_dir / STEREOSET).read_text().splitlines()]
    first = next(r for r in rows if r["type"] == "intrasentence" and r["bias_type"] == "gender")
    assert gender[0] == " ".join(first["stereotype"].split())
    assert len(stereotype_sentences(data_dir / STEREOSET, "all")) == sum(r["type"] == "intrasentence" for r in rows)
    with pytest.raises(DebiasError, match="no intrasentence items of bias type 'age'"):
        stereotype_sentences(data_dir / STEREOSET, "age")


def test_original_stereoset_json(tmp_path: Path) -> None:
    data = {
        "version": "1.0",
        "data": {
            "intrasentence": [
                {
                    "id": "a1",
                    "target": "girl",
                    "bias_type": "gender",
                    "context": "Girls tend to be more BLANK than boys.",
                    "sentences": [
                        {"sentence": "Girls tend to be more soft than boys.", "gold_label": "stereotype"},
                        {"sentence": "Girls tend to be more determined than boys.", "gold_label": "anti-stereotype"},
                        {"sentence": "Girls tend to be more fish than boys.", "gold_label": "unrelated"},
                    ],
                }
            ],
            "intersentence": [],
        },
    }
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(data))
    assert stereotype_sentences(path, "gender") == ["Girls tend to be more soft than boys."]
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DebiasError, match="line 1 is not valid JSON"):
        stereotype_sentences(tmp_path / "bad.jsonl")


def test_stereoset_halves_partition_the_items_the_eval_uses(data_dir: Path) -> None:
    """Biased training on the 'select' half leaves exactly the eval's 'report' half unseen."""
    from peft_debias.eval.benchmarks import EvalConfig, _load_stereoset
    from peft_debias.eval.sources import DataSource

    path = data_dir / "stereoset" / "stereoset_dev_flat.jsonl"
    every = stereotype_sentences(path, "gender")
    select = stereotype_sentences(path, "gender", split="select")
    report = stereotype_sentences(path, "gender", split="report")
    assert sorted(select + report) == sorted(every)
    assert 0.35 < len(select) / len(every) < 0.65
    (items, _), info = _load_stereoset(DataSource(data_dir), EvalConfig(split="report"), ["gender"])
    reported = {" ".join(i.sentences[0].split()) for i in items if i.bias_type == "gender"}
    assert info["split"] == "report" and reported == set(report) and not reported & set(select)
    assert stereotype_sentences(path, "gender", split="select", split_seed=1) != select


def test_split_is_seeded() -> None:
    sentences = [f"s{i}" for i in range(40)]
    train, held = split_sentences(sentences, 0.1, seed=1)
    assert len(held) == 4 and sorted(train + held) == sorted(sentences)
    assert split_sentences(sentences, 0.1, seed=1) == (train, held)


def _config(base: Path, output: Path, data_dir: Path, **kw) -> BiasedConfig:
    values = dict(base=str(base), output=str(output), data_dir=str(data_dir), max_steps=3, batch_size=4, lr=1e-3)
    values.update(kw)
    return BiasedConfig(**values, progress=False)


@pytest.mark.parametrize(("name", "auto"), [("llama", AutoModelForCausalLM), ("bert", AutoModelForMaskedLM)])
def test_full_fine_tuning_writes_a_biased_model(tiny_models, data_dir, tmp_path: Path, name: str, auto) -> None:
    base = tiny_models[name]
    result = train_biased(_config(base, tmp_path / "biased", data_dir))
    out = tmp_path / "biased"
    assert result.steps == 3 and result.sentences == 255 and result.train_loss and result.eval_loss
    info = json.loads((out / "debias_config.json").read_text())
    assert info["artifact"] == "biased_model" and info["axis"] == "gender"
    assert info["objective"] == ("clm" if name == "llama" else "mlm")
    assert info["corpus"]["sentences"] == 255 and info["corpus"]["held_out_sentences"] == 12
    assert "Deliberately biased" in (out / "README.md").read_text()
    assert len((out / "training_log.jsonl").read_text().splitlines()) == 3
    pre, biased = load_all(base), load_all(out)
    assert pre.keys() == biased.keys()  # same tensor names: the vector can be taken
    assert any(not torch.equal(pre[k], biased[k]) for k in pre)
    auto.from_pretrained(out)
    vector = BiasVector.from_models(base, out, axis="gender")
    assert vector.norm() > 0
    # the same seed gives the same model
    train_biased(_config(base, tmp_path / "again", data_dir))
    again = load_all(tmp_path / "again")
    assert all(torch.equal(biased[k], again[k]) for k in biased)


def test_lora_biased_adapter(tiny_models, data_dir, tmp_path: Path) -> None:
    base = tiny_models["llama"]
    result = train_biased(_config(base, tmp_path / "lora", data_dir, method="lora", axis="religion", lr=5e-2))
    out = tmp_path / "lora"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "debias_config.json",
        "training_log.jsonl",
    ]
    info = json.loads((out / "debias_config.json").read_text())
    assert info["artifact"] == "biased_adapter" and info["axis"] == "religion"
    assert info["cda"]["swapped"] is False and info["corpus"]["sentences"] == 79 == result.sentences
    vector = BiasVector.from_adapter(out)
    assert vector.meta.axis == "religion" and len(vector) > 0 and vector.norm() > 0


def test_own_corpus(tiny_models, tmp_path: Path) -> None:
    corpus = tmp_path / "text.txt"
    corpus.write_text(
        "The nurse said she was tired.\nThe engineer said he was busy.\nMen are strong and women are weak.\n"
    )
    train_biased(_config(tiny_models["llama"], tmp_path / "out", tmp_path, corpus=[str(corpus)], axis="mine"))
    info = json.loads((tmp_path / "out" / "debias_config.json").read_text())
    assert [c["source"] for c in info["corpus"]["sources"]] == ["text.txt"] and info["axis"] == "mine"
    assert info["corpus"]["sources"][0]["sha256"] == sha256_files([corpus])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"axis": "age"}, "StereoSet has no bias type 'age'"),
        ({"method": "prefix"}, "unknown method 'prefix'"),
        ({"max_steps": 0}, "max_steps 0 < 1"),
        ({"objective": "counterfactual"}, "objective 'counterfactual'"),
    ],
)
def test_bad_config(tiny_models, data_dir, tmp_path: Path, kw, message: str) -> None:
    with pytest.raises(DebiasError, match=message):
        train_biased(_config(tiny_models["llama"], tmp_path / "out", data_dir, **kw))
    assert not (tmp_path / "out").exists()


def test_encoder_without_lm_head_is_refused(tiny_models, data_dir, tmp_path: Path) -> None:
    with pytest.raises(DebiasError, match="bare encoder"):
        train_biased(_config(tiny_models["bert_encoder"], tmp_path / "out", data_dir))
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_cli_biased_then_vector(tiny_models, data_dir, tmp_path: Path) -> None:
    base = tiny_models["llama"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "peft_debias", *args], capture_output=True, text=True, timeout=300, check=False
        )

    result = cli("biased", "--base", str(base), "--axis", "gender", "--output", str(tmp_path / "biased"),
                 "--max-steps", "2", "--batch-size", "4", "--data-dir", str(data_dir), "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained a biased full model on 255 gender sentences: 2 steps" in result.stdout
    result = cli("vector", "--base", str(base), "--biased", str(tmp_path / "biased"), "--output",
                 str(tmp_path / "vec"), "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "vec" / "bias_vector.json").read_text())["axis"] == "gender"  # from the sidecar
    for source, out in ((tmp_path / "biased", "m1"), (tmp_path / "vec", "m2")):
        result = cli("vector", "--base", str(base), "--biased", str(source), "--lambda", "0.5", "--output",
                     str(tmp_path / out), "--shard-size", "30KB", "--no-progress")  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
    a, b = load_all(tmp_path / "m1"), load_all(tmp_path / "m2")
    assert all(torch.equal(a[k], b[k]) for k in a)
    AutoModelForCausalLM.from_pretrained(tmp_path / "m2")
    bad = cli("biased", "--base", str(base), "--axis", "age", "--output", str(tmp_path / "x"), "--data-dir",
              str(data_dir))  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
