"""Atomic outputs: complete or absent, never half-written."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from peft_debias.core.atomic import atomic_output, atomic_outputs, check_destination
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


# ---- several outputs, all-or-nothing; write failures as one line
def test_several_outputs_appear_together(tmp_path: Path) -> None:
    dests = [tmp_path / "r.json", tmp_path / "sub" / "report.md"]
    with atomic_outputs(dests) as tmps:
        for tmp, text in zip(tmps, ["{}", "# r"], strict=True):
            tmp.write_text(text)
        assert not any(d.exists() for d in dests)
    assert [d.read_text() for d in dests] == ["{}", "# r"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["r.json", "report.md", "sub"]


def test_a_failed_output_leaves_none(tmp_path: Path) -> None:
    dests = [tmp_path / "r.json", tmp_path / "report.md"]
    expected = r"no space left on the device while writing .*report.md.*another --output"
    with pytest.raises(DebiasError, match=expected), atomic_outputs(dests) as tmps:
        tmps[0].write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmps[1]))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DebiasError, match=r"while writing \S*r\.json, \S*report\.md"), atomic_outputs(dests):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")  # which file is unknown: both are named


def test_a_failed_move_puts_back_what_was_moved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dests = [tmp_path / "r.json", tmp_path / "report.md", tmp_path / "chart.png"]
    dests[0].write_text("old results")
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "chart.png":
            raise OSError(errno.EDQUOT, "Disk quota exceeded", str(src))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(DebiasError, match="no space left"), atomic_outputs(dests, overwrite=True) as tmps:
        for tmp in tmps:
            tmp.write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"] and dests[0].read_text() == "old results"


def test_every_destination_is_checked_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "report.md").write_text("old")
    with (
        pytest.raises(DebiasError, match=r"report\.md already exists"),
        atomic_outputs([tmp_path / "r.json", tmp_path / "report.md"]),
    ):
        raise AssertionError("the block ran")
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(DebiasError, match="blocker is not a folder"):
        check_destination(tmp_path / "blocker" / "deeper" / "out.md")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "report.md"]


def test_a_missing_parent_is_checked_at_its_nearest_existing_folder(tmp_path: Path, monkeypatch) -> None:
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if Path(p) == tmp_path else real(p, m, *a, **k))
    with pytest.raises(DebiasError, match=r"cannot write to .* \(permission denied\)"):
        check_destination(tmp_path / "new" / "deeper" / "report.md")


def test_a_safetensors_write_failure_is_one_line(tmp_path: Path) -> None:
    from safetensors import SafetensorError

    with (
        pytest.raises(DebiasError, match=r"model outgrew the file size limit \(File too large\); raise the limit"),
        atomic_output(tmp_path / "model", directory=True),
    ):
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")
    full = r"no space left.*free space or choose another --output"
    with pytest.raises(DebiasError, match=full), atomic_output(tmp_path / "model", directory=True):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(SafetensorError, match="deserializing"), atomic_output(tmp_path / "model", directory=True):
        raise SafetensorError("Error while deserializing header: HeaderTooLarge")  # a broken input, not a write
    assert list(tmp_path.iterdir()) == []


# ---- scratch folders (the CDA Arrow tables): removed at exit, a killed process's leftovers by the next process


@pytest.fixture
def processes() -> Iterator[tuple[int, int]]:
    """The id of a process that has exited and of one that is still running (killed after the test)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield dead.pid, live.pid
    live.kill()
    live.wait()


def test_only_our_stale_scratch_folders_of_gone_processes_are_removed(tmp_path: Path, processes) -> None:
    from peft_debias.core.atomic import _HOST, remove_stale_scratch

    dead, live = processes
    other_host = "000000" if _HOST != "000000" else "111111"

    def folder(name: str) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "data-00000.arrow").write_bytes(b"arrow")
        return tmp_path / name

    leftover = folder(f"peft-debias-cda-{_HOST}-{dead}-k1l2m3n4")
    kept = [
        folder(f"peft-debias-cda-{_HOST}-{live}-k1l2m3n4"),  # a live run's
        folder(f"peft-debias-cda-{_HOST}-{os.getpid()}-k1l2m3n4"),  # this process's own
        folder(f"peft-debias-cda-{other_host}-{dead}-k1l2m3n4"),  # another host's (a shared TMPDIR)
        folder(f"peft-debias-other-{_HOST}-{dead}-k1l2m3n4"),  # another prefix
        folder("peft-debias-cda-k1l2m3n4"),  # no process id: nobody can tell whether it is in use
    ]
    (tmp_path / f"peft-debias-cda-{_HOST}-{dead}-file").write_text("not a folder")
    kept.append(tmp_path / f"peft-debias-cda-{_HOST}-{dead}-file")
    if os.getuid() == 0:  # a folder of another user is never touched, even when its process is gone
        kept.append(folder(f"peft-debias-cda-{_HOST}-{dead}-otheruser"))
        os.chown(kept[-1], 65534, 65534)
    assert remove_stale_scratch("peft-debias-cda-", tmp_path) == [leftover]
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_a_scratch_folder_names_its_process_and_clears_leftovers(tmp_path: Path, processes, monkeypatch) -> None:
    from peft_debias.core.atomic import _HOST, scratch_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, live = processes
    (tmp_path / f"peft-debias-cda-{_HOST}-{dead}-k1l2m3n4").mkdir()
    (tmp_path / f"peft-debias-cda-{_HOST}-{live}-k1l2m3n4").mkdir()
    made = scratch_folder("peft-debias-cda-")
    assert made.parent == tmp_path and made.is_dir() and not any(made.iterdir())
    assert made.name.startswith(f"peft-debias-cda-{_HOST}-{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([made.name, f"peft-debias-cda-{_HOST}-{live}-k1l2m3n4"])


def test_a_cda_table_folder_goes_on_error_and_stays_while_in_use(tmp_path: Path, monkeypatch) -> None:
    from peft_debias.cda.dataset import build_cda_dataset

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The dog sat on the mat all day.\n")
    with pytest.raises(DebiasError, match="no sentence mentioning axis"):
        build_cda_dataset(corpus, axis="gender")
    assert list(scratch.iterdir()) == []
    corpus.write_text("He sat on the mat all day.\n")
    ds, _ = build_cda_dataset(corpus, axis="gender")
    (folder,) = scratch.iterdir()
    assert folder.name.startswith("peft-debias-cda-") and f"-{os.getpid()}-" in folder.name
    assert ds["counterfactuals"] == [["She sat on the mat all day."]]
