"""Gender first-name swaps (names intervention): the pairs, the extended axis, CDA and the corpus with names."""

from __future__ import annotations

import pytest
from faker.providers.person.en_US import Provider

from peft_debias.cda.axes import get_axis
from peft_debias.cda.dataset import CDAConfig, build_cda_dataset
from peft_debias.cda.names import excluded_names, name_pairs, with_names
from peft_debias.cda.swapping import counterfactuals, swap
from peft_debias.core.errors import DebiasError


def test_pairs_are_the_most_frequent_unambiguous_names_paired_by_rank() -> None:
    pairs = name_pairs(30)
    assert len(pairs) == 30 and pairs[0] == ("michael", "jennifer")
    male = {k.lower(): v for k, v in Provider.first_names_male.items()}
    female = {k.lower(): v for k, v in Provider.first_names_female.items()}
    for m, f in pairs:
        assert m in male and f in female and m not in female and f not in male
        assert m not in excluded_names() and f not in excluded_names()
    assert [male[m] for m, _ in pairs] == sorted((male[m] for m, _ in pairs), reverse=True)
    assert [female[f] for _, f in pairs] == sorted((female[f] for _, f in pairs), reverse=True)
    # the next most frequent eligible male name is not more frequent than the last one taken
    rest = [n for n, w in male.items() if n not in female and n not in excluded_names() and n not in dict(pairs)]
    assert max(male[n] for n in rest) <= male[pairs[-1][0]]
    assert {"mark", "will", "grace", "jordan"} <= excluded_names()


def test_axis_with_names_swaps_names_and_keeps_words_that_are_names() -> None:
    axis = with_names(get_axis("gender"), 100)
    assert axis.name == "gender-names100" and len(axis.groups) == len(get_axis("gender").groups) + 100
    assert axis.fingerprint != get_axis("gender").fingerprint
    assert swap("Michael told Jennifer that he saw her.", axis) == "Jennifer told Michael that she saw him."
    assert swap("MICHAEL waved.", axis) == "JENNIFER waved."
    assert counterfactuals("Mark my words, it will rain.", axis) == []  # 'mark' and 'will' are not names here
    assert counterfactuals("John is here.", get_axis("gender")) == []
    assert with_names(get_axis("gender"), 0) is get_axis("gender")


def test_bad_name_counts_and_axes_are_refused() -> None:
    with pytest.raises(DebiasError, match="names 0 is not a positive number"):
        name_pairs(0)
    with pytest.raises(DebiasError, match=r"names 100000 is more than the \d+ name pairs available"):
        name_pairs(100_000)
    with pytest.raises(DebiasError, match="name swaps need an axis with classes male and female; 'race'"):
        with_names(get_axis("race"), 5)


def test_corpus_with_names_keeps_and_swaps_sentences_that_only_name_someone(tmp_path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("Michael walked to the old mill today.\nThe weather was fine all morning long.\n")
    with pytest.raises(DebiasError, match="has no sentence mentioning axis 'gender'"):
        build_cda_dataset([str(corpus)], CDAConfig(axis="gender", shuffle=False))
    with_pairs, stats = build_cda_dataset([str(corpus)], CDAConfig(axis="gender", names=50, shuffle=False))
    assert with_pairs["text"] == ["Michael walked to the old mill today."]
    assert with_pairs["counterfactuals"] == [["Jennifer walked to the old mill today."]]
    assert stats.pairs_produced == 1
