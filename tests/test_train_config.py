"""TrainConfig: nested option groups behind the flat keys that recipes, the command line and saved runs use."""

from __future__ import annotations

import pytest

from peft_debias.cda.dataset import CDAConfig
from peft_debias.core.errors import DebiasError
from peft_debias.models.options import MethodOptions
from peft_debias.train.config import FLAT_KEYS, ObjectiveConfig, TrainConfig

# The flat keys in the order train_config.json and the artifact's train_config have always had.
SAVED_KEYS = [
    "base", "base_model_id", "axis", "corpus", "output", "method", "objective", "kind", "max_steps", "epochs", "lr",
    "weight_decay", "scheduler", "warmup_ratio", "max_grad_norm", "batch_size", "grad_accum", "max_length", "seed",
    "mixed_precision", "eval_fraction", "eval_max_rows", "eval_every", "save_every", "log_every", "world_size", "cda",
    "cda_mode", "keep_ratio", "names", "max_sentences", "r", "alpha", "dropout", "target_modules",
    "num_virtual_tokens", "prompt_init_text", "mlm_probability", "whole_word_mask", "beta", "invariance",
    "regulariser", "revision", "trust_remote_code", "allow_pickle", "resume", "overwrite", "progress",
]  # fmt: skip


def test_flat_keys_reach_the_groups() -> None:
    config = TrainConfig(base="b", r=4, beta=0.5, cda_mode="one", names=10, max_length=64, seed=7, axis="race")
    assert config.method_options == MethodOptions(r=4)
    assert config.objective_options == ObjectiveConfig(beta=0.5)
    assert (config.cda_options.mode, config.cda_options.names) == ("one", 10)
    assert config.r == 4 and config.cda_mode == "one"
    config.alpha = 32
    assert config.method_options.alpha == 32
    assert config.cda_config() == CDAConfig(axis="race", mode="one", names=10, seed=7)
    assert config.objective_config().max_length == 64 and config.objective_config(16).max_length == 16
    assert TrainConfig(method_options=MethodOptions(r=2), r=3).r == 3  # flat keys win over a group


def test_saved_form_and_fingerprint_are_the_flat_ones() -> None:
    later = SAVED_KEYS.index("regulariser") + 1  # equalize_data: saved only when set
    placed = SAVED_KEYS.index("mixed_precision") + 1  # optimizer, device, dtype: saved only when set
    new = ["optimizer", "device", "dtype"]
    keys = [*SAVED_KEYS[:placed], *new, *SAVED_KEYS[placed:later], "equalize_data", *SAVED_KEYS[later:]]
    assert list(FLAT_KEYS) == keys
    assert list(TrainConfig().to_dict()) == SAVED_KEYS
    plain = TrainConfig(base="b", corpus=["c"], output="o")
    assert TrainConfig(base="b", corpus=["c"], output="o", device="cpu").fingerprint() == plain.fingerprint()
    bf16 = TrainConfig(base="b", corpus=["c"], output="o", dtype="bfloat16")
    assert bf16.to_dict()["dtype"] == "bfloat16" and bf16.fingerprint() != plain.fingerprint()
    eight = TrainConfig(base="b", corpus=["c"], output="o", optimizer="adamw_8bit")
    assert eight.to_dict()["optimizer"] == "adamw_8bit" and eight.fingerprint() != plain.fingerprint()
    equalize = TrainConfig(objective="equalize", equalize_data="persons.json")
    assert equalize.to_dict()["equalize_data"] == "persons.json"
    assert TrainConfig.from_dict(equalize.to_dict()) == equalize
    # values computed before the options were grouped: interrupted runs and cached cells stay valid
    assert TrainConfig(base="b", corpus=["c"], output="o").fingerprint() == "9ae4c9d422bf4386"
    config = TrainConfig(base="b", corpus=["c"], output="o", r=4, alpha=16, beta=0.5, cda_mode="one", names=10,
                         invariance="likelihood", target_modules=["q_proj"])  # fmt: skip
    assert config.fingerprint() == "1e818f91e2fb6432"
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_group_fields_without_a_flat_key() -> None:
    config = TrainConfig(base="b")
    config.cda_options.min_words = 2
    saved = config.to_dict()
    assert saved["cda_options"] == {"min_words": 2} and config.fingerprint() != TrainConfig(base="b").fingerprint()
    assert TrainConfig.from_dict(saved) == config
    config.cda_options.seed = 5  # the run's seed is used, so it is not part of the saved form
    assert "seed" not in config.to_dict()["cda_options"] and config.cda_config().seed == 0


def test_groups_are_copied_not_shared() -> None:
    options = MethodOptions(r=4)
    one = TrainConfig(method_options=options)
    one.r = 16
    assert options.r == 4 and TrainConfig(method_options=options).r == 4


def test_recipe_values_and_errors() -> None:
    config = TrainConfig.from_dict({"lr": "2e-4", "beta": 1, "corpus": "c", "method_options": {"dropout": "0.1"}})
    assert config.lr == 2e-4 and config.beta == 1.0 and config.corpus == ["c"] and config.dropout == 0.1
    with pytest.raises(DebiasError, match=r"has unknown keys \['rank'\]"):
        TrainConfig.from_dict({"rank": 4})
    with pytest.raises(DebiasError, match=r"cda_options has unknown keys \['seed'\]"):
        TrainConfig.from_dict({"cda_options": {"seed": 1}})
    with pytest.raises(DebiasError, match="r is 'eight', not an integer"):
        TrainConfig.from_dict({"r": "eight"})
    with pytest.raises(DebiasError, match="unknown training option 'rank'"):
        TrainConfig().update(rank=4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'rank'"):
        TrainConfig(rank=4)


def test_command_line_options_are_the_flat_keys() -> None:
    import argparse

    from peft_debias.cli.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--r", "4", "--cda-mode", "one", "--no-cda", "--target-modules", "q", "--beta", "2"])
    config = config_from_args(args)
    assert (config.r, config.cda_mode, config.cda, config.target_modules, config.beta) == (4, "one", False, ["q"], 2.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [({"log_every": 0}, "log_every 0 is below 1"), ({"seed": -1}, "seed -1 is below 0"),
     ({"eval_max_rows": -1}, "eval_max_rows -1 is below 0"), ({"save_every": -1}, "save_every -1 is below 0")],
)  # fmt: skip
def test_the_python_api_refuses_numbers_below_their_bound(tmp_path, values: dict, message: str) -> None:
    """The bounds of the generated options hold for the API too, before any work folder is made."""
    from peft_debias.train.adapter import train_adapter

    out = tmp_path / "out"
    config = TrainConfig(base="b", corpus=["c"], output=str(out), **values)
    with pytest.raises(DebiasError, match=message):
        train_adapter(config)
    assert list(tmp_path.iterdir()) == []


def test_zero_means_never_for_eval_and_save_every() -> None:
    TrainConfig(base="b", corpus=["c"], output="o", eval_every=0, save_every=0, eval_max_rows=0).validate()


def test_sizes_the_base_cannot_hold_are_refused_before_anything_loads(tiny_models, tmp_path, monkeypatch) -> None:
    """Virtual tokens that fill the positions, or a LoRA rank above the hidden size, are refused from the model's
    config alone: neither the corpus nor the weights are read."""
    import peft_debias.cda.dataset
    import peft_debias.models.loading
    from peft_debias import train_adapter

    def never(*args, **kwargs):
        raise AssertionError("loaded before the sizes were checked")

    monkeypatch.setattr(peft_debias.models.loading, "load_model", never)
    monkeypatch.setattr(peft_debias.cda.dataset, "build_cda_dataset", never)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("He is a doctor and she is a nurse.\n")
    common = {"base": str(tiny_models["llama"]), "corpus": [str(corpus)], "output": str(tmp_path / "out")}
    with pytest.raises(DebiasError, match=r"num_virtual_tokens 121 leaves no room for text in the 128 positions"):
        train_adapter(**common, method="prompt", num_virtual_tokens=121)
    with pytest.raises(DebiasError, match=r"use num_virtual_tokens <= 120"):
        train_adapter(**common, method="prefix", num_virtual_tokens=500)
    with pytest.raises(DebiasError, match=r"LoRA rank r 33 is above the hidden size 32 of .*; use r <= 32"):
        train_adapter(**common, method="lora", r=33)
    with pytest.raises(DebiasError, match=r"num_virtual_tokens 100000 is above 512"):
        train_adapter(**common, method="prompt", num_virtual_tokens=100_000)
    assert not (tmp_path / "out").exists()


def test_check_method_fits_bounds() -> None:
    from types import SimpleNamespace

    from peft_debias.models.limits import check_method_fits

    llama = SimpleNamespace(max_position_embeddings=128, hidden_size=32)
    gpt2 = SimpleNamespace(n_positions=64, n_embd=16)  # GPT-2's own names
    check_method_fits(llama, "m", prompt_learning=True, lora=False, r=1000, num_virtual_tokens=120)
    check_method_fits(llama, "m", prompt_learning=False, lora=True, r=32, num_virtual_tokens=1000)
    with pytest.raises(DebiasError, match="in the 64 positions of m; use num_virtual_tokens <= 56"):
        check_method_fits(gpt2, "m", prompt_learning=True, lora=False, r=8, num_virtual_tokens=57)
    with pytest.raises(DebiasError, match="hidden size 16"):
        check_method_fits(gpt2, "m", prompt_learning=False, lora=True, r=17, num_virtual_tokens=24)


def test_a_single_corpus_path_is_a_list_of_one() -> None:
    from pathlib import Path

    assert TrainConfig(corpus="corpus.txt").corpus == ["corpus.txt"]  # not ["c", "o", "r", ...]
    assert TrainConfig(corpus=[Path("a.txt"), "b"]).corpus == ["a.txt", "b"]
    assert TrainConfig().update(corpus=Path("x.jsonl"), target_modules="q_proj").corpus == ["x.jsonl"]
    assert TrainConfig(target_modules="q_proj").target_modules == ["q_proj"]
    assert TrainConfig(target_modules=None).target_modules is None


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prompt_learning_leaves_positions_for_its_virtual_tokens(tiny_models, tmp_path, method: str) -> None:
    """GPT-2 has 128 learned positions: 24 virtual tokens plus a 128-token text would index past them (IndexError
    in the position embedding); the run cuts the text to 104 tokens instead."""
    from peft_debias import train_adapter

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(["He said that she was a doctor and he was a nurse"] * 9) + ".\n")
    result = train_adapter(base=str(tiny_models["gpt2"]), corpus=str(corpus), output=str(tmp_path / "out"),
                           method=method, max_length=128, max_steps=1, eval_fraction=0, progress=False)  # fmt: skip
    assert result.steps == 1 and result.train_loss is not None and result.train_loss == result.train_loss
