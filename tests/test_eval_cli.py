"""``peft-debias eval``: the three modes end to end, and bad input as one stderr line, exit 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.eval_helpers import build_small_data

pytestmark = pytest.mark.e2e

HEADER = ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators\n"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peft_debias", "eval", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def small_data(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_small_data(data_dir, tmp_path_factory.mktemp("small_data"))


def test_evaluate_compare_report_and_plot(tiny_models: dict[str, Path], small_data: Path, tmp_path: Path) -> None:
    common = ["--data-dir", str(small_data), "--axes", "gender", "--n-bootstrap", "50", "--threads", "1"]
    first = tmp_path / "llama.json"
    result = run_cli(
        "--model", str(tiny_models["llama"]), "--benchmarks", "crows,stereoset,perplexity", "--ppl-max-tokens", "40",
        "--output", str(first), "--report", str(tmp_path / "llama.md"), "--label", "before", *common,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "crows (causal): gender" in result.stdout and "perplexity:" in result.stdout
    saved = json.loads(first.read_text())
    assert saved["label"] == "before" and set(saved["crows"]["axes"]) == {"gender"}
    assert "## CrowS-Pairs" in (tmp_path / "llama.md").read_text()

    second = tmp_path / "gpt2.json"
    result = run_cli(
        "--model", str(tiny_models["gpt2"]), "--benchmarks", "crows,stereoset", "--compare", str(first),
        "--output", str(second), *common,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "compare with before: crows gender" in result.stdout and "McNemar p=" in result.stdout
    compare = json.loads(second.read_text())["compare"]
    assert set(compare) == {"other", "crows", "stereoset"}

    # from files alone: re-compare the other way round, report it
    result = run_cli("--results", str(first), "--compare", str(second), "--report", str(tmp_path / "again.md"))
    assert result.returncode == 0, result.stderr
    assert "## Compared with" in (tmp_path / "again.md").read_text()

    chart = tmp_path / "chart.png"
    result = run_cli("--plot", str(first), str(second), "--output", str(chart), "--labels", "a,b",
                     "--report", str(tmp_path / "table.md"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert chart.read_bytes()[:4] == b"\x89PNG"
    assert "| figure | a | b |" in (tmp_path / "table.md").read_text()


def _data_with(small_data: Path, tmp: Path, name: str, change) -> str:
    import shutil

    dest = tmp / name
    shutil.copytree(small_data, dest)
    change(dest)
    return str(dest)


def _broken_seat(folder: Path) -> None:
    (folder / "seat" / "broken.jsonl").write_text(json.dumps({k: {"examples": ["a"]} for k in ("targ1", "targ2")}))


BAD = {
    "no mode": (lambda m, d, t: [], "pass exactly one of --model, --results or --plot"),
    "two modes": (lambda m, d, t: ["--model", m["llama"], "--results", "x.json"], "(got model, results)"),
    "unknown benchmark": (
        lambda m, d, t: ["--model", m["llama"], "--data-dir", d, "--benchmarks", "seat,crowz", "--output", "{out}"],
        "unknown benchmark 'crowz' (known: seat, crows, stereoset, perplexity)",
    ),
    "unknown axis": (
        lambda m, d, t: ["--model", m["llama"], "--data-dir", d, "--axes", "gender,caste", "--output", "{out}"],
        "unknown axis 'caste' (known: gender, race, religion)",
    ),
    "malformed SEAT file": (
        lambda m, d, t: [
            "--model",
            m["bert_encoder"],
            "--data-dir",
            _data_with(Path(d), t, "bad_seat", _broken_seat),
            "--output",
            "{out}",
        ],
        "broken.jsonl lacks the key 'attr1'",
    ),
    "encoder asked for masked scoring": (
        lambda m, d, t: ["--model", m["bert_encoder"], "--data-dir", d, "--benchmarks", "crows", "--output", "{out}"],
        "is a bare encoder (kind encoder: no masked-LM head",
    ),
    "empty CrowS file": (
        lambda m, d, t: [
            "--model",
            m["bert"],
            "--benchmarks",
            "crows",
            "--output",
            "{out}",
            "--data-dir",
            _data_with(
                Path(d),
                t,
                "empty_crows",
                lambda f: (f / "crows_pairs" / "crows_pairs_anonymized.csv").write_text(HEADER),
            ),
        ],
        "crows_pairs_anonymized.csv has no pairs",
    ),
    "missing StereoSet file": (
        lambda m, d, t: [
            "--model",
            m["bert"],
            "--benchmarks",
            "stereoset",
            "--output",
            "{out}",
            "--data-dir",
            _data_with(Path(d), t, "no_stereoset", lambda f: (f / "stereoset" / "stereoset_dev_flat.jsonl").unlink()),
        ],
        "stereoset data is missing: expected stereoset/dev.json or stereoset/test.json or "
        "stereoset/stereoset_dev_flat.jsonl under the data folder",
    ),
    "no data folder": (
        lambda m, d, t: ["--model", m["bert"], "--data-dir", str(t / "nowhere"), "--output", "{out}"],
        "nowhere not found",
    ),
    "plot without png": (lambda m, d, t: ["--plot", "a.json", "--output", "{out}"], "--plot needs --output CHART.png"),
    "compare with a non-results file": (
        lambda m, d, t: [
            "--model",
            m["bert"],
            "--data-dir",
            d,
            "--compare",
            d + "/seat/weat6.jsonl",
            "--output",
            "{out}",
        ],
        "is not a peft-debias results file",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_line_and_exit_2(tiny_models, small_data: Path, tmp_path: Path, case: str) -> None:
    make_args, message = BAD[case]
    models = {k: str(v) for k, v in tiny_models.items()}
    out = tmp_path / "dest" / "out.json"
    args = [a.replace("{out}", str(out)) for a in make_args(models, str(small_data), tmp_path)]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("peft-debias: error: ") and ";" in lines[0]
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_existing_output_is_refused(tiny_models, small_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    out.write_text("keep")
    result = run_cli("--model", str(tiny_models["llama"]), "--data-dir", str(small_data), "--output", str(out))
    assert result.returncode == 2 and "already exists; pass --overwrite" in result.stderr
    assert out.read_text() == "keep"
