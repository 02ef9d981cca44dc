"""Atomic outputs: complete or absent, never half-written."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from peft_debias.core.atomic import atomic_output
from peft_debias.core.errors import DebiasError


def test_file_appears_only_on_success(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "out.txt"
    with atomic_output(dest) as tmp:
        tmp.write_text("done")
        assert not dest.exists()
    assert dest.read_text() == "done"
    assert [p.name for p in dest.parent.iterdir()] == ["out.txt"]


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output(dest, directory=True) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []



def test_a_failed_file_output_leaves_no_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError), atomic_output(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DebiasError, match="no space left"), atomic_output(dest) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []
    dest.write_text("old")
    with pytest.raises(ValueError), atomic_output(dest, overwrite=True) as tmp:
        tmp.write_text("new")
        raise ValueError
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"] and dest.read_text() == "old"

def test_existing_destination_refused_unless_overwrite(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(DebiasError, match="already exists; pass --overwrite"), atomic_output(dest, directory=True):
        pass
    with pytest.raises(ValueError), atomic_output(dest, directory=True, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise ValueError
    assert [p.name for p in dest.iterdir()] == ["old.txt"]  # a failed overwrite keeps the old output
    with atomic_output(dest, directory=True, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_parent_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DebiasError, match="is not a folder"), atomic_output(tmp_path / "file" / "out"):
        pass


def test_an_output_may_not_be_or_hold_an_input(tmp_path: Path) -> None:
    from peft_debias.core.atomic import check_not_input

    model = tmp_path / "models" / "base"
    model.mkdir(parents=True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("text\n")
    (tmp_path / "link").symlink_to(model)
    for dest, relation in [(model, "is"), (tmp_path / "models", "contains"), (corpus, "is"), (tmp_path, "contains"),
                           (tmp_path / "link", "is"), (model / "..", "contains")]:  # fmt: skip
        with pytest.raises(DebiasError, match=f"{relation} the input"):
            check_not_input(dest, ["org/model-on-the-hub", str(model), str(corpus)])
    check_not_input(model / "debiased", [model, corpus])  # inside an input folder: fine
    check_not_input(tmp_path / "other", [model, corpus, "bundled:smollm2", "org/model"])
