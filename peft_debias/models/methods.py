"""PEFT methods as an explicit registry: ``lora``, ``prefix``, ``prompt``, ``ia3`` -> stock peft configs.

Adapters are plain PEFT (no custom ``PeftType``), so ``PeftModel.from_pretrained`` loads them unchanged.
Task types follow DESIGN.md: there is no masked-LM task type in peft, so masked LMs and bare encoders use
``FEATURE_EXTRACTION`` (labels are handled by our own loss); causal LMs use ``CAUSAL_LM``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.models.loading import ModelKind
from peft_debias.models.options import MethodOptions
from peft_debias.models.placement import model_device

# Attention projections per architecture (model_type): LoRA targets (query/value as in PEFTDebias) and IA3 targets.
LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "albert": ["query", "value"],
    "electra": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "deberta-v2": ["query_proj", "value_proj"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "opt": ["q_proj", "v_proj"],
}
IA3_TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
    "roberta": (["key", "value", "output.dense"], ["output.dense"]),
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
}


@dataclass(frozen=True)
class Method:
    """A registered PEFT method: ``build(kind, model_type, options, base_name) -> PeftConfig``."""

    name: str
    description: str
    build: Callable[[ModelKind, str, MethodOptions, str], Any]
    prompt_learning: bool
    mergeable: bool


def task_type(kind: ModelKind):
    """peft task type for a model kind (DESIGN.md section 3)."""
    from peft import TaskType

    return TaskType.CAUSAL_LM if kind is ModelKind.CAUSAL_LM else TaskType.FEATURE_EXTRACTION


def _targets(table: dict[str, Any], model_type: str, method: str, given: list[str] | None) -> Any:
    if given:
        return given
    if model_type not in table:
        raise DebiasError(
            f"no default {method} target modules for model type {model_type!r} (known: {', '.join(sorted(table))})",
            "pass --target-modules with the attention projection names",
        )
    return table[model_type]


def _lora(kind: ModelKind, model_type: str, opt: MethodOptions, base: str):
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type(kind),
        r=opt.r,
        lora_alpha=opt.alpha,
        lora_dropout=opt.dropout,
        target_modules=_targets(LORA_TARGETS, model_type, "LoRA", opt.target_modules),
        fan_in_fan_out=model_type == "gpt2",
    )


def _ia3(kind: ModelKind, model_type: str, opt: MethodOptions, base: str):
    from peft import IA3Config

    if opt.target_modules:
        targets, feedforward = opt.target_modules, [m for m in opt.target_modules if "down" in m or "dense" in m]
    else:
        targets, feedforward = _targets(IA3_TARGETS, model_type, "IA3", None)
    return IA3Config(task_type=task_type(kind), target_modules=targets, feedforward_modules=feedforward)


def _prefix(kind: ModelKind, model_type: str, opt: MethodOptions, base: str):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type=task_type(kind), num_virtual_tokens=opt.num_virtual_tokens)


def _prompt(kind: ModelKind, model_type: str, opt: MethodOptions, base: str):
    from peft import PromptTuningConfig, PromptTuningInit

    if opt.prompt_init_text:
        return PromptTuningConfig(
            task_type=task_type(kind),
            num_virtual_tokens=opt.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=opt.prompt_init_text,
            tokenizer_name_or_path=base,
        )
    return PromptTuningConfig(task_type=task_type(kind), num_virtual_tokens=opt.num_virtual_tokens)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("lora", "LoRA on the attention query/value projections", _lora, False, True),
        Method("prefix", "prefix tuning: trainable key/value prefixes in every layer", _prefix, True, False),
        Method("prompt", "prompt tuning: trainable virtual input tokens", _prompt, True, False),
        Method("ia3", "IA3: learned rescaling of keys, values and feed-forward activations", _ia3, False, True),
    )
}


def get_method(name: str) -> Method:
    """Look up a method; an unknown name lists the known ones."""
    if name not in METHODS:
        raise DebiasError(f"unknown method {name!r} (known: {', '.join(METHODS)})", "pick a known method")
    return METHODS[name]


def build_peft_config(
    method: str, kind: ModelKind, model_type: str, options: MethodOptions | None = None, base_name: str = ""
):
    """The stock peft config for ``method`` on a model of ``kind`` and ``model_type``."""
    return get_method(method).build(kind, model_type, options or MethodOptions(), base_name)


def wrap_model(model, method: str, kind: ModelKind, options: MethodOptions | None = None, base_name: str = ""):
    """``get_peft_model`` with our config, then a dry forward so an unsupported combination fails clearly now."""
    import torch
    from peft import get_peft_model

    model_type = getattr(model.config, "model_type", "?")
    config = build_peft_config(method, kind, model_type, options, base_name)
    ids = torch.tensor([[1, 2, 3]], device=model_device(model))
    dry = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "output_hidden_states": True}
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            before = model(**dry).hidden_states[-1]
            peft_model = get_peft_model(model, config)
            after = peft_model(**dry).hidden_states[-1][:, -ids.shape[1] :]
        model.train(was_training)
    except DebiasError:
        raise
    except Exception as err:
        raise DebiasError(
            f"method {method!r} does not work on model type {model_type!r} ({one_line(err, 160)})",
            "use another method (lora works on most architectures) or pass --target-modules",
        ) from err
    if get_method(method).prompt_learning and torch.allclose(before, after):
        # e.g. ALBERT and MPNet accept peft's past key values and silently ignore them
        raise DebiasError(
            f"method {method!r} has no effect on model type {model_type!r} (its attention ignores the prefix)",
            "use lora or prompt for this architecture",
        )
    return peft_model


def adapter_state_dict(peft_model: Any, adapter_name: str = "default") -> dict[str, Any]:
    """``peft.get_peft_model_state_dict`` without its Hub lookup: when ``base_model_name_or_path`` is not a local
    folder (a Hub id, as in every published adapter), peft asks the Hub for that repo's ``config.json`` on each call,
    to see whether the vocabulary grew. peft-debias never resizes the vocabulary, so the id is hidden for the call
    (an adapter that targets the embeddings still gets them, as with peft's default)."""
    from peft import get_peft_model_state_dict

    config = peft_model.peft_config[adapter_name]
    recorded = config.base_model_name_or_path
    config.base_model_name_or_path = None
    try:
        return get_peft_model_state_dict(peft_model, adapter_name=adapter_name)
    finally:
        config.base_model_name_or_path = recorded
