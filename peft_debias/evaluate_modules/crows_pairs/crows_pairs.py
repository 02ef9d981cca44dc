"""CrowS-Pairs (Nangia et al., EMNLP 2020) as an ``evaluate`` measurement: a thin wrapper over
``peft_debias.eval.crows``."""

import datasets
import evaluate

from peft_debias.eval.crows import CrowsPair, causal_pair_scores, crows_axis_result, masked_pair_scores
from peft_debias.eval.handle import resolve_model
from peft_debias.models.loading import ModelKind

_DESCRIPTION = """CrowS-Pairs stereotype score: 100 x the fraction of pairs whose more-stereotypical sentence the
model scores higher (masked LM: shared tokens masked one at a time; causal LM: mean token log-prob), with a
95% bootstrap interval. Ideal: 50."""
_CITATION = """@inproceedings{nangia2020crows, title={CrowS-Pairs: A Challenge Dataset for Measuring Social Biases
in Masked Language Models}, author={Nangia, Nikita and Vania, Clara and Bhalerao, Rasika and Bowman, Samuel R.},
booktitle={EMNLP}, year={2020}}"""
_KWARGS_DESCRIPTION = """
Args:
    sent_more: the more stereotypical sentence of each pair.
    sent_less: the less stereotypical sentence of each pair.
    model: model name / folder / bundled alias, a LoadedModel, or a model object (with tokenizer=, kind=).
    tokenizer, kind: for a model object ("masked_lm" or "causal_lm"; detected if omitted).
    n_bootstrap: bootstrap resamples for the interval; default 10000.
    seed: bootstrap seed; default 0.
    batch_size: sentences per forward; default 32.
    mlm_tokens: masked LMs: "shared" tokens (default) or bias-bench's "diff" tokens (then scores are compared at
        3 decimals; pairs with a side without differing tokens count as ties here).
Returns:
    {"stereotype_score": float, "ci95": [low, high], "n": int}
"""


class CrowsPairs(evaluate.Measurement):
    def _info(self):
        return evaluate.MeasurementInfo(
            module_type="measurement",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"sent_more": datasets.Value("string"), "sent_less": datasets.Value("string")}),
        )

    def _compute(
        self,
        sent_more,
        sent_less,
        model=None,
        tokenizer=None,
        kind=None,
        n_bootstrap=10_000,
        seed=0,
        batch_size=32,
        mlm_tokens="shared",
    ):
        if model is None:
            raise ValueError("pass model= (a name, folder, bundled alias, LoadedModel or model object)")
        handle = resolve_model(model, tokenizer, kind=kind)
        texts = zip(sent_more, sent_less, strict=True)
        pairs = [CrowsPair(str(i), more, less, "stereo", "") for i, (more, less) in enumerate(texts)]
        if handle.kind is ModelKind.MASKED_LM:
            scores = masked_pair_scores(
                handle.model, handle.tokenizer, pairs, tokens=mlm_tokens, batch_size=2 * batch_size, progress=False
            )
        elif handle.kind is ModelKind.CAUSAL_LM:
            scores = causal_pair_scores(handle.model, handle.tokenizer, pairs, batch_size=batch_size, progress=False)
        else:
            raise ValueError("CrowS-Pairs needs a masked-LM or causal-LM head; this model is a bare encoder")
        decimals = 3 if handle.kind is ModelKind.MASKED_LM and mlm_tokens == "diff" else None
        figures, _ = crows_axis_result(
            pairs, scores, n_bootstrap=n_bootstrap, seed=seed, axis="evaluate", decimals=decimals
        )
        return {"stereotype_score": figures["stereotype_score"], "ci95": figures["ci95"], "n": figures["n"]}
