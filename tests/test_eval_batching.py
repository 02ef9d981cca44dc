"""Token-budget batching, the fp32 LM head of a bf16 model, the thread default and the eval options behind them.

Every scorer's forwards are counted with a hook: no batch may exceed its padded-token budget (rows x longest
row), and the numbers must not depend on the budget.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from peft_debias.core.errors import DebiasError
from peft_debias.eval.batching import batch_token_budget, token_budget_batches
from peft_debias.eval.benchmarks import EvalConfig
from peft_debias.eval.lm_scoring import (
    causal_logprob_sums,
    fp32_head_weight,
    head_log_softmax,
    masked_logprobs,
    mean_pooled_embeddings,
    pad_batch,
)
from peft_debias.eval.threads import default_threads, use_threads
from peft_debias.models.loading import load_model

from support.eval_helpers import single_thread  # noqa: F401

TEXTS = [
    "Hi",
    "He is a doctor.",
    "The woman went to work while the man stayed home with the children all day long.",
    "My mother is a nurse.",
    "The man went to work.",
    "The woman went to work.",
    "Her son became a scientist; his daughter became a lawyer and moved to a city far away from home.",
]


def _count_forwards(model: torch.nn.Module) -> tuple[list[tuple[int, int]], object]:
    """Record ``(rows, width)`` of every forward's ``input_ids``."""
    shapes: list[tuple[int, int]] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        shapes.append(tuple(ids.shape))

    return shapes, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_token_budget_batches_respect_the_budget_and_the_row_cap() -> None:
    lengths = [5, 40, 3, 3, 9, 120, 7, 7, 7, 2, 60]
    batches = list(token_budget_batches(lengths, max_tokens=64, max_rows=3))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each index once
    for batch in batches:
        widest = max(lengths[i] for i in batch)
        assert len(batch) <= 3
        assert len(batch) * widest <= 64 or len(batch) == 1  # an over-long item goes alone
        assert [lengths[i] for i in batch] == sorted(lengths[i] for i in batch)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)  # shortest first
    assert len(list(token_budget_batches([4] * 10, max_tokens=1000))) == 1  # no row cap: one batch


def test_encoding_batches_stay_within_the_budget(tiny_models: dict[str, Path]) -> None:
    loaded = load_model(str(tiny_models["bert_encoder"]))
    reference = mean_pooled_embeddings(loaded.model, loaded.tokenizer, TEXTS, max_tokens=10_000)
    shapes, handle = _count_forwards(loaded.model)
    budgeted = mean_pooled_embeddings(loaded.model, loaded.tokenizer, TEXTS, max_tokens=40, batch_size=4)
    handle.remove()
    assert len(shapes) > 2 and all(r * w <= 40 or r == 1 for r, w in shapes) and all(r <= 4 for r, _ in shapes)
    np.testing.assert_allclose(budgeted, reference, atol=1e-6)
    with batch_token_budget(30):  # the budget in force for calls that set none (the runner's --max-batch-tokens)
        shapes.clear()
        handle = loaded.model.register_forward_pre_hook(
            lambda m, a, k: shapes.append(tuple(k["input_ids"].shape)), with_kwargs=True
        )
        mean_pooled_embeddings(loaded.model, loaded.tokenizer, TEXTS)
        handle.remove()
    assert all(r * w <= 30 or r == 1 for r, w in shapes)


@pytest.mark.parametrize("grouped", [False, True])
def test_causal_batches_stay_within_the_budget(tiny_models: dict[str, Path], grouped: bool) -> None:
    loaded = load_model(str(tiny_models["llama"]))
    groups = [[4, 5], [1, 3]] if grouped else None
    reference = causal_logprob_sums(loaded.model, loaded.tokenizer, TEXTS, groups=groups, max_tokens=10_000)
    shapes, handle = _count_forwards(loaded.model)
    budgeted = causal_logprob_sums(loaded.model, loaded.tokenizer, TEXTS, groups=groups, max_tokens=48)
    handle.remove()
    assert len(shapes) > 2 and all(r * w <= 48 or r == 1 for r, w in shapes)
    for (a, n), (b, m) in zip(budgeted, reference, strict=True):
        assert n == m and a == pytest.approx(b, abs=1e-5)


def test_masked_batches_stay_within_the_budget(tiny_models: dict[str, Path]) -> None:
    loaded = load_model(str(tiny_models["bert"]))
    seqs = [loaded.tokenizer(t)["input_ids"] for t in TEXTS]
    rows = [(s, p, seqs[s][p]) for s in range(len(seqs)) for p in range(1, len(seqs[s]) - 1)]
    reference = masked_logprobs(loaded.model, loaded.tokenizer, seqs, rows, max_tokens=10_000)
    shapes, handle = _count_forwards(loaded.model)
    budgeted = masked_logprobs(loaded.model, loaded.tokenizer, seqs, rows, max_tokens=64, batch_size=100)
    handle.remove()
    assert len(shapes) > 2 and all(r * w <= 64 or r == 1 for r, w in shapes)
    np.testing.assert_allclose(budgeted, reference, atol=1e-5)


def test_a_bf16_model_gets_an_fp32_head_and_keeps_its_tie(tiny_models: dict[str, Path]) -> None:
    loaded = load_model(str(tiny_models["gpt2"]), dtype=torch.bfloat16)
    model, tok = loaded.model, loaded.tokenizer
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    weight, bias = fp32_head_weight(model)
    assert weight.dtype == torch.float32 and bias is None
    assert weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()  # a copy, not the parameter
    ids, mask = pad_batch([[5, 6, 7, 8], [9, 10]], 0, torch.device("cpu"))
    rows, cols = torch.tensor([0, 0, 1]), torch.tensor([1, 3, 0])
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
    logp = head_log_softmax(model, ids, mask, rows, cols, (weight, bias))
    handle.remove()
    assert seen == [0]  # the bf16 head multiplied no row
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    expected = torch.log_softmax(hidden[rows, cols].float() @ weight.T, dim=-1)
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp, expected, atol=1e-4, rtol=1e-4)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16  # the embedding lookup is unchanged
    assert fp32_head_weight(load_model(str(tiny_models["gpt2"])).model) is None  # fp32: the head as it is
    fp32 = causal_logprob_sums(load_model(str(tiny_models["gpt2"])).model, tok, TEXTS)
    bf16 = causal_logprob_sums(model, tok, TEXTS)
    for (a, n), (b, m) in zip(bf16, fp32, strict=True):
        assert n == m and a / n == pytest.approx(b / m, abs=0.1)


def test_dtype_option_loads_the_model_in_bf16_and_is_recorded(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from peft_debias.eval.handle import resolve_model
    from peft_debias.eval.runner import evaluate_bias
    from peft_debias.models.placement import Placement

    handle = resolve_model(str(tiny_models["llama"]), placement=Placement(dtype="bf16"))
    assert next(handle.model.parameters()).dtype == torch.bfloat16
    assert handle.placement == {"device": "cpu", "dtype": "bfloat16", "device_map": None}
    with pytest.raises(DebiasError, match="dtype bf16"):
        resolve_model(load_model(str(tiny_models["llama"])).model, handle.tokenizer, placement=Placement(dtype="bf16"))
    text = tmp_path / "t.txt"
    text.write_text("The doctor said that she would call him back tomorrow morning.\n" * 20)
    out = evaluate_bias(
        str(tiny_models["llama"]), benchmarks="perplexity", ppl_file=str(text), ppl_max_tokens=64,
        dtype="bf16", max_batch_tokens=256, progress=False,
    )  # fmt: skip
    assert out["config"]["dtype"] == "bf16" and out["config"]["max_batch_tokens"] == 256
    assert out["placement"] == {"device": "cpu", "dtype": "bfloat16", "device_map": None}
    with pytest.raises(DebiasError, match="dtype"):
        EvalConfig(dtype="fp8").validate()
    with pytest.raises(DebiasError, match="max_batch_tokens"):
        EvalConfig(max_batch_tokens=0).validate()


def test_thread_default_and_blas_follow_the_count() -> None:
    from threadpoolctl import threadpool_info

    assert [default_threads(n) for n in (1, 2, 3, 8)] == [1, 1, 2, 7]
    before = torch.get_num_threads()
    try:
        assert use_threads(1) == 1 and torch.get_num_threads() == 1
        blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(n == 1 for n in blas)
        assert use_threads(None) == default_threads()
    finally:
        use_threads(before)


def test_cli_options_and_a_parser_without_torch() -> None:
    from peft_debias.cli.main import build_parser

    args = build_parser().parse_args(["eval", "--model", "m", "--dtype", "bf16", "--max-batch-tokens", "512"])
    assert args.dtype == "bf16" and args.max_batch_tokens == 512 and args.threads is None
    code = (
        "import sys; from peft_debias.cli.main import build_parser; build_parser(); "
        "print([m for m in ('torch', 'transformers', 'numpy', 'peft', 'datasets', 'matplotlib') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # building the parser (every --help) imports no heavy library


def test_an_eval_run_imports_no_optional_library(tiny_models: dict[str, Path], data_dir: Path) -> None:
    code = (
        "import sys; from peft_debias.cli.main import main; "
        f"code = main(['eval', '--model', {str(tiny_models['bert_encoder'])!r}, '--benchmarks', 'seat', "
        f"'--data-dir', {str(data_dir)!r}, '--seat-tests', 'weat6', '--n-samples', '100', '--no-progress']); "
        "print(code, [m for m in ('peft', 'datasets', 'sentence_transformers', 'lm_eval', 'matplotlib', "
        "'transformers.models.llama', 'transformers.models.gpt2') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr
