"""Downstream step of PEFTDebias on your own data: ``peft-debias downstream --task csv`` as a script.

    python recipes/downstream_classifier.py --model MODEL --adapter ADAPTER_DIR \\
        --train-file train.csv --test-file test.csv --output results/
    accelerate launch recipes/downstream_classifier.py ...          # same options, several processes
    python recipes/downstream_classifier.py --model bert-base-uncased --train-file LabHC/bias_in_bios ...  # online

Every option of ``peft-debias downstream`` is accepted (``--task`` defaults to ``csv`` here; ``--task winobias``
works too). The adapters (one per axis; none for a plain fine-tuning baseline) stay frozen while the base model and
a new classification head train. Data: CSV or JSONL files with ``text``, ``label`` and ``group`` columns (names
configurable), or a Hub dataset id (``LabHC/bias_in_bios``: ``hard_text``, ``profession``, ``gender`` 0/1 =
male/female). ``<output>/`` gets ``metrics.json`` (accuracy, macro F1, TPR-GAP with per-class gaps, FPRD over the
identity terms), ``predictions.jsonl`` and ``model/`` (reload it with ``peft_debias.load_downstream``).
"""

from __future__ import annotations

import sys

from peft_debias.cli.main import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """Run ``peft-debias downstream`` with ``--task csv`` unless another task is given."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--task" not in args and not any(a.startswith("--task=") for a in args):
        args = ["--task", "csv", *args]
    return cli_main(["downstream", *args])


if __name__ == "__main__":
    sys.exit(main())
