"""Training objectives as a registry: ``mlm``, ``clm``, ``counterfactual`` and ``equalize``.

* ``mlm`` (PEFTDebias, encoders): 15% of tokens masked (80% ``[MASK]``, 10% random, 10% kept), optionally whole
  words; cross-entropy on the masked positions.
* ``clm`` (PEFTDebias, decoders): next-token cross-entropy, the first token conditioned on BOS.
* ``counterfactual`` (ours): each sentence is trained together with its CDA counterpart and their outputs are
  pulled together: for encoders and masked LMs the pooled sentence embeddings (loss ``1 - cos``), for causal LMs the
  next-token distributions at every position whose next token is not a swapped word (symmetric KL over the
  positions that difflib aligns between the two token sequences). The model's own LM loss on both sentences is the
  regulariser; a bare encoder without an LM head instead keeps its embedding of the original sentence close to the
  frozen base model's. ``loss = lm + beta * invariance``.

  Causal LMs choose the invariance term (``ObjectiveConfig.invariance``): ``distribution`` (the next-token KL
  above), ``likelihood`` (the squared difference of the two sentences' total log-likelihoods, i.e. counterfactual
  likelihood parity: the quantity CrowS-Pairs and StereoSet compare, which the KL term leaves free at the swapped
  words themselves) or ``both`` (their sum). Masked LMs only have ``distribution``. Bare encoders (sentence
  encoders) also have ``tokens``: the last hidden state of every token is pulled towards its counterpart in the swap
  (positions difflib matches one to one; a swapped span, e.g. "he" / "she" or a multi-piece name, by the mean of its
  pieces), and the regulariser keeps the original's unswapped tokens at the frozen base model's states. The swapped
  words themselves are free to meet in the middle, while the context anchors the space: the pooled ``distribution``
  term, by contrast, can be met by contracting all embeddings towards each other. Its forward passes run without
  dropout, so a no-swap control has nothing to learn (two dropout masks of one sentence would otherwise be pulled
  together: a training signal of its own).
  Causal LMs also choose the regulariser (``ObjectiveConfig.regulariser``): ``lm`` (the LM loss on both sentences,
  default) or ``base``: the KL divergence from the frozen base model's next-token distributions on the original
  sentence. With ``base`` the model keeps its own language model instead of adapting to the training text, so a
  no-swap control (each sentence paired with itself) has nothing to learn and stays at the base model: whatever the
  treatment changes comes from the swaps.

* ``equalize`` (template equalization, :mod:`peft_debias.train.equalize`): masked and causal LMs; each group's
  distribution over attribute words at a template's slot is pulled to the frozen model's mean over the groups.

Masking draws from a ``torch.Generator`` seeded per step, so a resumed run sees the same masks. Logits and hidden
states are right-aligned to the input (prompt tuning prepends virtual tokens), so every method shares one loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from peft_debias.core.align import positions, spans
from peft_debias.core.errors import DebiasError
from peft_debias.models.loading import ModelKind
from peft_debias.train.config import INVARIANCES, OBJECTIVES, REGULARISERS, ObjectiveConfig
from peft_debias.train.forward import reference_model, tokenize, without_dropout


def default_objective(kind: ModelKind) -> str:
    """The paper's objective for a model kind; bare encoders have no LM head, so they need ``counterfactual``."""
    return {ModelKind.MASKED_LM: "mlm", ModelKind.CAUSAL_LM: "clm", ModelKind.ENCODER: "counterfactual"}[kind]


def check_objective(name: str, kind: ModelKind, invariance: str = "distribution", regulariser: str = "lm") -> None:
    """Refuse unknown objectives, invariance terms and regularisers, and ones the model cannot train with."""
    if regulariser not in REGULARISERS:
        raise DebiasError(
            f"unknown regulariser {regulariser!r} (known: {', '.join(REGULARISERS)})", "pick a known regulariser"
        )
    if (invariance != "distribution" or regulariser != "lm") and name != "counterfactual":
        raise DebiasError(
            f"invariance {invariance!r} / regulariser {regulariser!r} apply to the counterfactual objective only",
            "use --objective counterfactual, or drop these options",
        )
    if regulariser != "lm" and kind is not ModelKind.CAUSAL_LM:
        raise DebiasError(
            f"regulariser {regulariser!r} needs a causal LM ({kind.value} models have their own)",
            "use --regulariser lm",
        )
    if invariance not in INVARIANCES:
        raise DebiasError(
            f"unknown invariance {invariance!r} (known: {', '.join(INVARIANCES)})", "pick a known invariance"
        )
    if invariance in ("likelihood", "both") and kind is not ModelKind.CAUSAL_LM:
        raise DebiasError(
            f"invariance {invariance!r} needs a causal LM ({kind.value} models compare hidden states)",
            "use --invariance distribution" + (" or tokens" if kind is ModelKind.ENCODER else ""),
        )
    if invariance == "tokens" and kind is not ModelKind.ENCODER:
        raise DebiasError(
            f"invariance 'tokens' needs a bare encoder (a sentence encoder), not a {kind.value} model",
            "use --invariance distribution" + (", likelihood or both" if kind is ModelKind.CAUSAL_LM else ""),
        )
    if name not in OBJECTIVES:
        raise DebiasError(f"unknown objective {name!r} (known: {', '.join(OBJECTIVES)})", "pick a known objective")
    allowed = {
        ModelKind.MASKED_LM: {"mlm", "counterfactual", "equalize"},
        ModelKind.CAUSAL_LM: {"clm", "counterfactual", "equalize"},
        ModelKind.ENCODER: {"counterfactual"},
    }[kind]
    if name not in allowed:
        raise DebiasError(
            f"objective {name!r} does not fit {'an' if kind.value[0] in 'aeiou' else 'a'} {kind.value} model",
            f"use --objective {' or '.join(sorted(allowed))}",
        )


def mask_tokens(batch: dict[str, torch.Tensor], tokenizer, cfg: ObjectiveConfig, gen: torch.Generator) -> None:
    """Add MLM ``labels`` and mask ``input_ids`` in place (80/10/10), whole words if configured."""
    ids = batch["input_ids"]
    special = batch.get("special_tokens_mask", torch.zeros_like(ids)).bool() | ~batch["attention_mask"].bool()
    if cfg.whole_word_mask and "word_ids" in batch:
        words = batch["word_ids"]
        pick = torch.rand(ids.shape, generator=gen) < cfg.mlm_probability
        # a word is masked when its first sub-token is picked
        first = torch.ones_like(words, dtype=torch.bool)
        first[:, 1:] = words[:, 1:] != words[:, :-1]
        chosen_words = torch.where(pick & first & ~special, words, torch.full_like(words, -2))
        masked = (words[:, :, None] == chosen_words[:, None, :]).any(-1) & (words >= 0)
    else:
        masked = torch.rand(ids.shape, generator=gen) < cfg.mlm_probability
    masked &= ~special
    for row in range(ids.shape[0]):  # every sequence contributes at least one masked token
        if not masked[row].any():
            candidates = (~special[row]).nonzero().flatten()
            if len(candidates):
                masked[row, candidates[torch.randint(len(candidates), (1,), generator=gen)]] = True
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=gen)
    ids = ids.clone()
    ids[masked & (roll < 0.8)] = tokenizer.mask_token_id
    random_pos = masked & (roll >= 0.8) & (roll < 0.9)
    ids[random_pos] = torch.randint(len(tokenizer), ids.shape, generator=gen)[random_pos]
    batch["input_ids"], batch["labels"] = ids, labels


def collate(
    rows: Sequence[dict[str, Any]],
    objective: str,
    tokenizer,
    kind: ModelKind,
    cfg: ObjectiveConfig,
    gen: torch.Generator,
) -> dict[str, Any]:
    """Turn rows (``text``, and ``counterfactual`` for the counterfactual objective; template rows for
    ``equalize``) into model inputs."""
    if objective == "equalize":
        from peft_debias.train.equalize import collate_equalize

        return collate_equalize(rows, tokenizer, kind, cfg.max_length)
    if objective == "counterfactual":
        out = {
            "orig": tokenize(tokenizer, [r["text"] for r in rows], kind, cfg.max_length),
            "cf": tokenize(tokenizer, [r["counterfactual"] for r in rows], kind, cfg.max_length),
        }
        if kind is ModelKind.MASKED_LM:
            for side in ("orig", "cf"):
                out[f"{side}_masked"] = {k: v.clone() for k, v in out[side].items()}
                mask_tokens(out[f"{side}_masked"], tokenizer, cfg, gen)
        return out
    batch = tokenize(tokenizer, [r["text"] for r in rows], kind, cfg.max_length)
    if objective == "mlm":
        mask_tokens(batch, tokenizer, cfg, gen)
    return batch


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _mlm_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(**_inputs(batch)).logits[:, -batch["input_ids"].shape[1] :]
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100)


def _clm_logits_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, the mean next-token loss and each sequence's total log-likelihood (BOS excluded)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = model(**_inputs(batch)).logits[:, -ids.shape[1] :]
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))[:, 1:]
    nll = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="none"
    ).view(labels.shape)
    counted = (labels != -100).sum().clamp(min=1)
    return logits, nll.sum() / counted, -nll.sum(1)


def _last_hidden(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**_inputs(batch), output_hidden_states=True)
    return out.hidden_states[-1][:, -batch["input_ids"].shape[1] :]


def _pooled(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    hidden = _last_hidden(model, batch)
    weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def token_alignment(
    a: torch.Tensor, la: int, b: torch.Tensor, lb: int
) -> tuple[list[tuple[int, int]], list[tuple[range, range]]]:
    """How two token sequences (lengths ``la``, ``lb``) correspond: position pairs in the blocks difflib matches,
    and the spans it replaces (the swapped words, e.g. "he" -> "she", or "Jo hn" -> "Mary"). Spans inserted on one
    side only have no counterpart and are left out."""
    parts = spans(a[:la].tolist(), b[:lb].tolist(), autojunk=False)
    left, right = positions(parts, equal=True)
    same = list(zip(left, right, strict=True))
    swapped = [(in_a, in_b) for tag, in_a, in_b in parts if tag == "replace"]
    return same, swapped


def _aligned_positions(a: torch.Tensor, la: int, b: torch.Tensor, lb: int) -> tuple[list[int], list[int]]:
    """Positions (i in a, j in b) whose NEXT tokens lie in a block that difflib matches between a and b."""
    pairs = [(i - 1, j - 1) for i, j in token_alignment(a, la, b, lb)[0] if i >= 1 and j >= 1]
    return [i for i, _ in pairs], [j for _, j in pairs]


def _next_token_divergence(logits_a: torch.Tensor, batch_a, logits_b: torch.Tensor, batch_b) -> torch.Tensor:
    terms = []
    len_a, len_b = batch_a["attention_mask"].sum(1), batch_b["attention_mask"].sum(1)
    for row in range(logits_a.shape[0]):
        i, j = _aligned_positions(
            batch_a["input_ids"][row], int(len_a[row]), batch_b["input_ids"][row], int(len_b[row])
        )
        if not i:
            continue
        pa = F.log_softmax(logits_a[row, i].float(), -1)
        pb = F.log_softmax(logits_b[row, j].float(), -1)
        sym_kl = (pa.exp() * (pa - pb)).sum(-1) + (pb.exp() * (pb - pa)).sum(-1)
        terms.append(0.5 * sym_kl.mean())
    return torch.stack(terms).mean() if terms else logits_a.sum() * 0.0


def _kl_to_base(model, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """KL(base || model) of the next-token distributions, averaged over the real positions of ``batch``."""
    with torch.no_grad(), reference_model(model) as ref:
        ref_logits = ref(**_inputs(batch)).logits[:, -batch["input_ids"].shape[1] :]
    log_p = F.log_softmax(logits.float(), -1)
    log_q = F.log_softmax(ref_logits.float(), -1)
    per_position = (log_q.exp() * (log_q - log_p)).sum(-1)
    mask = batch["attention_mask"].to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


def _token_invariance(model, orig, cf) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``tokens`` invariance of a bare encoder and its regulariser (see the module docstring), each a mean over
    the batch's rows of ``1 - cos`` between hidden states."""
    with without_dropout(model):
        h_o = _last_hidden(model, orig).float()
        h_c = h_o if _same_inputs(orig, cf) else _last_hidden(model, cf).float()
        with torch.no_grad(), reference_model(model) as ref:
            base = _last_hidden(ref, orig).float()
    len_o, len_c = orig["attention_mask"].sum(1), cf["attention_mask"].sum(1)
    zero = h_o.sum() * 0.0
    invariance, regulariser = [], []
    for row in range(h_o.shape[0]):
        same, swapped = token_alignment(orig["input_ids"][row], int(len_o[row]), cf["input_ids"][row], int(len_c[row]))
        if not same and not swapped:
            continue  # nothing corresponds (possible without special tokens): no term for this row
        i = [p for p, _ in same]
        j = [q for _, q in same]
        term, anchor = zero, zero
        if same:
            term = (1 - F.cosine_similarity(h_o[row, i], h_c[row, j], dim=-1)).mean()
            anchor = (1 - F.cosine_similarity(h_o[row, i], base[row, i], dim=-1)).mean()
        if swapped:
            span_o = torch.stack([h_o[row, list(s)].mean(0) for s, _ in swapped])
            span_c = torch.stack([h_c[row, list(t)].mean(0) for _, t in swapped])
            term = term + (1 - F.cosine_similarity(span_o, span_c, dim=-1)).mean()
        invariance.append(term)
        regulariser.append(anchor)
    if not invariance:
        return zero, zero
    return torch.stack(invariance).mean(), torch.stack(regulariser).mean()


def _same_inputs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a["input_ids"].shape == b["input_ids"].shape and bool(torch.equal(a["input_ids"], b["input_ids"]))


def _dropout_active(model) -> bool:
    if not model.training:
        return False
    config = getattr(getattr(model, "module", model), "config", None)
    if any(getattr(config, name, 0) or 0 for name in ("attention_dropout", "attn_pdrop")):
        return True
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def compute_loss(
    model, batch: dict[str, Any], objective: str, kind: ModelKind, cfg: ObjectiveConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective's loss on a collated batch, plus its parts for logging."""
    if objective == "mlm":
        loss = _mlm_loss(model, batch)
        return loss, {"lm": float(loss.detach())}
    if objective == "clm":
        loss = _clm_logits_loss(model, batch)[1]
        return loss, {"lm": float(loss.detach())}
    if objective == "equalize":
        from peft_debias.train.equalize import equalize_loss

        return equalize_loss(model, batch)
    orig, cf = batch["orig"], batch["cf"]
    if kind is ModelKind.CAUSAL_LM:
        logits_o, lm_o, seq_o = _clm_logits_loss(model, orig)
        # a no-swap control pairs each sentence with itself: without dropout one forward pass gives the same loss
        # and gradient as two
        if _same_inputs(orig, cf) and not _dropout_active(model):
            logits_c, lm_c, seq_c = logits_o, lm_o, seq_o
        else:
            logits_c, lm_c, seq_c = _clm_logits_loss(model, cf)
        lm = (lm_o + lm_c) / 2 if cfg.regulariser == "lm" else _kl_to_base(model, orig, logits_o)
        invariance = logits_o.sum() * 0.0
        if cfg.invariance in ("distribution", "both"):
            invariance = invariance + _next_token_divergence(logits_o, orig, logits_c, cf)
        if cfg.invariance in ("likelihood", "both"):
            invariance = invariance + ((seq_o - seq_c) ** 2).mean()
    elif cfg.invariance == "tokens":
        invariance, lm = _token_invariance(model, orig, cf)
    else:
        emb_o, emb_c = _pooled(model, orig), _pooled(model, cf)
        invariance = (1 - F.cosine_similarity(emb_o.float(), emb_c.float(), dim=-1)).mean()
        if kind is ModelKind.MASKED_LM:
            lm = (_mlm_loss(model, batch["orig_masked"]) + _mlm_loss(model, batch["cf_masked"])) / 2
        else:
            with torch.no_grad(), reference_model(model) as ref:
                target = _pooled(ref, orig)
            lm = (1 - F.cosine_similarity(emb_o.float(), target.float(), dim=-1)).mean()
    loss = lm + cfg.beta * invariance
    return loss, {"lm": float(lm.detach()), "invariance": float(invariance.detach())}
