"""The model under evaluation: a name, a loaded model or a model object, plus adapters -> :class:`ModelHandle`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_debias.core.errors import DebiasError

if TYPE_CHECKING:
    from peft_debias.models.loading import ModelKind
    from peft_debias.models.placement import Placement


@dataclass
class ModelHandle:
    """The model being evaluated: model, tokenizer, kind, a display name and the adapters attached."""

    model: Any
    tokenizer: Any
    kind: ModelKind
    name: str
    adapters: list[dict[str, Any]] = field(default_factory=list)
    placement: dict[str, Any] = field(default_factory=dict)  # device, dtype, device map it was evaluated on


def infer_kind(model: Any) -> ModelKind:
    """A model object's kind from its class (PEFT wrappers unwrapped): ``*ForMaskedLM`` masked, ``*ForCausalLM``
    / ``*LMHeadModel`` causal, anything else an encoder."""
    from peft_debias.models.loading import ModelKind

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    if name.endswith("ForMaskedLM"):
        return ModelKind.MASKED_LM
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return ModelKind.CAUSAL_LM
    return ModelKind.ENCODER


def resolve_model(
    model: Any,
    tokenizer: Any = None,
    *,
    kind: str | ModelKind | None = None,
    adapters: Iterable[str] = (),
    allow_base_mismatch: bool = False,
    placement: Placement | None = None,
) -> ModelHandle:
    """A model name / alias / folder, a :class:`~peft_debias.models.loading.LoadedModel`, or a model object
    (+ tokenizer)
    -> a :class:`ModelHandle`, with ``adapters`` attached (:func:`~peft_debias.eval.adapters.attach_adapters`:
    read and checked before the model loads; an adapter recorded for another base is refused unless
    ``allow_base_mismatch``). ``placement`` (device, dtype, device map) is where a named model is loaded; a model
    object stays where it is, and must already be on the device and in the dtype when they are named."""
    from dataclasses import asdict

    from peft_debias.eval.adapters import attach_adapters, read_adapters
    from peft_debias.models.loading import LoadedModel, ModelKind, load_model, load_tokenizer
    from peft_debias.models.placement import Placement

    placement = placement or Placement()
    files = read_adapters(list(adapters))
    if isinstance(model, (str, Path)):
        loaded = load_model(str(model), kind, **asdict(placement))
        handle = ModelHandle(loaded.model, loaded.tokenizer, loaded.kind, loaded.name, placement=loaded.placement)
    elif isinstance(model, LoadedModel):
        handle = ModelHandle(model.model, tokenizer or model.tokenizer, model.kind, model.name)
    else:
        name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
        if tokenizer is None:
            try:
                tokenizer = load_tokenizer(name)
            except DebiasError as err:
                raise DebiasError(
                    f"no tokenizer given for the model object ({err.problem})", "pass tokenizer="
                ) from err
        handle = ModelHandle(model, tokenizer, ModelKind(kind) if kind else infer_kind(model), name)
    if not handle.placement:
        handle.placement = held_placement(handle.model, placement)
    if files and any(p.device.type == "meta" for p in handle.model.parameters()):
        raise DebiasError(
            "adapters cannot be attached to a model whose weights are partly offloaded to disk (--device-map)",
            "raise --max-memory so that it fits, or merge the adapters first (peft-debias merge) and evaluate the "
            "merged model with --device-map auto",
        )
    handle.model, handle.adapters = attach_adapters(handle.model, files, allow_base_mismatch=allow_base_mismatch)
    handle.model.eval()
    return handle


def held_placement(model: Any, placement: Placement) -> dict[str, Any]:
    """Where a model object already is (its :meth:`~peft_debias.models.placement.Resolved.record`); a device or
    dtype named in ``placement`` that it is not on is refused (it is not moved behind the caller's back)."""
    from peft_debias.models.placement import dtype_name, model_device, resolve_device, same_device

    held = {"device": str(model_device(model)), "dtype": dtype_name(next(model.parameters()).dtype)}
    held["device_map"] = "auto" if getattr(model, "hf_device_map", None) else None
    wanted = dtype_name(placement.dtype)
    if wanted != "auto" and wanted != held["dtype"]:
        raise DebiasError(
            f"dtype {placement.dtype} was asked for, but the model object passed is in {held['dtype']}",
            f"pass a model name (loaded in {wanted}) or convert the model first (model.to(torch.{wanted}))",
        )
    if placement.device != "auto" and not same_device(resolve_device(placement.device), held["device"]):
        raise DebiasError(
            f"device {placement.device} was asked for, but the model object passed is on {held['device']}",
            f"pass a model name, or move the model first (model.to('{placement.device}'))",
        )
    return held


def peek_kind(model: Any, kind: str | ModelKind | None = None) -> ModelKind | None:
    """The kind ``model`` will be evaluated as, found without loading weights (None when that is not cheap).

    Used to check the data and the benchmark / kind combination before a model is loaded.
    """
    from peft_debias.models.loading import LoadedModel, ModelKind

    if kind is not None:
        try:
            return ModelKind(kind)
        except ValueError:
            return None
    if isinstance(model, LoadedModel):
        return model.kind
    if not isinstance(model, (str, Path)):
        return infer_kind(model)
    from transformers import AutoConfig

    from peft_debias.models.loading import BUNDLED_PREFIX, bundled_model_path, detect_kind

    name = str(model)
    try:
        folder = bundled_model_path(name) if name.startswith(BUNDLED_PREFIX) else name
        return detect_kind(AutoConfig.from_pretrained(folder))
    except Exception:  # anything unusual: leave it to the real load, which reports it properly
        return None
