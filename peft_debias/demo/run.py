"""The main job, end to end on the bundled models and offline: measure, debias two ways, measure again, report.

Stages (each prints a one-line summary with the elapsed time; long ones show tqdm bars):

1. baseline: CrowS-Pairs and StereoSet for the axis and perplexity on WikiText-2 test (another source than the
   training text) on the causal LM; SEAT on the sentence encoder;
2. PEFTDebias: a CDA LoRA and a CDA prefix adapter trained on Project Gutenberg novels (causal LM objective), each
   evaluated; a counterfactual-objective LoRA (token-level invariance) on the sentence encoder, evaluated with SEAT;
3. the LoRA merged into a plain model folder, checked against the adapter;
4. Bias Vector: a biased copy trained on the StereoSet stereotypes of the *select* half of the items (a LoRA by
   default, for speed on a CPU: ``V = B A``; ``biased_method="full"`` fine-tunes every weight as in the paper,
   ``V = biased - base``), and a small lambda sweep of ``base - lambda V``;
5. ``report.md`` (tables with 95% intervals and paired tests against the base, charts) and ``summary.json``.

CrowS-Pairs and StereoSet are scored on the *report* half of their items (:mod:`peft_debias.eval.splits`), so the
bias vector is never scored on sentences it was trained on. One seed: the demo shows the workflow and its own
figures with their intervals; the multi-seed, controlled evidence is the experiment harness's
(``peft-debias experiment``). Everything is written to a temporary sibling of the output and renamed into place.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from peft_debias.core.bounds import check_minimums
from peft_debias.core.errors import DebiasError
from peft_debias.core.jsonio import write_json
from peft_debias.core.portable import scrub_local_paths

logger = logging.getLogger(__name__)

TRAIN_TEXT = "gutenberg"
PPL_TEXT = "wikitext2/wiki.test.raw"


@dataclass
class DemoConfig:
    """Options of :func:`run_demo` (``None`` = the default for the chosen size: full run / ``quick``)."""

    output: str = field(default="demo_output", metadata={"help": "output folder"})
    quick: bool = field(default=False, metadata={"help": "a ~3-minute run: fewer steps and tokens"})
    data_dir: str | None = field(default=None, metadata={"help": "data folder (default $PEFT_DEBIAS_DATA)"})
    axis: str = field(default="gender", metadata={"help": "bias axis"})
    causal_model: str = field(default="bundled:smollm2", metadata={"help": "causal LM to debias"})
    encoder_model: str = field(default="bundled:minilm", metadata={"help": "sentence encoder for SEAT ('' skips)"})
    seed: int = field(default=0, metadata={"help": "random seed", "min": 0})
    lora_steps: int | None = field(default=None, metadata={"help": "LoRA steps (default 150, quick 20)"})
    prefix_steps: int | None = field(default=None, metadata={"help": "prefix steps (default 60; 0 skips, quick)"})
    encoder_steps: int | None = field(default=None, metadata={"help": "encoder LoRA steps (default 200, quick 20)"})
    biased_steps: int | None = field(default=None, metadata={"help": "biased training steps (default 60, quick 10)"})
    biased_method: str = field(default="lora", metadata={"help": "biased copy: lora (fast) | full (the paper's)"})
    benchmarks: str | None = field(
        default=None, metadata={"help": "causal-LM benchmarks (default crows,stereoset,perplexity; quick no stereoset)"}
    )
    lambdas: list[float] | None = field(default=None, metadata={"help": "bias-vector lambdas (default 0.5,1; quick 1)"})
    ppl_tokens: int | None = field(default=None, metadata={"help": "perplexity tokens (default 8000, quick 1500)"})
    novels: int | None = field(default=None, metadata={"help": "Gutenberg novels for training (default 4, quick 1)"})
    ppl_threshold: float = field(
        default=0.10, metadata={"help": "largest perplexity increase for the chosen lambda", "min": 0}
    )
    batch_size: int = field(default=8, metadata={"help": "sentences per step and per forward", "min": 1})
    max_length: int = field(default=64, metadata={"help": "tokens per training sentence", "min": 8})
    n_bootstrap: int = field(default=2000, metadata={"help": "bootstrap resamples of the intervals", "min": 0})
    device: str = field(default="auto", metadata={"help": "auto (the accelerator if present) | cpu | cuda[:N] | mps"})
    dtype: str = field(default="auto", metadata={"help": "auto (float32 on CPU) | float32 | bfloat16 | float16"})
    overwrite: bool = False
    progress: bool = True

    def resolved(self) -> DemoConfig:
        """A copy with the size-dependent defaults filled in and checked."""
        quick = self.quick
        defaults = {
            "lora_steps": 20 if quick else 150,
            "prefix_steps": 0 if quick else 60,
            "encoder_steps": 20 if quick else 200,
            "biased_steps": 10 if quick else 60,
            "benchmarks": "crows,perplexity" if quick else "crows,stereoset,perplexity",
            "lambdas": [1.0] if quick else [0.5, 1.0],
            "ppl_tokens": 1500 if quick else 8000,
            "novels": 1 if quick else 4,
        }
        values = {k: (defaults[k] if getattr(self, k) is None else getattr(self, k)) for k in defaults}
        out = DemoConfig(**{**asdict(self), **values})
        for name in ("lora_steps", "encoder_steps", "biased_steps", "ppl_tokens", "novels"):
            if int(getattr(out, name)) < 1:
                raise DebiasError(f"{name} is {getattr(out, name)}", "pass a positive number")
        if out.prefix_steps < 0:
            raise DebiasError(f"prefix_steps is {out.prefix_steps}", "pass 0 (skip) or a positive number")
        if out.biased_method not in ("lora", "full"):
            raise DebiasError(f"unknown biased method {out.biased_method!r}", "use lora or full")
        if not out.lambdas:
            raise DebiasError("no bias-vector lambda given", "pass e.g. 0.5,1")
        check_minimums(out)
        for name, value in [("ppl_threshold", out.ppl_threshold), *(("lambda", lam) for lam in out.lambdas)]:
            if not math.isfinite(value):
                raise DebiasError(f"{name} {value} is not a finite number", "pass e.g. 0.1 (threshold) or 0.5,1")
        return out

    def check(self) -> Path:
        """Every option checked before the first stage (no model loaded): the model names, the axis and benchmarks,
        the data folder and its files, and the output. Returns the data folder."""
        from peft_debias.core.atomic import check_destination, check_not_input
        from peft_debias.core.data_dir import data_file, resolve_data_dir
        from peft_debias.eval.benchmarks import check_benchmarks
        from peft_debias.eval.sources import check_axes
        from peft_debias.models.loading import check_model_name
        from peft_debias.models.placement import Placement, resolve_device

        Placement(self.device, self.dtype).check()
        resolve_device(self.device)
        check_model_name(self.causal_model, what="--causal-model")
        if self.encoder_model != "":  # '' skips the encoder stages
            check_model_name(self.encoder_model, what="--encoder-model")
        if len(check_axes(self.axis)) != 1:
            raise DebiasError(f"axis {self.axis!r} names several axes", "pass one of gender, race, religion")
        check_benchmarks(self.benchmarks)
        check_destination(self.output, overwrite=self.overwrite)
        data_dir = resolve_data_dir(self.data_dir)
        for relative in ("crows_pairs/crows_pairs_anonymized.csv", "stereoset/stereoset_dev_flat.jsonl", PPL_TEXT):
            data_file(data_dir, relative)  # fail before any work when the data is incomplete
        check_not_input(self.output, [data_dir, *(m for m in (self.causal_model, self.encoder_model) if m)])
        return data_dir


class _Clock:
    """Elapsed time and the one-line stage summaries (sent to ``on_stage``; the CLI prints them)."""

    def __init__(self, on_stage: Callable[[str], None] | None) -> None:
        self.start = time.perf_counter()
        self.stages: list[dict[str, Any]] = []
        self.on_stage = on_stage

    def done(self, stage: str, summary: str) -> None:
        elapsed = time.perf_counter() - self.start
        self.stages.append({"stage": stage, "seconds": round(elapsed, 1), "summary": summary})
        line = f"[{elapsed:6.1f}s] {stage}: {summary}"
        if self.on_stage is None:
            logger.info("%s", line)
        else:
            self.on_stage(line)


def _novels(data_dir: Path, count: int) -> list[str]:
    folder = data_dir / TRAIN_TEXT
    files = sorted(p for p in folder.glob("*.txt")) if folder.is_dir() else []
    if not files:
        raise DebiasError(f"no training text in {folder}", f"put the Gutenberg novels (*.txt) in {folder}")
    return [str(p) for p in files[:count]]


def _short(results: dict[str, Any], axis: str) -> str:
    parts = []
    crows = results.get("crows", {}).get("axes", {}).get(axis)
    if crows:
        parts.append(f"CrowS {crows['stereotype_score']:.2f}")
    stereo = results.get("stereoset", {}).get("axes", {}).get(axis)
    if stereo:
        parts.append(f"SS {stereo['ss']:.2f} LMS {stereo['lms']:.2f}")
    seat = results.get("seat", {}).get("axes", {}).get(axis)
    if seat:
        parts.append(f"SEAT mean |ES| {seat['mean_abs_effect_size']:.3f}")
    if "perplexity" in results:
        parts.append(f"ppl {results['perplexity']['perplexity']:.2f}")
    return ", ".join(parts)


def run_demo(config: DemoConfig | None = None, *, on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the demo (see the module docstring) and return the summary written to ``summary.json``.

    ``on_stage(line)`` receives the one-line summary of each finished stage (default: logged at INFO).
    """
    from peft_debias.core.atomic import atomic_output
    from peft_debias.demo.report import write_report

    cfg = (config or DemoConfig()).resolved()
    data_dir = cfg.check()
    novels = _novels(data_dir, cfg.novels)
    clock = _Clock(on_stage)
    with atomic_output(cfg.output, overwrite=cfg.overwrite, directory=True) as out:
        runs = _causal_stages(cfg, data_dir, novels, out, clock)
        encoder = _encoder_stages(cfg, data_dir, novels, out, clock) if cfg.encoder_model else {}
        summary = scrub_local_paths({  # what is written names files, never this machine's folders
            "config": asdict(cfg),
            "data_dir": str(data_dir),
            "training_text": novels,
            "perplexity_text": str(data_dir / PPL_TEXT),
            "runs": runs,
            "encoder": encoder,
            "stages": clock.stages,
            "seconds": round(time.perf_counter() - clock.start, 1),
        })
        write_report(summary, out)
        write_json(out / "summary.json", summary)
    clock.done("report", f"{Path(cfg.output) / 'report.md'} (total {summary['seconds']:.0f} s)")
    return summary


def _train(cfg: DemoConfig, base: str, novels: list[str], folder: Path, steps: int, **options: Any) -> Any:
    """Train one adapter on CDA of the novels into ``folder`` (held-out loss at the end, no checkpoints)."""
    from peft_debias.train.adapter import train_adapter

    values = {"batch_size": cfg.batch_size, "device": cfg.device, "dtype": cfg.dtype, **options}
    return train_adapter(
        base=base, axis=cfg.axis, corpus=novels, output=str(folder), max_steps=steps, max_length=cfg.max_length,
        max_sentences=20000, eval_every=steps, eval_max_rows=64 if cfg.quick else 256, save_every=0, seed=cfg.seed,
        progress=cfg.progress,
        **values,
    )  # fmt: skip


def _eval_options(cfg: DemoConfig, data_dir: Path) -> dict[str, Any]:
    return {
        "benchmarks": cfg.benchmarks,
        "axes": cfg.axis,
        "data_dir": data_dir,
        "ppl_file": str(data_dir / PPL_TEXT),
        "ppl_max_tokens": cfg.ppl_tokens,
        "split": "report",
        "n_bootstrap": cfg.n_bootstrap,
        "seed": cfg.seed,
        "progress": cfg.progress,
    }


def _save(results: dict[str, Any], out: Path, name: str) -> str:
    path = out / "results" / f"{name}.json"
    write_json(path, scrub_local_paths(results))
    return str(path.relative_to(out))


def _causal_stages(cfg: DemoConfig, data_dir: Path, novels: list[str], out: Path, clock: _Clock) -> list[dict]:
    """Baseline, the CDA adapters, the merge and the bias-vector sweep on the causal LM."""
    from peft_debias.eval import evaluate_bias
    from peft_debias.eval.results import compare_results
    from peft_debias.models.loading import load_model

    options = _eval_options(cfg, data_dir)
    loaded = load_model(cfg.causal_model, device=cfg.device, dtype=cfg.dtype)
    cfg = replace(cfg, dtype=loaded.placement["dtype"])  # what "auto" became: the adapters train on it too
    base = evaluate_bias(loaded.model, loaded.tokenizer, label="base", **options)
    record = {"name": "base", "label": f"{cfg.causal_model} (base)", "placement": loaded.placement}
    runs = [{**record, "results": _save(base, out, "base")}]
    clock.done("baseline", _short(base, cfg.axis))

    methods = [("lora", cfg.lora_steps, 2e-4), ("prefix", cfg.prefix_steps, 5e-3)]
    for method, steps, lr in methods:
        if not steps:
            continue
        folder = out / "adapters" / f"{cfg.axis}-{method}"
        trained = _train(cfg, cfg.causal_model, novels, folder, steps, method=method, objective="clm", lr=lr)
        results = evaluate_bias(trained.model, loaded.tokenizer, label=f"CDA {method}", **options)
        results["compare"] = compare_results(results, base)
        runs.append(
            {
                "name": method,
                "label": f"PEFTDebias {method} ({steps} steps)",
                "adapter": str(folder.relative_to(out)),
                "train": {"steps": steps, "seconds_per_step": trained.seconds_per_step, "eval_loss": trained.eval_loss},
                "results": _save(results, out, method),
            }
        )
        clock.done(
            f"{method} adapter", f"{steps} steps, {trained.seconds_per_step:.2f} s/step; {_short(results, cfg.axis)}"
        )
        if method == "lora":
            runs[-1]["merged"] = _merge_and_check(cfg, folder, trained.model, loaded.tokenizer, out, clock)
        del trained

    runs.extend(_vector_stages(cfg, data_dir, loaded, base, options, out, clock))
    return runs


def _merge_and_check(cfg: DemoConfig, adapter: Path, peft_model: Any, tokenizer: Any, out: Path, clock: _Clock) -> dict:
    """Merge the LoRA into a plain model folder and compare its logits with the adapter's on a few sentences."""
    import torch
    from transformers import AutoModelForCausalLM

    from peft_debias.loader.merge import merge_to_folder
    from peft_debias.models.placement import model_device, torch_dtype

    folder = out / "merged" / adapter.name
    merge_to_folder(cfg.causal_model, [str(adapter)], folder, device=cfg.device, dtype=cfg.dtype)
    device = model_device(peft_model)
    merged = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype(cfg.dtype)).to(device)
    batch = tokenizer(
        ["The nurse said that she was tired.", "My brother is an engineer."], return_tensors="pt", padding=True
    ).to(device)
    with torch.inference_mode():
        diff = (merged(**batch).logits - peft_model(**batch).logits).abs().max().item()
    clock.done("merge", f"{folder.relative_to(out)}: max |logit difference| vs the adapter {diff:.2e}")
    return {"folder": str(folder.relative_to(out)), "max_abs_logit_difference": diff}


def _vector_stages(
    cfg: DemoConfig, data_dir: Path, loaded: Any, base: dict, options: dict, out: Path, clock: _Clock
) -> list[dict]:
    """Train the biased copy on the select half of StereoSet, sweep lambda, keep the sweep (not the models)."""
    from peft_debias.eval.results import compare_results
    from peft_debias.train.biased import train_biased
    from peft_debias.vector.bias_vector import BiasVector
    from peft_debias.vector.sweep import SweepConfig, evaluate_with_suite, lambda_sweep, plot_sweep, sweep_table

    work = out / ".work"
    biased = train_biased(
        base=cfg.causal_model,
        axis=cfg.axis,
        output=str(work / "biased"),
        data_dir=str(data_dir),
        stereoset_split="select",
        method=cfg.biased_method,
        max_steps=cfg.biased_steps,
        lr=1e-3 if cfg.biased_method == "lora" else None,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        progress=cfg.progress,
        device=cfg.device,
        dtype=cfg.dtype,
    )
    if cfg.biased_method == "lora":  # the dense delta B A of the biased LoRA
        vector = BiasVector.from_adapter(str(work / "biased"), axis=cfg.axis)
    else:  # streamed from the two checkpoints
        vector = BiasVector.from_models(cfg.causal_model, str(work / "biased"), axis=cfg.axis)
    clock.done("biased model", f"{biased.sentences} stereotype sentences, {biased.steps} steps; {len(vector)} tensors")
    sweep = lambda_sweep(
        loaded.model,
        loaded.tokenizer,
        {cfg.axis: vector},
        evaluate_with_suite(**options),
        SweepConfig(lambdas=list(cfg.lambdas or []), ppl_threshold=cfg.ppl_threshold),
        baseline=base,
    )
    shutil.rmtree(work)
    (out / "sweep").mkdir()
    plot_sweep(sweep, out / "sweep" / "sweep.png")
    (out / "sweep" / "sweep.md").write_text(sweep_table(sweep) + "\n", encoding="utf-8")
    runs = []
    for lam in sweep["lambdas"]:
        results = dict(sweep["results"][f"{cfg.axis}@{lam:g}"])
        results["label"] = f"bias vector lambda {lam:g}"
        results["compare"] = compare_results(results, base)
        runs.append(
            {
                "name": f"vector@{lam:g}",
                "label": f"Bias Vector, lambda {lam:g}",
                "lambda": lam,
                "chosen": sweep["chosen"].get(cfg.axis) == lam,
                "results": _save(results, out, f"vector_{lam:g}"),
            }
        )
    chosen = sweep["chosen"].get(cfg.axis)
    clock.done("bias vector", f"lambdas {', '.join(f'{x:g}' for x in sweep['lambdas'])}; chosen {chosen}")
    return runs


def _encoder_stages(cfg: DemoConfig, data_dir: Path, novels: list[str], out: Path, clock: _Clock) -> dict:
    """SEAT on the sentence encoder before and after a counterfactual-objective LoRA with the token-level invariance
    (beta 3; for gender also first-name swaps: the settings of ``recipes/experiments/minilm-gender-seat-tokens.yaml``,
    chosen on held-out SEAT tests)."""
    from peft_debias.eval import evaluate_bias
    from peft_debias.models.loading import load_model

    options = {
        "benchmarks": "seat",
        "axes": cfg.axis,
        "data_dir": data_dir,
        "seat_tests": "axes",
        "seed": cfg.seed,
        "progress": cfg.progress,
    }
    loaded = load_model(cfg.encoder_model, "encoder", device=cfg.device, dtype=cfg.dtype)
    cfg = replace(cfg, dtype=loaded.placement["dtype"])
    base = evaluate_bias(loaded.model, loaded.tokenizer, label="encoder base", **options)
    folder = out / "adapters" / f"{cfg.axis}-encoder-counterfactual"
    objective = {"invariance": "tokens", "beta": 3.0, "names": 100 if cfg.axis == "gender" else 0}
    trained = _train(
        cfg, cfg.encoder_model, novels, folder, int(cfg.encoder_steps or 1),
        method="lora", objective="counterfactual", lr=1e-3, alpha=16, batch_size=16, **objective,
    )  # fmt: skip
    after = evaluate_bias(trained.model, loaded.tokenizer, label="encoder + counterfactual LoRA", **options)
    seat = {
        "model": cfg.encoder_model,
        "adapter": str(folder.relative_to(out)),
        "steps": cfg.encoder_steps,
        **objective,
        "placement": loaded.placement,
        "base": _save(base, out, "encoder_base"),
        "adapter_results": _save(after, out, "encoder_counterfactual"),
    }
    clock.done("encoder", f"SEAT {cfg.axis}: base {_short(base, cfg.axis)} -> adapter {_short(after, cfg.axis)}")
    return seat
