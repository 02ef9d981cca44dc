"""The streaming layer: safetensors written block by block read back everywhere, and memory that stays flat."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peft_debias.core.errors import DebiasError
from peft_debias.vector.shard_writer import ShardWriter, parse_size
from peft_debias.vector.stream import DTYPE_NAMES, Checkpoint, row_blocks


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(33, 7, generator=gen),
        "bf16": torch.randn(5, 3, 2, generator=gen).to(torch.bfloat16),
        "f16": torch.randn(9, generator=gen).half(),
        "f64": torch.randn(2, 2, generator=gen).double(),
        "i64": torch.arange(12).reshape(3, 4),
        "i8": torch.tensor([-3, 0, 5], dtype=torch.int8),
        "u8": torch.tensor([1, 2, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }


@pytest.mark.parametrize("shard_bytes", [1, 200, 1 << 30])
def test_writer_output_reads_back_with_safetensors(tmp_path: Path, shard_bytes: int) -> None:
    tensors = _tensors()
    plan = [(name, DTYPE_NAMES[t.dtype], tuple(t.shape)) for name, t in tensors.items()]
    writer = ShardWriter(tmp_path, plan, shard_bytes=shard_bytes)
    for name, t in tensors.items():
        for start, stop in row_blocks(tuple(t.shape), t.element_size(), chunk_bytes=16):  # many tiny blocks
            writer.append(name, t[start:stop] if t.dim() else t)
    files = writer.close()
    loaded: dict[str, torch.Tensor] = {}
    for path in files:
        raw = path.read_bytes()
        header_len = int.from_bytes(raw[:8], "little")
        assert (8 + header_len) % 8 == 0  # data aligned
        assert json.loads(raw[8 : 8 + header_len])["__metadata__"] == {"format": "pt"}
        loaded.update(load_file(str(path)))
    assert loaded.keys() == tensors.keys()
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name
    if len(files) > 1:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(tensors)
    ckpt = Checkpoint.open(tmp_path)
    for name, t in tensors.items():
        assert torch.equal(ckpt.read(name), t), name
        if t.dim() and t.shape[0] > 2:
            assert torch.equal(ckpt.read(name, 1, 3), t[1:3])


def test_writer_refuses_out_of_order(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, [("a", "F32", (2,)), ("b", "F32", (2,))])
    with pytest.raises(RuntimeError, match="expected a"):
        writer.append("b", torch.zeros(2))


def test_row_blocks_cover_every_row() -> None:
    for shape in [(10, 3), (1,), (), (0, 5), (7, 0), (1000, 1000)]:
        blocks = list(row_blocks(shape, 4, chunk_bytes=4096))
        rows = shape[0] if shape else 1
        assert blocks[0][0] == 0 and blocks[-1][1] == rows
        assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))


@pytest.mark.parametrize(("text", "value"), [("2GB", 2 * 10**9), ("500MB", 5 * 10**8), ("1GiB", 1 << 30), ("123", 123)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_parse_size_errors() -> None:
    for bad in ("two", "0", "5XB"):
        with pytest.raises(DebiasError):
            parse_size(bad)


_MAKE = """
import json, sys, torch
from pathlib import Path
from peft_debias.vector.shard_writer import ShardWriter
root, mib = Path(sys.argv[1]), int(sys.argv[2])
rows = 4096
cols = mib * (1 << 20) // 4 // rows // 4  # four tensors
for name, noise in (("pre", 0.0), ("biased", 0.01)):
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "toy", "architectures": ["Toy"]}))
    plan = [(f"layer{i}.weight", "F32", (rows, cols)) for i in range(4)]
    writer = ShardWriter(folder, plan, shard_bytes=mib << 19)  # two shards
    for i in range(4):
        for start in range(0, rows, 256):
            gen = torch.Generator().manual_seed(i * 100000 + start)
            block = torch.randn(256, cols, generator=gen)
            writer.append(f"layer{i}.weight", block + noise * torch.randn(256, cols, generator=gen))
    writer.close()
"""

_MERGE = """
import resource, sys
from pathlib import Path
import torch
from peft_debias import BiasVector
import peft_debias.vector.apply, jinja2, huggingface_hub, tqdm.auto  # imports count as baseline, not as the merge
root = Path(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
vector = BiasVector.from_models(root / "pre", root / "biased")
vector.apply_to(root / "pre", scale=-1.0, output=root / "out", shard_size="64MB", progress=False)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024, after // 1024)
"""


@pytest.mark.e2e
def test_peak_memory_is_bounded_not_model_sized(tmp_path: Path) -> None:
    """Merging a 384 MiB checkpoint (768 MiB read, 384 MiB written) grows the RSS by far less than the model: a few
    16 MiB blocks, whatever the model size (bench/bench_vector.py shows 1B parameters staying far under 2 GiB)."""
    model_mib = 384
    subprocess.run([sys.executable, "-c", _MAKE, str(tmp_path), str(model_mib)], check=True, timeout=600)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_MERGE), str(tmp_path)],
        check=True,
        timeout=600,
        capture_output=True,
        text=True,
    )
    growth, peak = (int(x) for x in result.stdout.split())
    assert growth < model_mib / 2, f"RSS grew by {growth} MiB (peak {peak} MiB) merging a {model_mib} MiB model"
    out = Checkpoint.open(tmp_path / "out")
    assert len(out.tensors) == 4 and (tmp_path / "out" / "model.safetensors.index.json").is_file()
    pre, biased = Checkpoint.open(tmp_path / "pre"), Checkpoint.open(tmp_path / "biased")
    a, b, o = pre.read("layer2.weight", 0, 64), biased.read("layer2.weight", 0, 64), out.read("layer2.weight", 0, 64)
    assert torch.equal(o, a - 1.0 * (b - a))
