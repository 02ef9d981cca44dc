"""``evaluate`` measurement modules for SEAT, CrowS-Pairs and StereoSet, shipped with the package.

Thin wrappers over :mod:`peft_debias.eval` (same functions, same numbers), loadable offline::

    import evaluate
    from peft_debias.evaluate_modules import module_path

    seat = evaluate.load(module_path("seat"))
    seat.compute(sentence=[...], group=["targ1", ...], model="bundled:minilm")

``evaluate.load`` copies the module file into its modules cache (``$HF_MODULES_CACHE``) and imports it there.
"""

from __future__ import annotations

from pathlib import Path

MODULES = ("seat", "crows_pairs", "stereoset")


def module_path(name: str) -> str:
    """The folder to pass to ``evaluate.load`` for ``name`` (one of :data:`MODULES`)."""
    if name not in MODULES:
        from peft_debias.core.errors import DebiasError

        raise DebiasError(f"unknown evaluate module {name!r} (known: {', '.join(MODULES)})", "choose a known one")
    return str(Path(__file__).resolve().parent / name)
