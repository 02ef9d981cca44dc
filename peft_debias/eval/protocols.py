"""Scoring protocols: which reference procedure a benchmark figure follows (``peft-debias eval --protocol``).

Published tables come from different code, and the code, not the metric's name, decides the number: a causal
CrowS-Pairs score on SmolLM2 is 54.58 under one procedure and 56.87 under another. A results file therefore
records its protocol, and only figures of the same protocol are compared (DESIGN section 4).

* ``default``: this package's definitions (DESIGN section 4). Causal LMs: mean per-token log-prob of the sentence
  after the tokenizer's BOS token (EOS if none), in one forward. Masked LMs: the tokens the two CrowS-Pairs
  sentences share; StereoSet's mean filler log-prob. SEAT with a seeded permutation test per test.
* ``bias-bench``: McGill-NLP/bias-bench's code (checked at commit 291426a). Causal LMs: the sentence as
  ``tokenizer.encode`` gives it (special tokens included), its first token scored from a separate forward on
  ``tokenizer.encode("<|endoftext|>")`` (the tokenizer's BOS when that string is not one token, and the result
  says so), the rest from a forward on the sentence alone; sentences compared by their mean log-prob (bias-bench's
  geometric-mean probability orders them the same). Masked LMs: CrowS-Pairs on the tokens that *differ*, scores
  rounded to 3 decimals, pairs with nothing to score skipped; StereoSet's mean filler probability. CrowS-Pairs'
  per-direction scores leave tied pairs out of their denominators, as bias-bench prints them. SEAT: sampled
  p-values from one ``numpy.random.RandomState(seed)`` shuffled through the tests in order, as ``SEATRunner``
  does (``all`` runs the tests in bias-bench's natural order under every protocol). StereoSet: SS and LMS
  macro-averaged over target terms (as under every protocol).
* ``lm-eval``: lm-evaluation-harness's ``crows_pairs`` task (0.4.x, ``output_type: multiple_choice`` with an
  empty context): the *summed* log-likelihood of each sentence after lm-eval's prefix token (BOS, else EOS; a
  sentence that starts with that token uses it as its own context), ``pct_stereotype`` and ``likelihood_diff``
  (mean absolute difference of the two sums). StereoSet is scored the same way (the package's lm-eval StereoSet
  task, :mod:`peft_debias.evaluate_modules.lm_eval_tasks`). Causal LMs only: lm-eval has no masked-LM scoring.

The registry is explicit; an unknown name lists the known ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from peft_debias.core.errors import DebiasError

ENDOFTEXT = "<|endoftext|>"  # bias-bench's unconditional start string (GPT-2's BOS/EOS)


@dataclass(frozen=True)
class Protocol:
    """How one protocol scores and counts; :data:`PROTOCOLS` holds the registered ones."""

    name: str
    summary: str
    benchmarks: tuple[str, ...]
    """The benchmarks the protocol defines (others are refused under it)."""
    causal_bos: str = "context"
    """``context``: ``[start] + sentence`` in one forward; ``separate``: first token from a start-only forward."""
    causal_start: str = "bos"
    """``bos``: the tokenizer's BOS (EOS if none); ``endoftext``: ``tokenizer.encode("<|endoftext|>")``."""
    causal_specials: bool = False
    """Encode causal sentences with the tokenizer's special tokens (bias-bench's ``tokenizer.encode(sentence)``)."""
    causal_total: str = "mean"
    """``mean`` per-token log-prob, or ``sum`` (lm-eval's log-likelihood)."""
    causal_reuse_start: bool = False
    """A sentence that starts with the start token uses it as its own context (lm-eval)."""
    masked: bool = True
    """Whether the protocol defines masked-LM scoring."""
    crows_mlm_tokens: str = "shared"
    """CrowS-Pairs masked LM: ``shared`` tokens (Nangia et al.) or bias-bench's ``diff`` tokens."""
    mlm_filler_mean: str = "logprob"
    """StereoSet masked LM: mean filler ``logprob`` or bias-bench's mean ``prob``."""
    mlm_strip_prefix: bool = True
    """StereoSet masked LM: strip the decoded subtoken prefix (bias-bench inserts it as decoded)."""
    direction_ties: bool = True
    """CrowS-Pairs per-direction scores count tied pairs (``False``: bias-bench leaves them out)."""
    seat_rng: str = "per-test"
    """``per-test``: a seeded generator per test; ``numpy-sequence``: one legacy RandomState through all tests."""

    def record(self) -> dict[str, Any]:
        """What a results file records about the protocol."""
        return {"name": self.name, "summary": self.summary}


_ALL = ("seat", "crows", "stereoset", "perplexity")
PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("default", "peft-debias's definitions (DESIGN section 4)", _ALL),
        Protocol(
            "bias-bench",
            "McGill-NLP/bias-bench's code (commit 291426a)",
            ("seat", "crows", "stereoset"),
            causal_bos="separate",
            causal_start="endoftext",
            causal_specials=True,
            crows_mlm_tokens="diff",
            mlm_filler_mean="prob",
            mlm_strip_prefix=False,
            direction_ties=False,
            seat_rng="numpy-sequence",
        ),
        Protocol(
            "lm-eval",
            "lm-evaluation-harness's crows_pairs task (summed log-likelihood, pct_stereotype, likelihood_diff)",
            ("crows", "stereoset"),
            causal_total="sum",
            causal_reuse_start=True,
            masked=False,
        ),
    )
}
# The fine-grained switches the default protocol lets a user change (EvalConfig / CLI flags of the same name).
OVERRIDES = {"causal_bos": ("context", "separate"), "crows_mlm_tokens": ("shared", "diff"),
             "mlm_filler_mean": ("logprob", "prob")}  # fmt: skip


def get_protocol(name: str | Protocol) -> Protocol:
    """The registered protocol ``name``; an unknown name lists the known ones."""
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise DebiasError(f"unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})", "choose a known protocol")
    return PROTOCOLS[name]


def resolve_protocol(name: str | Protocol, **overrides: str | None) -> Protocol:
    """``name``'s protocol with the given switches (:data:`OVERRIDES`; None = the protocol's own).

    Only ``default`` takes switches: another protocol fixes them, so a switch that disagrees is an error.
    """
    protocol = get_protocol(name)
    given = {k: v for k, v in overrides.items() if v is not None}
    for key, value in given.items():
        if key not in OVERRIDES:
            raise ValueError(f"{key} is not a protocol switch (known: {', '.join(OVERRIDES)})")
        if value not in OVERRIDES[key]:
            raise DebiasError(f"{key} {value!r} is unknown", f"use one of {', '.join(OVERRIDES[key])}")
        if protocol.name != "default" and getattr(protocol, key) != value:
            flag = "--" + key.replace("_", "-")
            raise DebiasError(
                f"{flag} {value} conflicts with --protocol {protocol.name}, which uses {getattr(protocol, key)}",
                f"drop {flag}, or use --protocol default",
            )
    return replace(protocol, **given) if given else protocol


def check_protocol_benchmarks(protocol: Protocol, names: list[str], *, explicit: bool) -> list[str]:
    """The benchmarks to run under ``protocol``: defaults are filtered to what it defines; an explicitly requested
    benchmark it does not define is an error."""
    undefined = [n for n in names if n not in protocol.benchmarks]
    if undefined and explicit:
        raise DebiasError(
            f"--protocol {protocol.name} defines no {', '.join(undefined)} "
            f"(it defines {', '.join(protocol.benchmarks)})",
            "drop those benchmarks, or run them under --protocol default",
        )
    return [n for n in names if n in protocol.benchmarks]


def natural_key(name: str) -> tuple[Any, ...]:
    """bias-bench's SEAT test order: the name split into text and integers (``sent-weat3`` < ``sent-weat10``)."""
    key: tuple[Any, ...] = ()
    end = 0
    for match in re.finditer(r"\d+", name):
        key += (name[end : match.start()], int(match.group(0)))
        end = match.end()
    return (*key, name[end:])


def check_masked(protocol: Protocol, benchmark: str) -> None:
    """A clear error when ``protocol`` has no masked-LM scoring (lm-eval scores causal LMs only)."""
    if not protocol.masked:
        raise DebiasError(
            f"--protocol {protocol.name} defines {benchmark} for causal LMs only, and this model is a masked LM",
            "use --protocol default or --protocol bias-bench for masked LMs",
        )
