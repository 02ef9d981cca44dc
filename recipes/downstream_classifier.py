"""Downstream step of PEFTDebias: fine-tune a sequence classifier with frozen debiasing adapters, report fairness.

    python recipes/downstream_classifier.py --base MODEL --adapter ADAPTER_DIR \\
        --data train.csv --eval-data test.csv --output results/
    accelerate launch recipes/downstream_classifier.py ...          # same options, several processes

The adapters (one per axis; none for a plain fine-tuning baseline) are loaded with
``load_debias_adapter(mode="freeze")``: they stay frozen while the base model and the new classification head train.
Data: CSV or JSONL files with ``text``, ``label`` and ``group`` columns (names configurable), or a Hub dataset id
(``LabHC/bias_in_bios``: columns ``hard_text``, ``profession``, ``gender`` 0/1 = male/female).

``<output>/metrics.json`` (written atomically with ``predictions.jsonl``) holds accuracy, macro F1, TPR-GAP (RMS,
with per-class gaps) and FPRD over identity terms (DESIGN.md section 4; :mod:`peft_debias.eval.fairness`), plus whether
the adapters came out of training bit-identical.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

PROG = "downstream_classifier"
BIAS_IN_BIOS = {"text": "hard_text", "label": "profession", "group": "gender", "groups": {0: "male", 1: "female"}}
logger = logging.getLogger(PROG)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="base model: Hub id, local folder or bundled alias")
    p.add_argument("--adapter", action="append", default=[], help="debiasing adapter folder or repo (repeatable)")
    p.add_argument("--data", required=True, help="training CSV/JSONL, or a Hub dataset id")
    p.add_argument("--eval-data", help="evaluation CSV/JSONL (default for a Hub dataset: its --eval-split)")
    p.add_argument("--output", required=True, help="output folder for metrics.json and predictions.jsonl")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--group-column", default="group")
    p.add_argument("--groups", default="male,female", help="the two groups compared by TPR-GAP")
    p.add_argument("--axis", default="gender", help="axis whose words are the default FPRD identity terms")
    p.add_argument("--identity-terms", help="comma-separated FPRD identity terms (default: the axis words)")
    p.add_argument("--positive-label", help="FPRD positive label (default: 1 when the labels are 0/1)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-split", default="test")
    p.add_argument("--max-train-rows", type=int)
    p.add_argument("--max-eval-rows", type=int)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, help="optimizer steps (wins over --epochs)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--freeze-layer-norm", action="store_true", help="also freeze LayerNorms (the paper's code)")
    p.add_argument("--allow-base-mismatch", action="store_true")
    p.add_argument("--allow-pickle", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="keep the libraries' warnings")
    return p.parse_args(argv)


def _read_file(path: Path) -> list[dict[str, Any]]:
    from peft_debias.core.errors import DebiasError, one_line

    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
        if path.suffix.lower() in (".jsonl", ".json"):
            text = path.read_text(encoding="utf-8")
            return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise DebiasError(f"cannot read {path} ({one_line(err, 120)})", "pass a UTF-8 CSV or JSONL file") from err
    raise DebiasError(f"{path} is neither .csv nor .jsonl", "convert it to CSV or JSONL")


def load_rows(source: str, split: str, args: argparse.Namespace, limit: int | None) -> list[dict[str, Any]]:
    """Rows with ``text``, ``label``, ``group`` from a file or a Hub dataset (one-line errors)."""
    from peft_debias.core.errors import DebiasError, one_line

    columns = {"text": args.text_column, "label": args.label_column, "group": args.group_column}
    group_names: dict[Any, str] = {}
    if Path(source).exists():
        raw = _read_file(Path(source))
    else:
        import datasets

        if source.rstrip("/").endswith("bias_in_bios"):
            columns = {k: BIAS_IN_BIOS[k] for k in columns}
            group_names = BIAS_IN_BIOS["groups"]
        try:
            raw = datasets.load_dataset(source, split=split)
        except Exception as err:
            raise DebiasError(
                f"cannot load {source} split {split!r} ({one_line(err, 160)})",
                "pass local CSV/JSONL files, or go online / fill the datasets cache first",
            ) from err
        if limit:
            raw = raw.select(range(min(limit, len(raw))))
        raw = raw.to_list()
    rows = []
    for i, row in enumerate(raw[:limit] if limit else raw):
        missing = [c for c in columns.values() if c not in row]
        if missing:
            raise DebiasError(f"{source} row {i} lacks column(s) {missing}", "pass --text/--label/--group-column")
        group = row[columns["group"]]
        rows.append(
            {"text": str(row[columns["text"]]), "label": row[columns["label"]], "group": group_names.get(group, group)}
        )
    if not rows:
        raise DebiasError(f"{source} has no rows", "pass a non-empty dataset")
    return rows


def _normalise_labels(*row_sets: list[dict[str, Any]]) -> list[Any]:
    """Labels as ints when every label looks like one (CSV gives strings); returns the sorted label list."""
    values = [r["label"] for rows in row_sets for r in rows]
    if all(isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()) for v in values):
        for rows in row_sets:
            for r in rows:
                r["label"] = int(r["label"])
    return sorted({r["label"] for rows in row_sets for r in rows}, key=str)


def _digest(named: list[tuple[str, Any]]) -> str:
    digest = hashlib.sha256()
    for name, param in named:
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _model(args: argparse.Namespace, num_labels: int):
    from transformers import AutoModelForSequenceClassification

    from peft_debias.core.errors import DebiasError, one_line
    from peft_debias.models.loading import bundled_model_path, load_tokenizer

    path = str(bundled_model_path(args.base)) if args.base.startswith("bundled:") else args.base
    tokenizer = load_tokenizer(args.base)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, use_safetensors=None if args.allow_pickle else True
        )
    except Exception as err:
        raise DebiasError(f"cannot build a classifier from {args.base} ({one_line(err, 160)})", "check --base") from err
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def train_and_evaluate(args: argparse.Namespace) -> dict[str, Any] | None:
    """Fine-tune, predict on the evaluation rows and (main process) write the outputs; returns the metrics."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from peft_debias.cda.axes import get_axis
    from peft_debias.core.atomic import atomic_output, check_destination
    from peft_debias.core.errors import DebiasError
    from peft_debias.core.jsonio import write_json
    from peft_debias.core.provenance import versions
    from peft_debias.eval import fairness
    from peft_debias.loader.attach import adapter_parameters, load_debias_adapter

    accelerator = Accelerator()
    check_destination(args.output, overwrite=args.overwrite)
    groups = tuple(g.strip() for g in args.groups.split(","))
    if len(groups) != 2:
        raise DebiasError(f"--groups {args.groups!r} does not name two groups", "pass e.g. --groups male,female")
    set_seed(args.seed)
    train_rows = load_rows(args.data, args.train_split, args, args.max_train_rows)
    eval_rows = load_rows(args.eval_data or args.data, args.eval_split, args, args.max_eval_rows)
    for name in groups:  # fail before training, on every process
        if not any(r["group"] == name for r in eval_rows):
            seen = ", ".join(sorted({str(r["group"]) for r in eval_rows})[:10])
            raise DebiasError(f"no evaluation row of group {name!r} (groups: {seen})", "pass matching --groups")
    labels = _normalise_labels(train_rows, eval_rows)
    label_id = {label: i for i, label in enumerate(labels)}
    model, tokenizer = _model(args, len(labels))
    if args.adapter:
        model = load_debias_adapter(
            model,
            args.adapter,
            mode="freeze",
            freeze_layer_norm=args.freeze_layer_norm,
            allow_base_mismatch=args.allow_base_mismatch,
            allow_pickle=args.allow_pickle,
        )
    adapter_before = _digest(adapter_parameters(model)) if args.adapter else None

    def collate(batch: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        enc = tokenizer(
            [r["text"] for _, r in batch],
            padding=True,
            truncation=True,
            max_length=args.max_length,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        enc["labels"] = torch.tensor([label_id[r["label"]] for _, r in batch])
        enc["idx"] = torch.tensor([i for i, _ in batch])
        return enc

    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        list(enumerate(train_rows)), batch_size=args.batch_size, shuffle=True, collate_fn=collate, generator=generator
    )
    eval_loader = DataLoader(list(enumerate(eval_rows)), batch_size=args.batch_size, collate_fn=collate)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = -(-len(train_rows) // (args.batch_size * accelerator.num_processes))
    total = args.max_steps or max(1, int(args.epochs * steps_per_epoch))
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(0.06 * total), num_training_steps=total)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)

    def forward(batch: dict[str, Any]) -> Any:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    model.train()
    step, losses = 0, []
    while step < total:
        for batch in train_loader:
            loss = torch.nn.functional.cross_entropy(forward(batch), batch["labels"])
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            if step >= total:
                break
        logger.info("step %d/%d, loss %.4f", step, total, sum(losses[-20:]) / len(losses[-20:]))
    model.eval()
    predicted: dict[int, int] = {}
    with torch.no_grad():
        for batch in eval_loader:
            pred = forward(batch).argmax(-1)
            idx, pred = accelerator.gather_for_metrics((batch["idx"], pred))
            predicted.update(zip(idx.tolist(), pred.tolist(), strict=True))
    unwrapped = accelerator.unwrap_model(model)
    adapter_after = _digest(adapter_parameters(unwrapped)) if args.adapter else None
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    if len(predicted) != len(eval_rows):
        raise RuntimeError(f"{len(predicted)} predictions for {len(eval_rows)} evaluation rows")
    y_true = [r["label"] for r in eval_rows]
    y_pred = [labels[predicted[i]] for i in range(len(eval_rows))]
    group_of = [r["group"] for r in eval_rows]
    texts = [r["text"] for r in eval_rows]
    terms = [t.strip() for t in args.identity_terms.split(",")] if args.identity_terms else get_axis(args.axis).terms
    positive = args.positive_label
    if positive is None and set(labels) == {0, 1}:
        positive = 1
    elif positive is not None and isinstance(labels[0], int):
        positive = int(positive)
    metrics: dict[str, Any] = {
        "accuracy": fairness.accuracy(y_true, y_pred),
        "macro_f1": fairness.macro_f1(y_true, y_pred),
    }
    gaps = fairness.tpr_gaps(y_true, y_pred, group_of, groups)
    metrics["tpr_gap_rms"] = fairness.tpr_gap_rms(y_true, y_pred, group_of, groups)
    metrics["tpr_gaps"] = {str(k): v for k, v in gaps.items()}
    if positive is None:
        metrics["fprd"], metrics["fprd_note"] = None, "labels are not 0/1: pass --positive-label"
    else:
        try:
            per_term = fairness.fprd_per_term(y_true, y_pred, texts, terms, positive)
            metrics["fprd"] = float(sum(abs(v) for v in per_term.values()))
            metrics["fprd_terms"] = per_term
        except DebiasError as err:
            metrics["fprd"], metrics["fprd_note"] = None, str(err)
    result = {
        "metrics": metrics,
        "train": {
            "steps": total,
            "final_loss": losses[-1] if losses else None,
            "world_size": accelerator.num_processes,
        },
        "data": {"train_rows": len(train_rows), "eval_rows": len(eval_rows), "labels": labels, "groups": groups},
        "adapters": args.adapter,
        "adapters_unchanged": None if adapter_before is None else adapter_before == adapter_after,
        "args": vars(args),
        "versions": versions(),
    }
    with atomic_output(args.output, overwrite=args.overwrite, directory=True) as tmp:
        write_json(tmp / "metrics.json", result)
        with open(tmp / "predictions.jsonl", "w", encoding="utf-8") as fh:
            for row, pred in zip(eval_rows, y_pred, strict=True):
                fh.write(json.dumps({"label": row["label"], "prediction": pred, "group": row["group"]}) + "\n")
    accelerator.wait_for_everyone()
    print(
        f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
        f"TPR-GAP {metrics['tpr_gap_rms']:.2f}, FPRD {metrics['fprd']} -> {args.output}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    from peft_debias.core.errors import DebiasError

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # the new head's "newly initialized" report and library deprecation notices
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # retry notices before a one-line error
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    try:
        train_and_evaluate(args)
    except DebiasError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
