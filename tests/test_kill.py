"""SIGKILL at random points: a destination is either absent or complete, and the work can be resumed or rerun.

Each long-running command runs as a real process (``python -m peft_debias ...``) and is killed with SIGKILL
(no handler, no cleanup) after a seeded random delay, several times. After every kill the destination must not
exist or must be complete and equal to the output of an uninterrupted run. Then:

* ``train --resume`` continues from the last checkpoint and ends with the very adapter of an uninterrupted run
  (``torch.equal`` on every tensor, CPU), and the same training log;
* a ``vector`` stream merge or a ``cda`` run is simply rerun; the temporary siblings the killed runs could not
  remove are cleaned up by the next run, and so are the CDA tables they left in ``$TMPDIR``.

The default runs kill each command twice (once while it starts, once while it works); the ``slow`` variants six
times, and a ``slow`` test does the same to ``merge`` and ``eval --output``. Every kill must land: a command that
exits before its kill fails the test (the kill points are placed from an uninterrupted run's timings or from what
the command has written so far, so that they fall inside the run).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peft_debias.train.work import work_dir
from peft_debias.vector.shard_writer import ShardWriter
from peft_debias.vector.stream import Checkpoint

from support.tiny_models import CORPUS

pytestmark = pytest.mark.e2e

KILLS = [2, pytest.param(6, marks=pytest.mark.slow)]


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    env["TMPDIR"] = str(tmp)  # what a killed process cannot clean up (CDA caches) stays in the test folder
    return env


def _start(args: list[str], tmp: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "peft_debias", *args],
        env=_env(tmp),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@dataclass(frozen=True)
class Timing:
    """An uninterrupted run: its wall time and when ``working()`` first held (its temporary output appeared)."""

    total: float
    working: float

    def while_starting(self, rng: random.Random) -> float:
        """A delay that falls before the run writes anything (the first half of its start-up)."""
        return rng.uniform(0.1, 0.5) * self.working

    def while_writing(self, rng: random.Random) -> float:
        """A delay after the temporary output appears that falls in the first third of the writing."""
        return rng.uniform(0.0, 0.3) * (self.total - self.working)


def run_to_end(args: list[str], tmp: Path, working: Callable[[], bool] = lambda: False) -> Timing:
    """Run a command to completion; returns its wall time and when ``working()`` first held (else the wall time)."""
    started = time.monotonic()
    proc = _start(args, tmp)
    seen = None
    while proc.poll() is None:
        if seen is None and working():
            seen = time.monotonic() - started
        time.sleep(0.002)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    total = time.monotonic() - started
    return Timing(total, total if seen is None else seen)


def kill_during(args: list[str], tmp: Path, delay: float, started: Callable[[], bool] | None = None) -> None:
    """Start a command, wait until ``started()`` is true (if given), then ``delay`` seconds, then SIGKILL it.

    The kill must land: a command that exits on its own first (before ``started()`` or before the delay is over)
    fails the test, since it would test nothing about being killed."""
    proc = _start(args, tmp)
    deadline = time.monotonic() + 300
    while started is not None and not started() and proc.poll() is None:
        assert time.monotonic() < deadline, "the command never got going"
        time.sleep(0.002)
    end = time.monotonic() + delay
    while proc.poll() is None and time.monotonic() < end:
        time.sleep(0.002)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"the kill did not land: `{args[0]}` exited with {proc.returncode} before it\n{err[-3000:]}")


def test_a_command_that_ends_before_its_kill_fails_the_test(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="the kill did not land: `--version` exited with 0"):
        kill_during(["--version"], tmp_path, 120.0)


def temporaries(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir() if ".tmp-peft-debias-" in p.name)


def writing(dest: Path) -> Callable[[], bool]:
    """Whether a command has started writing ``dest``: its temporary sibling exists."""
    prefix = f".{dest.name}.tmp-peft-debias-"
    return lambda: dest.parent.is_dir() and any(p.name.startswith(prefix) for p in dest.parent.iterdir())


# ---------------------------------------------------------------------------------------------------- train


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def _newest_checkpoint(work: Path) -> str | None:
    names = sorted(p.name for p in (work / "checkpoints").glob("step-????????")) if work.exists() else []
    return names[-1] if names else None


def _log_steps(folder: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (folder / "training_log.jsonl").read_text().splitlines()]


def _assert_same_adapter(got: Path, ref: Path) -> None:
    a, b = _adapter(got), _adapter(ref)
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _log_steps(got) == _log_steps(ref)
    assert json.loads((got / "debias_config.json").read_text())["training"]["steps"] == 120


@pytest.mark.parametrize("kills", KILLS)
def test_train_killed_then_resumed_is_bit_identical(tiny_models, tmp_path: Path, kills: int) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 2) + "\n")

    def args(output: Path) -> list[str]:
        return ["train", "--base", str(tiny_models["llama"]), "--corpus", str(corpus), "--output", str(output),
                "--max-steps", "120", "--save-every", "7", "--batch-size", "4", "--lr", "0.05", "--dropout", "0.1",
                "--seed", "3", "--eval-every", "0", "--log-every", "1", "--no-progress"]  # fmt: skip

    reference = _start(args(tmp_path / "ref"), tmp_path)  # the uninterrupted run, alongside the killed ones
    out = tmp_path / "out"
    work = work_dir(out)
    rng = random.Random(20240610 + kills)
    resumed = clean = False  # did a run that resumed from a checkpoint write the result, and exit normally?
    for attempt in range(kills):
        resume = ["--resume"] if (work / "train_config.json").is_file() else []
        from_checkpoint = bool(resume) and _newest_checkpoint(work) is not None
        if attempt == 0:  # while it imports, reads the corpus, loads the model
            kill_during(args(out) + resume, tmp_path, rng.uniform(0.3, 2.0))
        else:  # while it trains: within a quarter of a second of writing a new checkpoint
            at_launch = _newest_checkpoint(work)
            saved = lambda last=at_launch: _newest_checkpoint(work) not in (None, last)  # noqa: E731
            kill_during(args(out) + resume, tmp_path, rng.uniform(0.0, 0.25), saved)
        assert not out.exists() or _adapter(out), "the destination exists but is incomplete"
        if out.exists():  # killed just after it wrote the result: complete, nothing to resume
            resumed = from_checkpoint
            break
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    if not out.exists():
        assert _newest_checkpoint(work) is not None  # the run below resumes mid-way, from a checkpoint
        run_to_end([*args(out), "--resume"], tmp_path)
        resumed = clean = True
    assert resumed, "no run resumed from a checkpoint: the kills came too late"
    _assert_same_adapter(out, tmp_path / "ref")
    assert temporaries(out) == [] and not (clean and work.exists())


# ---------------------------------------------------------------------------------------------------- vector


def _write_model(folder: Path, noise: float) -> None:
    """A 96 MiB float32 toy model in three shards (six 4096 x 1024 tensors)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "toy", "architectures": ["ToyModel"]}))
    plan = [(f"layers.{i}.weight", "F32", (4096, 1024)) for i in range(6)]
    with ShardWriter(folder, plan, shard_bytes=32 << 20) as writer:
        for i, (name, _, shape) in enumerate(plan):
            gen = torch.Generator().manual_seed(i)
            base = torch.randn(shape, generator=gen)
            writer.append(name, base + noise * torch.randn(shape, generator=gen))
        writer.close()


def _weights(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("model*.safetensors*"))}


@pytest.mark.parametrize("kills", KILLS)
def test_vector_merge_killed_leaves_nothing_and_reruns(tmp_path: Path, kills: int) -> None:
    _write_model(tmp_path / "pre", 0.0)
    _write_model(tmp_path / "biased", 0.01)

    def args(output: Path) -> list[str]:
        return ["vector", "--base", str(tmp_path / "pre"), "--biased", str(tmp_path / "biased"), "--lambda", "0.5",
                "--output", str(output), "--shard-size", "20MB", "--no-progress"]  # fmt: skip

    timing = run_to_end(args(tmp_path / "ref"), tmp_path, writing(tmp_path / "ref"))
    reference = _weights(tmp_path / "ref")
    assert len(reference) == 7  # six shards (one tensor each) and the index
    out = tmp_path / "dest" / "debiased"
    rng = random.Random(7 + kills)
    for attempt in range(kills):
        if attempt == 0:  # while it starts: imports, opens both checkpoints
            kill_during(args(out), tmp_path, timing.while_starting(rng))
        else:  # while it merges: once its temporary folder exists
            kill_during(args(out), tmp_path, timing.while_writing(rng), writing(out))
        if out.exists():
            assert _weights(out) == reference
            break
    if not out.exists():
        run_to_end(args(out), tmp_path)
    assert _weights(out) == reference
    assert temporaries(out) == []  # the killed runs' temporary folders were removed by the last run
    merged = Checkpoint.open(out)
    pre, biased = Checkpoint.open(tmp_path / "pre"), Checkpoint.open(tmp_path / "biased")
    a, b = pre.read("layers.3.weight", 100, 110), biased.read("layers.3.weight", 100, 110)
    assert torch.equal(merged.read("layers.3.weight", 100, 110), a - 0.5 * (b - a))


# ---------------------------------------------------------------------------------------------------- cda


@pytest.mark.parametrize("kills", KILLS)
def test_cda_killed_leaves_nothing_and_reruns(tmp_path: Path, kills: int) -> None:
    corpus = tmp_path / "corpus.txt"
    with corpus.open("w") as fh:
        for i in range(200):
            fh.write("\n".join(f"{s[:-1]} on day {i}." for s in CORPUS) + "\n")

    def args(output: Path) -> list[str]:
        return ["cda", "--axis", "gender", "--corpus", str(corpus), "--output", str(output)]

    timing = run_to_end(args(tmp_path / "ref.jsonl"), tmp_path, writing(tmp_path / "ref.jsonl"))
    reference = (tmp_path / "ref.jsonl").read_bytes()
    assert reference.count(b"\n") > 5_000
    out = tmp_path / "dest" / "out.jsonl"
    rng = random.Random(11 + kills)
    for attempt in range(kills):
        if attempt == 0:  # while it starts: imports, reads the corpus
            kill_during(args(out), tmp_path, timing.while_starting(rng))
        else:  # as soon as it writes (the temporary file appears), or a little later
            kill_during(args(out), tmp_path, 0.0 if attempt % 2 else timing.while_writing(rng), writing(out))
        if out.exists():
            assert out.read_bytes() == reference
            break
    # the killed runs' CDA tables ($TMPDIR/peft-debias-cda-<host>-<pid>-*) outlive them; the next run removes them,
    # and a run that ends removes its own
    assert len(list(tmp_path.glob("peft-debias-cda-*"))) >= 1, "no kill landed after the CDA table was written"
    run_to_end(args(out if not out.exists() else tmp_path / "again.jsonl"), tmp_path)
    assert list(tmp_path.glob("peft-debias-cda-*")) == []
    assert out.read_bytes() == reference
    assert temporaries(out) == []


# ---------------------------------------------------------------------------------------------------- merge, eval


@pytest.mark.slow
def test_merge_and_eval_killed_leave_nothing_or_complete_outputs(tiny_models, tmp_path_factory, tmp_path) -> None:
    from support.loader import trained_adapter

    adapter = trained_adapter(tiny_models, tmp_path_factory, "llama", "lora")
    ppl = tmp_path / "text.txt"
    ppl.write_text("\n".join(CORPUS * 20) + "\n")
    llama = str(tiny_models["llama"])

    def merge(output: Path) -> list[str]:
        return ["merge", "--base", llama, "--adapter", str(adapter), "--output", str(output)]

    def evaluate(output: Path) -> list[str]:
        return ["eval", "--model", llama, "--benchmarks", "perplexity", "--ppl-file", str(ppl),
                "--output", str(output), "--no-progress"]  # fmt: skip

    def merged_complete(merged: Path) -> bool:
        return bool(load_file(str(merged / "model.safetensors"))) and "merged" in json.loads(
            (merged / "debias_config.json").read_text()
        )

    def results_complete(results: Path) -> bool:
        return json.loads(results.read_text())["perplexity"]["n_tokens"] > 0

    rng = random.Random(3)
    for name, args, complete in [("merged", merge, merged_complete), ("results.json", evaluate, results_complete)]:
        ref = tmp_path / "ref" / name
        timing = run_to_end(args(ref), tmp_path, writing(ref))
        assert complete(ref)
        dest = tmp_path / name
        for _ in range(4):  # while it starts (imports, loads the model): writing a tiny model is too short to aim at
            kill_during(args(dest), tmp_path, timing.while_starting(rng))
            assert not dest.exists()
        run_to_end(args(dest), tmp_path)
        assert temporaries(dest) == []
        assert complete(dest)
