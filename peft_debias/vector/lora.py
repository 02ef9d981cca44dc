"""LoRA bias vectors: the weight delta of a LoRA adapter, and its negation as a PEFT adapter.

A LoRA module adds ``delta W = scaling * B @ A`` (transposed for ``fan_in_fan_out`` layers and embeddings), with
``scaling = alpha / r``, or ``alpha / sqrt(r)`` under rsLoRA. Negating it at strength ``lam`` must give
``-lam * scaling * B @ A``: scale ONE factor (here B). Scaling both A and B by ``-lam`` gives ``+lam**2 B A``, the
wrong sign (DESIGN.md section 3), and peft's ``add_weighted_adapter`` with a negative weight goes wrong for the
``linear``/``ties``/``dare`` combinations; neither is used here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.jsonio import write_json
from peft_debias.core.portable import portable_adapter_config
from peft_debias.vector.stream import TensorInfo
from peft_debias.vector.terms import Term, is_excluded

ADAPTER_CONFIG = "adapter_config.json"
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.(?P<param>weight|bias))?$"
)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's rule for rank_pattern / alpha_pattern: a key matches a module name it ends (dot-separated)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


class LoraModule:
    """The factors of one LoRA-adapted module and how they map onto its base weight."""

    def __init__(self, module: str, a: torch.Tensor, b: torch.Tensor, scaling: float, transpose: bool) -> None:
        self.module, self.a, self.b, self.scaling, self.transpose = module, a, b, scaling, transpose
        out_dim, in_dim = b.shape[0], a.shape[1]
        self.shape = (in_dim, out_dim) if transpose else (out_dim, in_dim)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        a, b = self.a.float(), self.b.float()
        if self.transpose:  # rows of (B A)^T are columns of B A
            return (b @ a[:, start:stop]).T.contiguous().mul_(self.scaling)
        return (b[start:stop] @ a).mul_(self.scaling)


class LoraDelta(Term):
    """The weight delta of a saved PEFT LoRA adapter, keyed by the base model's tensor names."""

    def __init__(self, folder: str | Path, exclude: Sequence[str] = (), allow_pickle: bool = False) -> None:
        self.folder = Path(folder)
        self.config = read_adapter_config(self.folder)
        self.weights = _adapter_weights(self.folder, allow_pickle)
        self.modules: dict[str, LoraModule] = {}
        self.biases: dict[str, tuple[torch.Tensor, float]] = {}  # lora_bias: base bias name -> (B bias, scaling)
        self.excluded: list[str] = []
        self._build(exclude)
        self.infos = {n: TensorInfo(n, "F32", m.shape) for n, m in self.modules.items()}
        self.infos.update({n: TensorInfo(n, "F32", tuple(b.shape)) for n, (b, _) in self.biases.items()})

    def _build(self, exclude: Sequence[str]) -> None:
        cfg = self.config
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in self.weights.items():
            match = _KEY.match(key)
            if match is None:
                if "lora_magnitude_vector" in key:
                    raise DebiasError(f"{self.folder} is a DoRA adapter", "only plain LoRA adapters are supported")
                continue  # e.g. base_layer copies saved with embedding adapters: not part of the delta
            name = match["part"] + ("_bias" if match["param"] == "bias" else "")
            parts.setdefault(match["module"], {})[name] = tensor
        if not parts:
            raise DebiasError(f"{self.folder} holds no LoRA weights", "pass a LoRA adapter folder")
        for module, found in sorted(parts.items()):
            embedding = "lora_embedding_A" in found
            a = found.get("lora_embedding_A" if embedding else "lora_A")
            b = found.get("lora_embedding_B" if embedding else "lora_B")
            if a is None or b is None or a.shape[0] != b.shape[1]:
                raise DebiasError(f"{self.folder}: LoRA factors of {module} are missing or mismatched", "re-save it")
            r = a.shape[0]
            alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8))
            scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
            name = f"{module}.weight"
            if is_excluded(name, exclude):
                self.excluded.append(name)
                continue
            self.modules[name] = LoraModule(module, a, b, scaling, embedding or bool(cfg.get("fan_in_fan_out")))
            if "lora_B_bias" in found and not is_excluded(f"{module}.bias", exclude):
                self.biases[f"{module}.bias"] = (found["lora_B_bias"], scaling)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        if name in self.biases:
            bias, scaling = self.biases[name]
            return bias[start:stop].float().mul_(scaling)
        return self.modules[name].rows(start, stop)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "lora_adapter",
            "path": self.folder.name,
            "r": self.config.get("r"),
            "lora_alpha": self.config.get("lora_alpha"),
            "use_rslora": bool(self.config.get("use_rslora")),
            "modules": len(self.modules),
        }


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """The adapter's config, refusing adapters whose update is not ``scaling * B @ A``."""
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise DebiasError(f"{folder} has no {ADAPTER_CONFIG}", "pass a PEFT LoRA adapter folder")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DebiasError(f"{path} is not valid JSON ({one_line(err)})", "re-save the adapter") from err
    kind = str(cfg.get("peft_type", "")).upper()
    if kind != "LORA":
        raise DebiasError(
            f"{folder} is a {kind or 'unknown'} adapter, not LoRA: only a LoRA update is a weight delta",
            "train the biased model with --method lora or full fine-tuning",
        )
    unsupported = [
        (cfg.get("use_dora"), "DoRA"),
        (cfg.get("modules_to_save"), "modules_to_save"),
        (cfg.get("target_parameters"), "target_parameters"),
        (cfg.get("layer_replication"), "layer_replication"),
    ]
    for bad, what in unsupported:
        if bad:
            raise DebiasError(f"{folder} uses {what}, which a bias vector cannot represent", "use a plain LoRA")
    return cfg  # ranks are read from the factors' shapes, so rank_pattern needs no handling


def _adapter_weights(folder: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = folder / "adapter_model.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))
        except Exception as err:
            raise DebiasError(f"{path} is not readable ({one_line(err)})", "re-save the adapter") from err
    pickled = folder / "adapter_model.bin"
    if not pickled.is_file():
        raise DebiasError(f"{folder} has no adapter_model.safetensors", "pass a saved PEFT adapter folder")
    if not allow_pickle:
        raise DebiasError(
            f"{folder} has only a pickle adapter (adapter_model.bin), refused as unpickling can run code",
            "convert to safetensors or pass --allow-pickle / allow_pickle=True",
        )
    return torch.load(pickled, map_location="cpu", weights_only=True)


def write_negated_adapter(delta: LoraDelta, factor: float, dest: Path, base_id: str | None = None) -> list[str]:
    """Write into folder ``dest`` a PEFT adapter whose update is ``factor * scaling * B @ A``: B is scaled, A kept.
    Its ``adapter_config.json`` names the base by ``base_id`` (a Hub id, or ``None``), never by a local folder.

    Excluded modules are left out of the adapter (and of ``target_modules``' effect: their factors are absent).
    Returns the module names written.
    """
    from safetensors.torch import save_file

    kept_modules = {m.module for m in delta.modules.values()}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in delta.weights.items():
        match = _KEY.match(key)
        if match is None or match["module"] not in kept_modules:
            continue
        if match["part"] in ("lora_B", "lora_embedding_B"):  # the ONE factor that carries the sign and strength
            tensor = (tensor.float() * factor).to(tensor.dtype)
        out[key] = tensor.contiguous()
    config = dict(delta.config)
    config["inference_mode"] = True
    # Name exactly the modules written: a module targeted but absent from the file would be initialised by peft
    # (at random under init_lora_weights=False) instead of staying off.
    config["target_modules"] = sorted(kept_modules)
    config["init_lora_weights"] = True
    save_file(out, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})
    write_json(dest / ADAPTER_CONFIG, portable_adapter_config(config, base_id), sort_keys=True)
    return sorted(kept_modules)
