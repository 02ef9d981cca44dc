"""Fingerprints: definitions on hand-made inputs, and values recorded before they moved to core (artifacts
record them and later checks compare them, so they must never change)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from peft_debias.core.fingerprints import (
    digests_fingerprint,
    file_ends_fingerprint,
    float_params_digest,
    sha256_file,
    sha256_files,
    sha256_text,
    tensor_bytes,
    tensors_fingerprint,
)

ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256(b"abc"), FIPS 180-2 example


def _module() -> torch.nn.Module:
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Embedding(4, 2))
    with torch.no_grad():
        for i, param in enumerate(module.parameters()):
            param.copy_(torch.arange(param.numel(), dtype=torch.float32).reshape(param.shape) / (i + 2))
    module[1].weight.requires_grad_(False)
    return module


def test_text_and_file_digests(tmp_path: Path) -> None:
    assert sha256_text("abc") == ABC[:16] and sha256_text("abc", 12) == ABC[:12]
    (tmp_path / "a.txt").write_bytes(b"abc")
    (tmp_path / "b.txt").write_bytes(b"hello\n" * 1000)
    assert sha256_file(tmp_path / "a.txt") == ABC[:16]
    assert sha256_files([tmp_path / "a.txt"]) == hashlib.sha256(b"a.txtabc").hexdigest()[:16]  # name, then bytes
    assert sha256_files([str(tmp_path / "a.txt")]) == sha256_files([tmp_path / "a.txt"])
    assert sha256_files([tmp_path / "a.txt", tmp_path / "b.txt"]) == "5ab0290963aacd43"
    assert sha256_file(tmp_path / "b.txt") == "eb55abd9f06dc38c"


def test_file_ends_fingerprint(tmp_path: Path) -> None:
    small = tmp_path / "small.gguf"
    small.write_bytes(b"abc")
    # size "3", then the first and the last MiB: both the whole file
    assert file_ends_fingerprint(small) == hashlib.sha256(b"3abcabc").hexdigest()[:12] == "2e8e504c5e6b"
    big = tmp_path / "big.gguf"
    big.write_bytes(bytes(range(256)) * 9000)
    assert file_ends_fingerprint(big) == "095f20872a47"
    assert file_ends_fingerprint(big, span=2, length=16) == hashlib.sha256(b"2304000\x00\x01\xfe\xff").hexdigest()[:16]


def test_tensors_fingerprint() -> None:
    one = torch.tensor([1, 2], dtype=torch.uint8)
    expected = hashlib.sha256(b"w|torch.uint8|(2,)|\x01\x02").hexdigest()[:16]
    assert tensors_fingerprint([("w", one)]) == expected
    assert bytes(tensor_bytes(torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8).t())) == b"\x01\x03\x02\x04"
    assert tensors_fingerprint([("b", one), ("a", one)]) == tensors_fingerprint([("a", one), ("b", one)])
    module = _module()
    assert tensors_fingerprint(module.state_dict().items()) == "730535479a7b16f3"
    assert tensors_fingerprint(_module().to(torch.bfloat16).state_dict().items()) == "8ddca1a399d2f633"


def test_digests_fingerprint() -> None:
    entries = {"b": ("F32", (2,), "00"), "a": ("I64", (), "ff")}
    assert digests_fingerprint(entries) == hashlib.sha256(b"a|I64|[]|ff\nb|F32|[2]|00\n").hexdigest()[:16]


def test_float_params_digest() -> None:
    module = _module()
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert [n for n, _ in trainable] == ["0.weight", "0.bias"]
    bias = module[0].bias.detach().numpy().tobytes()
    weight = module[0].weight.detach().numpy().tobytes()
    expected = hashlib.sha256(b"0.bias" + bias + b"0.weight" + weight).hexdigest()[:16]
    assert float_params_digest(trainable) == expected == "b6d8cea916753190"


def test_model_fingerprints_keep_their_recorded_values(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from peft_debias.loader.checks import backbone_fingerprint
    from peft_debias.models.loading import weights_fingerprint
    from peft_debias.vector.stream import Checkpoint
    from peft_debias.vector.terms import file_fingerprint

    module = _module()
    assert weights_fingerprint(module) == backbone_fingerprint(module) == "730535479a7b16f3"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp_path / "model.safetensors"))
    checkpoint = Checkpoint.open(tmp_path)
    try:
        assert file_fingerprint(checkpoint) == file_fingerprint(checkpoint, chunk_bytes=8) == "cabb21e40f8ab5f3"
    finally:
        checkpoint.close()
