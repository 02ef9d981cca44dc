"""Bounded memory on large inputs: the peak RSS of a real ``peft-debias`` process stays far below the input size.

* ``peft-debias vector`` stream-merges a generated 400M-parameter (1.6 GB float32) sharded checkpoint pair;
* ``peft-debias eval`` scores perplexity on the first tokens of a generated 400 MB text file.

Each command runs as a grandchild: a small wrapper process starts it, waits, and reports
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``, the peak RSS of that one command (the pytest process's other
children do not count). Both tests write gigabytes and take tens of seconds: ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from peft_debias.vector.shard_writer import ShardWriter
from peft_debias.vector.stream import Checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MIB = 1 << 20

_PEAK = textwrap.dedent(
    """
    import resource, subprocess, sys
    proc = subprocess.run([sys.executable, "-m", "peft_debias", *sys.argv[1:]], capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    print(proc.stderr[-2000:], file=sys.stderr)
    print(proc.returncode, peak)
    """
)


def peak_rss_mib(*args: str) -> int:
    """Run ``python -m peft_debias ARGS`` in a fresh process; assert it succeeds and return its peak RSS in MiB."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", _PEAK, *args], capture_output=True, text=True, timeout=1200, env=env, check=True
    )
    code, peak = (int(x) for x in result.stdout.split())
    assert code == 0, result.stderr
    return peak


def _write_checkpoint(folder: Path, layers: int, rows: int, cols: int, noise: float) -> int:
    """A float32 toy model of ``layers`` tensors of ``rows x cols`` in 500 MB shards; returns its size in bytes."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "toy", "architectures": ["ToyModel"]}))
    plan = [(f"layers.{i}.weight", "F32", (rows, cols)) for i in range(layers)]
    block = 1024
    with ShardWriter(folder, plan, shard_bytes=500_000_000) as writer:
        for i, (name, _, _) in enumerate(plan):
            for start in range(0, rows, block):
                gen = torch.Generator().manual_seed(i * 1_000_003 + start)
                values = torch.rand(block, cols, generator=gen)
                writer.append(name, values + noise * torch.rand(block, cols, generator=gen) if noise else values)
        writer.close()
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def test_vector_merge_of_a_large_checkpoint_has_a_small_peak(tmp_path: Path) -> None:
    layers, rows, cols = 25, 4096, 4096  # 419M parameters, 1.68 GB per checkpoint
    size = _write_checkpoint(tmp_path / "pre", layers, rows, cols, 0.0)
    _write_checkpoint(tmp_path / "biased", layers, rows, cols, 0.01)
    assert len(list((tmp_path / "pre").glob("*.safetensors"))) >= 3
    peak = peak_rss_mib(
        "vector", "--base", str(tmp_path / "pre"), "--biased", str(tmp_path / "biased"), "--lambda", "1",
        "--output", str(tmp_path / "out"), "--shard-size", "500MB", "--no-progress",
    )  # fmt: skip
    model_mib = size // MIB
    assert peak < model_mib / 3, f"peak RSS {peak} MiB merging a {model_mib} MiB checkpoint pair"
    out = Checkpoint.open(tmp_path / "out")
    pre, biased = Checkpoint.open(tmp_path / "pre"), Checkpoint.open(tmp_path / "biased")
    assert len(out.tensors) == layers
    for name in ("layers.0.weight", f"layers.{layers - 1}.weight"):
        a, b = pre.read(name, rows - 8, rows), biased.read(name, rows - 8, rows)
        assert torch.equal(out.read(name, rows - 8, rows), a - (b - a))


def test_perplexity_on_a_large_text_has_a_small_peak(tiny_models, tmp_path: Path) -> None:
    line = "The doctor said that she would call him back tomorrow morning before the meeting.\n"
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text(line * 2_000)
    with large.open("w") as fh:
        chunk = line * 10_000
        while fh.tell() < 400 * MIB:
            fh.write(chunk)
    peaks = {}
    for path in (small, large):
        results = tmp_path / f"{path.stem}.json"
        peaks[path.stem] = peak_rss_mib(
            "eval", "--model", str(tiny_models["llama"]), "--benchmarks", "perplexity", "--ppl-file", str(path),
            "--ppl-max-tokens", "2000", "--output", str(results), "--no-progress",
        )  # fmt: skip
        assert json.loads(results.read_text())["perplexity"]["n_tokens"] == 2000
    growth = peaks["large"] - peaks["small"]
    assert growth < 64, f"reading a 400 MiB text raised the peak RSS by {growth} MiB ({peaks})"
