"""The CLI's contract: --help/--version, the cda command, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peft_debias import __version__

pytestmark = pytest.mark.e2e


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peft_debias", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_help_and_version() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "cda" in result.stdout and "demo" in result.stdout
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"peft-debias {__version__}"


def test_cda_writes_jsonl(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "The king met his mother today.\nThe weather is fine today.\nThe rabbi spoke at the synagogue today.\n"
    )
    out = tmp_path / "out.jsonl"
    result = run_cli("cda", "--axis", "gender", "--corpus", str(corpus), "--output", str(out), "--no-shuffle")
    assert result.returncode == 0, result.stderr
    assert "3 sentences read, 1 with axis words, 1 counterfactuals" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {"id": 0, "text": "The king met his mother today.", "counterfactuals": ["The queen met her father today."]}
    ]
    out2 = tmp_path / "religion.jsonl"
    assert run_cli("cda", "--axis", "religion", "--corpus", str(corpus), "--output", str(out2)).returncode == 0
    assert json.loads(out2.read_text())["counterfactuals"] == [
        "The priest spoke at the church today.",
        "The imam spoke at the mosque today.",
    ]
    corpus.write_text("Sarah met the doctor today.\nThe weather is fine today.\n")
    out3 = tmp_path / "names.jsonl"
    args = ("cda", "--axis", "gender", "--corpus", str(corpus), "--output", str(out3), "--names", "20")
    assert run_cli(*args).returncode == 0
    assert json.loads(out3.read_text())["counterfactuals"] == ["Joseph met the doctor today."]


def _corpus(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


BAD = {
    "unknown axis": (
        lambda t: ["cda", "--axis", "gendr", "--corpus", _corpus(t, "c.txt", b"He is here now."), "--output", "{out}"],
        "unknown axis 'gendr' (known: gender, race, religion)",
    ),
    "missing corpus": (
        lambda t: ["cda", "--axis", "gender", "--corpus", str(t / "none.txt"), "--output", "{out}"],
        "none.txt not found",
    ),
    "empty corpus": (
        lambda t: ["cda", "--axis", "gender", "--corpus", _corpus(t, "e.txt", b""), "--output", "{out}"],
        "is empty",
    ),
    "no axis words": (
        lambda t: ["cda", "--axis", "race", "--corpus", _corpus(t, "n.txt", b"He is a tall man."), "--output", "{out}"],
        "no sentence mentioning axis 'race'",
    ),
    "binary corpus": (
        lambda t: ["cda", "--axis", "gender", "--corpus", _corpus(t, "b.txt", b"\x00\xff\x00he"), "--output", "{out}"],
        "is binary",
    ),
    "non-utf8 corpus": (
        lambda t: [
            "cda",
            "--axis",
            "gender",
            "--corpus",
            _corpus(t, "l.txt", b"He said \xe9t\xe9."),
            "--output",
            "{out}",
        ],
        "not UTF-8",
    ),
    "bad keep ratio": (
        lambda t: [
            "cda",
            "--axis",
            "gender",
            "--corpus",
            _corpus(t, "k.txt", b"He is here now."),
            "--output",
            "{out}",
            "--keep-ratio",
            "nan",
        ],
        "keep ratio nan",
    ),
    "missing argument": (lambda t: ["cda", "--axis", "gender"], "the following arguments are required"),
    "bad axis file": (
        lambda t: [
            "cda",
            "--axis",
            _corpus(t, "axis.json", b"{oops"),
            "--corpus",
            _corpus(t, "c2.txt", b"He is here now."),
            "--output",
            "{out}",
        ],
        "not valid JSON",
    ),
    "demo without data": (lambda t: ["demo", "--data-dir", str(t / "nodata"), "--output", "{out}"], "data folder"),
    "unknown command": (lambda t: ["train-everything"], "invalid choice"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    make_args, message = BAD[case]
    out = tmp_path / "dest" / "out.jsonl"
    args = [a.replace("{out}", str(out)) for a in make_args(tmp_path)]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("peft-debias: error: ") and ";" in lines[0]
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no temp leftovers


def test_existing_output_is_refused_then_overwritten(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, "c.txt", b"He is a doctor here.")
    out = tmp_path / "out.jsonl"
    out.write_text("keep me\n")
    result = run_cli("cda", "--axis", "gender", "--corpus", corpus, "--output", str(out))
    assert result.returncode == 2 and "already exists; pass --overwrite" in result.stderr
    assert out.read_text() == "keep me\n"
    assert run_cli("cda", "--axis", "gender", "--corpus", corpus, "--output", str(out), "--overwrite").returncode == 0
    assert json.loads(out.read_text())["counterfactuals"] == ["She is a doctor here."]


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli("cda", "--debug", "--axis", "nope", "--corpus", "x", "--output", str(tmp_path / "o.jsonl"))
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "DebiasError" in result.stderr
