"""First-name swaps for the gender axis: the names intervention of counterfactual data substitution.

CDA word lists swap gender terms (he/she, father/mother) but not first names, yet CrowS-Pairs and the SEAT name
tests (weat6, 7b, 8b) compare sentences that differ only in a first name ("John" vs "Amy"). Maudslay et al.
(EMNLP 2019, "It's all in the name") therefore also swap first names, pairing male and female names of similar
frequency. Here the names and their frequencies come from the ``faker`` package's ``en_US`` person provider (US
Social Security Administration counts); the ``n`` most frequent names of each gender are paired by rank, after
dropping names listed for both genders and those in ``data/names_excluded.txt`` (names that are also English words,
like "Mark" or "Grace", and names given to both genders). :func:`with_names` adds the pairs to an axis as extra
word groups, so CDA, the counterfactual objective and the artifact's axis fingerprint all see them.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from peft_debias.cda.axes import BiasAxis
from peft_debias.core.errors import DebiasError

NAMES_SOURCE = "faker en_US first names (US Social Security Administration frequencies)"


@cache
def excluded_names() -> frozenset[str]:
    """Lower-case names that are never swapped (see ``data/names_excluded.txt``)."""
    text = resources.files("peft_debias").joinpath("data/names_excluded.txt").read_text(encoding="utf-8")
    return frozenset(w for line in text.splitlines() for w in line.split("#", 1)[0].split())


def _ranked(table: dict[str, float]) -> list[str]:
    return [name.lower() for name, _ in sorted(table.items(), key=lambda kv: (-kv[1], kv[0]))]


def name_pairs(n: int) -> list[tuple[str, str]]:
    """The ``n`` most frequent (male, female) first-name pairs, paired by frequency rank, lower-case."""
    if n < 1:
        raise DebiasError(f"names {n} is not a positive number of name pairs", "use e.g. 100, or 0 for no name swaps")
    try:
        from faker.providers.person.en_US import Provider
    except ImportError as error:
        raise DebiasError("name swaps need the faker package", "pip install faker") from error
    male, female = _ranked(Provider.first_names_male), _ranked(Provider.first_names_female)
    dropped = (set(male) & set(female)) | excluded_names()
    male = [m for m in male if m not in dropped]
    female = [f for f in female if f not in dropped]
    if n > min(len(male), len(female)):
        raise DebiasError(
            f"names {n} is more than the {min(len(male), len(female))} name pairs available",
            f"use at most {min(len(male), len(female))}",
        )
    return list(zip(male[:n], female[:n], strict=True))


def with_names(axis: BiasAxis, n: int) -> BiasAxis:
    """``axis`` plus ``n`` first-name pairs as word groups (``n = 0``: the axis itself). Gender-like axes only."""
    if n == 0:
        return axis
    if axis.classes != ("male", "female"):
        raise DebiasError(
            f"name swaps need an axis with classes male and female; {axis.name!r} has {', '.join(axis.classes)}",
            "use names: 0 for this axis",
        )
    known = set(axis.lookup)
    extra = tuple(pair for pair in name_pairs(n) if known.isdisjoint(pair))
    return BiasAxis(
        name=f"{axis.name}-names{n}",
        classes=axis.classes,
        groups=axis.groups + extra,
        contextual=axis.contextual,
        description=f"{axis.description} Plus {len(extra)} first-name pairs ({NAMES_SOURCE}).".strip(),
    )
