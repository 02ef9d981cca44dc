"""StereoSet intrasentence (Nadeem et al., ACL 2021) as an ``evaluate`` measurement: a thin wrapper over
``peft_debias.eval.stereoset``."""

import datasets
import evaluate
import numpy as np

from peft_debias.eval.handle import resolve_model
from peft_debias.eval.stats import rng_for
from peft_debias.eval.stereoset import (
    StereoSetItem,
    causal_item_scores,
    masked_item_scores,
    stereoset_bootstrap,
    stereoset_metrics,
)
from peft_debias.models.loading import ModelKind

_DESCRIPTION = """StereoSet intrasentence SS, LMS and ICAT, counted per target term and macro-averaged over terms
(StereoSet / bias-bench evaluation), with 95% bootstrap intervals. Ideal: SS 50, LMS 100, ICAT 100."""
_CITATION = """@inproceedings{nadeem2021stereoset, title={StereoSet: Measuring stereotypical bias in pretrained
language models}, author={Nadeem, Moin and Bethke, Anna and Reddy, Siva}, booktitle={ACL}, year={2021}}"""
_KWARGS_DESCRIPTION = """
Args:
    target: each item's target term.
    context: each item's context, with the word BLANK.
    stereotype, anti_stereotype, unrelated: each item's three filled sentences.
    model: model name / folder / bundled alias, a LoadedModel, or a model object (with tokenizer=, kind=).
    tokenizer, kind: for a model object ("masked_lm" or "causal_lm"; detected if omitted).
    n_bootstrap: bootstrap resamples for the intervals; default 10000.
    seed: bootstrap seed; default 0.
Returns:
    {"ss": float, "lms": float, "icat": float, "n": int, "n_targets": int, "ci95": {"ss", "lms", "icat"}}
"""


class Stereoset(evaluate.Measurement):
    def _info(self):
        return evaluate.MeasurementInfo(
            module_type="measurement",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "target": datasets.Value("string"),
                    "context": datasets.Value("string"),
                    "stereotype": datasets.Value("string"),
                    "anti_stereotype": datasets.Value("string"),
                    "unrelated": datasets.Value("string"),
                }
            ),
        )

    def _compute(
        self,
        target,
        context,
        stereotype,
        anti_stereotype,
        unrelated,
        model=None,
        tokenizer=None,
        kind=None,
        n_bootstrap=10_000,
        seed=0,
        batch_size=32,
    ):
        if model is None:
            raise ValueError("pass model= (a name, folder, bundled alias, LoadedModel or model object)")
        handle = resolve_model(model, tokenizer, kind=kind)
        rows = zip(target, context, stereotype, anti_stereotype, unrelated, strict=True)
        items = [StereoSetItem(str(i), t, "", c, (s, a, u)) for i, (t, c, s, a, u) in enumerate(rows)]
        if handle.kind is ModelKind.MASKED_LM:
            scores = masked_item_scores(
                handle.model, handle.tokenizer, items, batch_size=2 * batch_size, progress=False
            )
        elif handle.kind is ModelKind.CAUSAL_LM:
            scores = causal_item_scores(handle.model, handle.tokenizer, items, batch_size=batch_size, progress=False)
        else:
            raise ValueError("StereoSet needs a masked-LM or causal-LM head; this model is a bare encoder")
        figures = stereoset_metrics(items, np.asarray(scores))
        figures["ci95"] = stereoset_bootstrap(items, scores, n_bootstrap, rng_for(seed, "stereoset", "evaluate"))
        return figures
