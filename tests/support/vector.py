"""Helpers shared by the bias-vector tests.

Checkpoints are handled as files: a "biased" model is the base with seeded noise added to its floating tensors,
written with the same file names, so the vector code sees exactly what a fine-tuned copy would look like.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.safetensors") if not p.name.startswith("adapter_model"))


def load_all(folder: Path, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a (possibly sharded) safetensors folder."""
    files = weight_files(folder) if prefix is None else sorted(Path(folder).glob(f"{prefix}*.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for path in files:
        out.update(load_file(str(path)))
    return out


def perturb(src: Path, dest: Path, *, noise: float = 0.01, seed: int = 0, dtype: torch.dtype | None = None) -> Path:
    """Copy a model folder, adding seeded Gaussian noise to every floating tensor (optionally casting it)."""
    shutil.copytree(src, dest)
    gen = torch.Generator().manual_seed(seed)
    for path in weight_files(dest):
        tensors = load_file(str(path))
        for name, t in sorted(tensors.items()):
            if t.is_floating_point():
                t = (t.float() + noise * torch.randn(t.shape, generator=gen)).to(dtype or t.dtype)
            tensors[name] = t.contiguous()
        save_file(tensors, str(path), metadata={"format": "pt"})
    return dest


def cast(src: Path, dest: Path, dtype: torch.dtype) -> Path:
    """Copy a model folder with its floating tensors cast to ``dtype`` (config's dtype updated)."""
    shutil.copytree(src, dest)
    for path in weight_files(dest):
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
        save_file(tensors, str(path), metadata={"format": "pt"})
    config = json.loads((dest / "config.json").read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def write_toy(folder: Path, tensors: dict[str, torch.Tensor], **config) -> Path:
    """A minimal "model" folder: config.json + model.safetensors (enough for the streaming code)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"}
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "toy", "architectures": ["ToyModel"], **config}))
    return folder


def dense_debias(pre: dict[str, torch.Tensor], biased: dict[str, torch.Tensor], lam: float) -> dict[str, torch.Tensor]:
    """The reference: ``pre - lam * (biased - pre)`` in float32, cast back to the base dtype."""
    return {k: (pre[k].float() - lam * (biased[k].float() - pre[k].float())).to(pre[k].dtype) for k in pre}
