"""Training step time: peft-debias's loop vs a plain hand-written peft + torch loop, side by side in one run.

Both train the same LoRA (same config, fresh from the same base) on the same rows in the same order with the same
batch size and sequence length; the reference tokenizes, runs ``model(**batch, labels=...)``, steps AdamW and a
linear schedule, nothing else. Runs alternate (reference, ours, reference, ours, ...) so machine load hits both.

    python bench/bench_train.py --model bundled:smollm2 --steps 10 --repeats 2 --threads 2

Prints seconds per step of each and the ratio ours / reference (target: within 5%). Never used as a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def reference_loop(model_name: str, rows: list[str], steps: int, batch_size: int, max_length: int, lr: float) -> float:
    """A plain peft + torch training loop; returns seconds per step."""
    from peft import LoraConfig, get_peft_model
    from transformers import get_scheduler

    from peft_debias.models.loading import load_model
    from peft_debias.models.methods import LORA_TARGETS

    loaded = load_model(model_name)
    model, tok = loaded.model, loaded.tokenizer
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS[model.config.model_type],
    )
    model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=steps)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    start = time.perf_counter()
    for step in range(steps):
        texts = rows[step * batch_size : (step + 1) * batch_size]
        ids = [[bos, *tok(t, add_special_tokens=False)["input_ids"][: max_length - 1]] for t in texts]
        width = max(map(len, ids))
        input_ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        labels = input_ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def ours(model_name: str, corpus: str, steps: int, batch_size: int, max_length: int, lr: float) -> float:
    from peft_debias.train.adapter import train_adapter

    with tempfile.TemporaryDirectory() as tmp:
        result = train_adapter(
            base=model_name,
            corpus=[corpus],
            output=str(Path(tmp) / "out"),
            method="lora",
            r=8,
            alpha=16,
            max_steps=steps,
            batch_size=batch_size,
            max_length=max_length,
            lr=lr,
            warmup_ratio=0.0,
            eval_fraction=0.0,
            eval_every=0,
            save_every=0,
            log_every=steps,
            progress=False,
        )
    return result.seconds_per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled:smollm2")
    parser.add_argument(
        "--corpus",
        default=os.path.join(os.environ.get("PEFT_DEBIAS_DATA", "../shared/data"), "wikitext2", "valid.tokens.txt"),
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from peft_debias.cda.dataset import CDAConfig, build_cda_dataset
    from peft_debias.train.data import RowStream, training_rows

    ds, _ = build_cda_dataset(args.corpus, CDAConfig(axis="gender", seed=0))
    pool = [r["text"] for r in training_rows(ds, "clm", True)]
    order = RowStream(len(pool), 0).take(0, args.steps * args.batch_size)  # the rows our loop sees, in its order
    rows = [pool[i] for i in order]
    ref_times, our_times = [], []
    for _ in range(args.repeats):
        ref_times.append(reference_loop(args.model, rows, args.steps, args.batch_size, args.max_length, 2e-4))
        our_times.append(ours(args.model, args.corpus, args.steps, args.batch_size, args.max_length, 2e-4))
    ref, our = statistics.median(ref_times), statistics.median(our_times)
    print(
        f"model {args.model}, {args.steps} steps x batch {args.batch_size}, max_length {args.max_length}, "
        f"{args.threads} threads, {args.repeats} alternating repeats"
    )
    print(f"reference (plain peft + torch): {ref:.3f} s/step  runs {[round(t, 3) for t in ref_times]}")
    print(f"peft-debias train_adapter:      {our:.3f} s/step  runs {[round(t, 3) for t in our_times]}")
    print(f"ratio ours / reference: {our / ref:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
