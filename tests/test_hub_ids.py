"""Hub ids: one rule (the Hub's, in ASCII) for repo ids, dataset sources and branch names."""

from __future__ import annotations

import pytest

from peft_debias.core.errors import DebiasError
from peft_debias.core.hub_ids import check_repo_id, check_revision, is_dataset_source, is_hub_id, split_config

VALID = ["gpt2", "my-org/gender.lora_v2", "HuggingFaceTB/SmolLM2-135M-Instruct", "_org/_x", "a" * 96, "1/2"]
INVALID = [
    "", " ", "a b/c", "a/b/c", "/abs/path", "./local", "~/model", "../x", "org/../x", "org/", "a\\b", "org/x--y",
    "org/x..y", "org/x.git", "-x", "x-", ".x", "org/x.", "a" * 97, "org/" + "a" * 97, "ünï/näme", "org/name\n", 7,
    None,
]  # fmt: skip


@pytest.mark.parametrize("text", VALID)
def test_valid_ids(text: str) -> None:
    assert is_hub_id(text)
    assert check_repo_id(text) == text


@pytest.mark.parametrize("text", INVALID)
def test_invalid_ids(text) -> None:
    assert not is_hub_id(text)
    with pytest.raises(DebiasError, match="repo id"):
        check_repo_id(text)


def test_namespace_required() -> None:
    assert is_hub_id("org/name", namespace_required=True)
    assert not is_hub_id("name", namespace_required=True)


def test_dataset_sources_may_name_a_config() -> None:
    assert split_config("org/data:wikitext-2-raw-v1") == ("org/data", "wikitext-2-raw-v1")
    assert split_config("org/data") == ("org/data", None)
    assert is_dataset_source("org/data:wikitext-2-raw-v1") and is_dataset_source("wikitext")
    for text in ("org/data:", "org/data:a b", "org/data:x:y", "./data.txt:x", "a/b/c"):
        assert not is_dataset_source(text), text


def test_check_repo_id_says_what_is_wrong() -> None:
    with pytest.raises(DebiasError, match="is empty"):
        check_repo_id("  ")
    with pytest.raises(DebiasError, match="contains spaces"):
        check_repo_id("org/name ")
    with pytest.raises(DebiasError, match="is not 'namespace/name'"):
        check_repo_id("a/b/c")
    with pytest.raises(DebiasError, match="not a valid Hub repo id"):
        check_repo_id("org/x--y")


def test_check_revision() -> None:
    assert check_revision(None) == "main"
    assert check_revision("v1.0") == "v1.0" and check_revision("feature/gender") == "feature/gender"
    with pytest.raises(DebiasError, match="is a commit id"):
        check_revision("a" * 40)
    for bad in ("../main", "-x", "a b", "x.lock", "x/", "main\n"):
        with pytest.raises(DebiasError, match="not a valid branch name"):
            check_revision(bad)
