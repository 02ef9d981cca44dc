"""Downstream use of debiasing adapters (PEFTDebias downstream step): freeze, merge or run them in any model.

:func:`load_debias_adapter` puts one or several adapters (one per bias axis) into the user's model:

* ``mode="freeze"``: the adapters are frozen (all their parameters, including prompt-learning encoders, which peft
  leaves trainable) and the base model and task head train, as in the paper's downstream fine-tuning;
  ``freeze_layer_norm=True`` also freezes LayerNorm / RMSNorm weights, as the paper's code does.
* ``mode="merge"``: LoRA / IA3 adapters are merged into the weights, in the order given; the plain transformers
  model comes back. Prefix and prompt adapters add virtual tokens, not weight deltas, and cannot be merged.
* ``mode="inference"``: everything frozen, eval mode.

An adapter trained on ``XForMaskedLM``, ``XModel`` or ``XForCausalLM`` loads into any head of the same base
(``XForSequenceClassification``, ``XForTokenClassification``, bare ``XModel``): its keys are mapped to the model's
layout, and every tensor of the file must land in the model (see :mod:`peft_debias.loader.checks`).

Token classification with a prompt-tuning adapter: the logits include the virtual-token positions, so pad labels
on the left with ``num_virtual_tokens`` x -100 (prefix tuning needs no padding).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import torch

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.loader.checks import (
    AdapterFiles,
    FingerprintCache,
    check_base,
    check_landed,
    check_tensors,
    map_adapter_keys,
    read_adapter,
)

logger = logging.getLogger(__name__)

MODES = ("freeze", "merge", "inference")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
AdapterSource = str | os.PathLike | AdapterFiles


class _TrainState:
    """The ``requires_grad`` flags and train/eval mode of a model, to restore after a failure or a merge."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.flags = [(p, p.requires_grad) for p in model.parameters()]
        self.training = model.training

    def restore(self, model: torch.nn.Module) -> None:
        for param, flag in self.flags:
            param.requires_grad_(flag)
        model.train(self.training)


def _is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _task_type(model: torch.nn.Module) -> Any:
    """The peft wrapper that fits the *target* model: generation models get theirs, every other head (classifiers,
    bare encoders, masked LMs) the feature-extraction wrapper, which passes ``labels`` through and leaves the head
    unwrapped (``SEQ_CLS`` would copy the classifier into a per-adapter ``modules_to_save``)."""
    from peft import TaskType
    from transformers import GenerationMixin

    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return TaskType.SEQ_2_SEQ_LM
    return TaskType.CAUSAL_LM if isinstance(model, GenerationMixin) else TaskType.FEATURE_EXTRACTION


def _peft_config(adapter: AdapterFiles, task_type: Any) -> Any:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(adapter.peft_type)
    if config_cls is None:
        raise DebiasError(f"adapter {adapter.source} has unknown peft_type {adapter.peft_type!r}", "upgrade peft")
    try:
        config = config_cls.from_pretrained(str(adapter.path))
    except Exception as err:
        raise DebiasError(f"adapter config of {adapter.source} is invalid: {one_line(err, 200)}", "fix it") from err
    config.task_type = task_type
    config.inference_mode = True
    if config.is_prompt_learning:
        # Recomputed from the target model, so a different hidden size shows up as a shape mismatch below.
        config.num_layers = config.token_dim = config.num_attention_heads = config.num_transformer_submodules = None
    return config


def _adapter_names(adapters: list[AdapterFiles], given: Any, taken: Sequence[str]) -> list[str]:
    if given is None:  # each under its axis name; a repeated axis gets a suffix (gender, gender_2, ...)
        names = []
        for adapter in adapters:
            stem = re.sub(r"[^A-Za-z0-9_-]", "_", adapter.axis) if adapter.axis else "default"
            name, count = stem, 1
            while name in names or name in taken:
                count += 1
                name = f"{stem}_{count}"
            names.append(name)
    else:
        names = [str(n) for n in _as_list(given)]
        if len(names) != len(adapters):
            raise DebiasError(
                f"{len(names)} adapter names for {len(adapters)} adapters", "pass one adapter_name per adapter"
            )
    for name in names:
        if not _NAME.match(name):
            raise DebiasError(f"invalid adapter name {name!r}", "use letters, digits, '_' and '-'")
    seen = list(taken)
    for name in names:
        if name in seen:
            raise DebiasError(
                f"two adapters would both be named {name!r}", "pass adapter_name with one distinct name per adapter"
            )
        seen.append(name)
    return names


def adapter_parameters(peft_model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The adapters' own parameters in a ``PeftModel``: tuner-layer weights (not their ``base_layer``) and the
    prompt encoders of prefix / prompt tuning."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    ids: set[int] = set()
    for module in peft_model.modules():
        if isinstance(module, BaseTunerLayer):
            ids.update(id(p) for n, p in module.named_parameters() if not n.startswith("base_layer."))
    encoder = getattr(peft_model, "prompt_encoder", None)
    if isinstance(encoder, torch.nn.Module):
        ids.update(id(p) for p in encoder.parameters())
    return [(n, p) for n, p in peft_model.named_parameters() if id(p) in ids]


def _is_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


def _set_trainability(peft_model: torch.nn.Module, mode: str, freeze_layer_norm: bool) -> None:
    frozen = {id(p) for _, p in adapter_parameters(peft_model)}
    if freeze_layer_norm:
        frozen.update(id(p) for m in peft_model.modules() if _is_norm(m) for p in m.parameters(recurse=False))
    for param in peft_model.parameters():
        param.requires_grad_(mode == "freeze" and id(param) not in frozen)


def _load_weights(peft_model: Any, adapter: AdapterFiles, name: str) -> None:
    """Load ``adapter``'s tensors into the (already injected) adapter ``name``, checking every step."""
    from peft import set_peft_model_state_dict

    from peft_debias.models.methods import adapter_state_dict

    base = peft_model.get_base_model()
    model_class = type(base).__name__
    expected = adapter_state_dict(peft_model, name)
    given = map_adapter_keys(adapter.weights, set(expected), getattr(base, "base_model_prefix", "") or "")
    check_tensors(adapter, name, expected, given, model_class)
    set_peft_model_state_dict(peft_model, given, adapter_name=name)
    check_landed(adapter, adapter_state_dict(peft_model, name), given, model_class)
    logger.info("loaded adapter %r (%s, %d tensors) from %s", name, adapter.method, len(given), adapter.path)


def _attach(model: Any, group: list[tuple[AdapterFiles, str]], task_type: Any) -> Any:
    """Inject and load adapters into ``model`` (plain or ``PeftModel``); on failure undo what was injected."""
    from peft import MODEL_TYPE_TO_PEFT_MODEL_MAPPING, PeftModel

    created = not _is_peft(model)
    peft_model = None if created else model
    state = _TrainState(model)
    added: list[str] = []
    if not created:  # new adapters join the wrapper the model already has
        task_type = next(iter(model.peft_config.values())).task_type
    try:
        for adapter, name in group:
            config = _peft_config(adapter, task_type)
            try:
                if peft_model is None:
                    peft_model = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(
                        getattr(config.task_type, "value", config.task_type), PeftModel
                    )(model, config, adapter_name=name)
                else:
                    peft_model.add_adapter(name, config)
            except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as err:
                raise DebiasError(
                    f"adapter {adapter.source} ({adapter.method}) does not fit {type(model).__name__}: "
                    f"{one_line(err, 200)}",
                    "load it into a model of the base architecture it was trained on",
                ) from err
            added.append(name)
            _load_weights(peft_model, adapter, name)
    except BaseException:
        _undo(peft_model, created, added)
        state.restore(model)
        raise
    return peft_model


def _undo(peft_model: Any, created: bool, added: list[str]) -> None:
    if peft_model is None or not added:
        return
    with contextlib.suppress(Exception):
        if not created:
            for name in added:
                peft_model.delete_adapter(name)
        elif not peft_model.peft_config[added[0]].is_prompt_learning:
            peft_model.base_model.unload()  # puts the original modules back into the user's model


def _groups(adapters: list[AdapterFiles], names: list[str]) -> list[list[tuple[AdapterFiles, str]]]:
    """Consecutive adapters of one peft type (peft holds one type per model)."""
    groups: list[list[tuple[AdapterFiles, str]]] = []
    for adapter, name in zip(adapters, names, strict=True):
        if groups and groups[-1][0][0].peft_type == adapter.peft_type:
            groups[-1].append((adapter, name))
        else:
            groups.append([(adapter, name)])
    return groups


def check_mergeable(adapter: AdapterFiles) -> None:
    """Refuse prefix / prompt adapters for merging: they add virtual tokens, not weight deltas."""
    if adapter.prompt_learning:
        raise DebiasError(
            f"adapter {adapter.source} is {adapter.method} ({adapter.peft_type}): it adds virtual tokens, not "
            "weight deltas, so it cannot be merged into the weights",
            "use mode='freeze' or mode='inference' to run it with the model",
        )


def _merge(model: Any, adapters: list[AdapterFiles], names: list[str]) -> Any:
    if _is_peft(model):
        raise DebiasError(
            "merge mode needs the plain transformers model, not a PeftModel",
            "call merge_and_unload() on it first, or pass the base model",
        )
    for adapter in adapters:
        check_mergeable(adapter)
    state, task_type = _TrainState(model), _task_type(model)
    for group in _groups(adapters, names):
        peft_model = _attach(model, group, task_type)
        try:
            model = peft_model.merge_and_unload(safe_merge=True, adapter_names=[name for _, name in group])
        except Exception as err:
            _undo(peft_model, True, [name for _, name in group])
            state.restore(model)
            raise DebiasError(
                f"merging {', '.join(a.source for a, _ in group)} failed: {one_line(err, 200)}",
                "use mode='freeze' or mode='inference' instead",
            ) from err
        logger.info("merged adapter(s) %s into the weights", ", ".join(name for _, name in group))
    state.restore(model)  # merging reuses the parameter objects, so the flags carry over
    return model


def _check_stack(adapters: list[AdapterFiles], existing: Any) -> None:
    types = [a.peft_type for a in adapters]
    prompt = [a.prompt_learning for a in adapters]
    if existing is not None:
        for config in existing.peft_config.values():
            types.append(str(config.peft_type.value if hasattr(config.peft_type, "value") else config.peft_type))
            prompt.append(bool(config.is_prompt_learning))
    if len(set(types)) > 1:
        raise DebiasError(
            f"adapters of different PEFT types ({', '.join(sorted(set(types)))}) cannot be stacked in one model",
            "train every axis with the same method, or merge LoRA/IA3 adapters in order with mode='merge'",
        )
    if sum(prompt) > 1:
        raise DebiasError(
            f"{sum(prompt)} prompt-learning adapters (prefix/prompt tuning) cannot be stacked: peft runs one at a time",
            "load one prefix/prompt adapter, or use LoRA adapters for several axes",
        )


def load_debias_adapter(
    model: torch.nn.Module,
    path_or_repo: AdapterSource | Sequence[AdapterSource],
    mode: str = "freeze",
    adapter_name: str | Sequence[str] | None = None,
    *,
    revision: str | Sequence[str | None] | None = None,
    freeze_layer_norm: bool = False,
    allow_base_mismatch: bool = False,
    allow_pickle: bool = False,
    token: str | None = None,
) -> Any:
    """Put debiasing adapters into ``model`` for downstream fine-tuning, merging or inference.

    Args:
        model: a transformers model of the adapters' base, with any head (or a ``PeftModel`` to add axes to, in
            freeze / inference mode).
        path_or_repo: an adapter folder, a Hub repo id (downloaded with the Hub cache; ``HF_HUB_OFFLINE=1`` uses
            the cache only), a :class:`~peft_debias.loader.checks.AdapterFiles`, or a list of them (several axes).
        mode: ``freeze`` (adapters frozen, base + head trainable), ``merge`` (LoRA/IA3 merged into the weights in
            order; returns the plain model) or ``inference`` (all frozen, eval mode).
        adapter_name: one name per adapter; default: each adapter's axis (``debias_config.json``), else
            ``default``.
        revision: Hub revision, one for all adapters or one per adapter.
        freeze_layer_norm: in freeze mode, also freeze LayerNorm / RMSNorm weights (the paper's code does).
        allow_base_mismatch: load even if the adapter's recorded base (fingerprint or id) differs from ``model``.
        allow_pickle: accept ``adapter_model.bin`` (pickle) when no safetensors file exists.
        token: Hub token for private repos.

    Returns:
        The ``PeftModel`` (freeze / inference; several LoRA adapters are active together) whose
        ``save_pretrained`` writes the whole fine-tuned model with its adapters (:mod:`peft_debias.loader.saving`;
        reload with :func:`~peft_debias.loader.reload.load_downstream`), or the merged plain
        model (merge, in eval mode with its ``requires_grad`` flags unchanged). Freeze keeps the model's train/eval
        mode.

    Raises:
        DebiasError: unknown mode, path or repo; corrupted weights; wrong base; a missing or extra adapter tensor or
            a shape mismatch (named, with both shapes); merging a prefix/prompt adapter; stacking adapters that
            peft cannot run together. On error the model is left as it was (for merge: with the adapter groups
            merged before the failing one).
    """
    if mode not in MODES:
        raise DebiasError(f"unknown mode {mode!r}", f"use one of {', '.join(MODES)}")
    sources = _as_list(path_or_repo)
    if not sources:
        raise DebiasError("no adapter given", "pass an adapter folder or Hub repo id")
    revisions = _as_list(revision) if isinstance(revision, (list, tuple)) else [revision] * len(sources)
    if len(revisions) != len(sources):
        raise DebiasError(f"{len(revisions)} revisions for {len(sources)} adapters", "pass one revision per adapter")
    adapters = [
        s if isinstance(s, AdapterFiles) else read_adapter(s, r, allow_pickle=allow_pickle, token=token)
        for s, r in zip(sources, revisions, strict=True)
    ]
    existing = model if _is_peft(model) else None
    names = _adapter_names(adapters, adapter_name, list(existing.peft_config) if existing is not None else [])
    fingerprints = FingerprintCache(model)
    for adapter in adapters:  # every check before the model is touched
        check_base(adapter, fingerprints, allow_base_mismatch)
    if mode == "merge":
        merged = _merge(model, adapters, names)
        merged.eval()
        return merged
    _check_stack(adapters, existing)
    training = model.training
    active = list(existing.active_adapters) if existing is not None else []
    peft_model = _attach(model, list(zip(adapters, names, strict=True)), _task_type(model))
    if len(active) + len(names) > 1:
        peft_model.base_model.set_adapter(active + names)  # several LoRA axes at once (marks them trainable)
    _set_trainability(peft_model, mode, freeze_layer_norm)
    peft_model.train(training and mode == "freeze")
    from peft_debias.loader.saving import adapter_record, adopt  # save_pretrained writes the whole model

    records = {name: adapter_record(adapter) for adapter, name in zip(adapters, names, strict=True)}
    peft_model = adopt(peft_model, records, freeze_layer_norm)
    logger.info("adapters %s loaded in %s mode", ", ".join(names), mode)
    return peft_model
