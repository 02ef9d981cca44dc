"""SEAT (May et al., NAACL 2019) as an ``evaluate`` measurement: a thin wrapper over ``peft_debias.eval.seat``."""

import datasets
import evaluate

from peft_debias.eval.handle import resolve_model
from peft_debias.eval.lm_scoring import mean_pooled_embeddings
from peft_debias.eval.seat import SETS, parse_seat_test, run_seat

_DESCRIPTION = """SEAT effect size and one-sided permutation p-value of one test (targ1/targ2 vs attr1/attr2),
with sentences encoded by mean-pooling a model's last hidden state (sent-bias / bias-bench definitions)."""
_CITATION = """@inproceedings{may2019measuring, title={On Measuring Social Biases in Sentence Encoders},
author={May, Chandler and Wang, Alex and Bordia, Shikha and Bowman, Samuel R. and Rudinger, Rachel},
booktitle={NAACL}, year={2019}}"""
_KWARGS_DESCRIPTION = """
Args:
    sentence: the test's sentences.
    group: for each sentence, its set: "targ1", "targ2", "attr1" or "attr2".
    model: model name / folder / bundled alias, a LoadedModel, or a model object (with tokenizer=).
    tokenizer: the tokenizer of a model object.
    n_samples: permutation samples (exact test when C(2n, n) <= n_samples); default 100000.
    seed: seed of the sampled permutation test; default 0.
Returns:
    {"effect_size": float, "p_value": float, "exact": bool}
"""


class Seat(evaluate.Measurement):
    def _info(self):
        return evaluate.MeasurementInfo(
            module_type="measurement",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"sentence": datasets.Value("string"), "group": datasets.Value("string")}),
        )

    def _compute(self, sentence, group, model=None, tokenizer=None, n_samples=100_000, seed=0, name="seat"):
        if model is None:
            raise ValueError("pass model= (a name, folder, bundled alias, LoadedModel or model object)")
        rows = list(zip(sentence, group, strict=True))
        sets = {key: {"category": key, "examples": [s for s, g in rows if g == key]} for key in SETS}
        test = parse_seat_test(sets, name, "evaluate input")
        handle = resolve_model(model, tokenizer)

        def encode(texts):
            return mean_pooled_embeddings(handle.model, handle.tokenizer, texts, progress=False)

        result = run_seat(encode, [test], axes=[], n_samples=n_samples, seed=seed, progress=False)["tests"][name]
        return {"effect_size": result["effect_size"], "p_value": result["p_value"], "exact": result["exact"]}
