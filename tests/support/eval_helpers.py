"""Shared pieces of the evaluation-suite tests (tests/test_eval_*.py): a small data folder cut from the shared
data, one torch thread, and hand-made per-sentence reference scores.

The autouse fixture is imported into each test module (``from support.eval_helpers import single_thread``); modules that
need the small data folder define a module-scoped fixture over :func:`build_small_data` (in a temporary folder,
never inside the repository).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

SEAT_KEEP = 8  # examples kept per set in the trimmed sentence-level SEAT tests
CROWS_KEEP = {"gender": 10, "race-color": 8, "religion": 6}
STEREOSET_KEEP = {"gender": 8, "race": 6, "religion": 5}


@pytest.fixture(autouse=True)
def single_thread():
    """One torch thread: on a shared 2-core box two threads can be 100x slower for tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_small_data(data_dir: Path, dest: Path) -> Path:
    """A data folder laid out like shared/data with a few items per benchmark (cut from the real files)."""
    (dest / "seat").mkdir(parents=True)
    for name in ("weat6", "weat7"):  # small word-level tests, unchanged
        (dest / "seat" / f"{name}.jsonl").write_bytes((data_dir / "seat" / f"{name}.jsonl").read_bytes())
    for name in ("sent-weat6", "sent-weat7", "sent-religion1"):  # axis tests, trimmed to SEAT_KEEP per set
        test = json.loads((data_dir / "seat" / f"{name}.jsonl").read_text())
        for part in test.values():
            part["examples"] = part["examples"][:SEAT_KEEP]
        (dest / "seat" / f"{name}.jsonl").write_text(json.dumps(test, indent=2))
    (dest / "crows_pairs").mkdir()
    with open(data_dir / "crows_pairs" / "crows_pairs_anonymized.csv", newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        kept, counts = [], dict.fromkeys(CROWS_KEEP, 0)
        for row in reader:
            bias = row[header.index("bias_type")]
            if bias in counts and counts[bias] < CROWS_KEEP[bias]:
                counts[bias] += 1
                kept.append(row)
    with open(dest / "crows_pairs" / "crows_pairs_anonymized.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(kept)
    (dest / "stereoset").mkdir()
    lines, counts = [], dict.fromkeys(STEREOSET_KEEP, 0)
    for line in (data_dir / "stereoset" / "stereoset_dev_flat.jsonl").read_text().splitlines():
        row = json.loads(line)
        bias = row["bias_type"]
        if row["type"] == "intrasentence" and bias in counts and counts[bias] < STEREOSET_KEEP[bias]:
            counts[bias] += 1
            lines.append(line)
    (dest / "stereoset" / "stereoset_dev_flat.jsonl").write_text("\n".join(lines) + "\n")
    (dest / "wikitext2").mkdir()
    text = (data_dir / "wikitext2" / "wiki.test.raw").read_bytes()[:6000]
    (dest / "wikitext2" / "wiki.test.raw").write_bytes(text[: text.rfind(b"\n") + 1])
    return dest


@torch.no_grad()
def manual_masked_logprob(model, ids: list[int], position: int, mask_id: int, offset: int = 0) -> float:
    """log p(ids[position]) with that one position masked: one unbatched forward (logits offset for prompts)."""
    masked = list(ids)
    masked[position] = mask_id
    tensor = torch.tensor([masked])
    logits = model(input_ids=tensor, attention_mask=torch.ones_like(tensor)).logits[0]
    return torch.log_softmax(logits[position + offset], dim=-1)[ids[position]].item()


@torch.no_grad()
def manual_causal_mean(model, tokenizer, text: str) -> float:
    """Mean log-prob of the text's tokens, BOS (else EOS) in context: one unbatched forward."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids = [start, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    offset = logits.shape[0] - len(ids)
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[offset + i - 1, ids[i]].item() for i in range(1, len(ids))) / (len(ids) - 1)
