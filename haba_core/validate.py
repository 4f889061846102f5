"""Validation of every option value, in one place.

``config._build`` (hence ``RunConfig.from_dict``, ``resolve_config``, the CLI, the app's New run page and
library callers alike), ``Method.make_config``, ``Synset.make_options`` and the experts' config build their
dataclasses through :func:`checked_fields`, which rejects unknown names (with close matches) and runs each
value through :func:`check_value`. A value is checked against its field's annotation (an
integer field takes integers, and integral floats such as ``1e3`` become ints; a float field takes numbers,
never booleans) and against the rule its name implies (learning rates > 0, momenta in [0, 1), counts >= 1,
``*_every`` >= 0, ...). A bad value raises a :class:`ConfigError` that names the option, the value and what to
use instead, before any data is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from fnmatch import fnmatch
from typing import Any

from haba_core.errors import ConfigError, did_you_mean

# (name patterns, predicate on the number, what to use) in priority order; the first matching pattern wins.
_RULES: list[tuple[tuple[str, ...], Callable[[float], bool], str]] = [
    (("momentum*", "*_momentum"), lambda x: 0 <= x < 1, "a number in [0, 1)"),
    (("weight_decay", "*_weight", "lambda_*"), lambda x: x >= 0, "a number >= 0"),
    (("lr", "lr_*", "*_lr", "temperature", "budget_ipc"), lambda x: x > 0, "a number > 0"),
    (("*_every", "val_per_class", "seed", "val_seed", "inner_loop"), lambda x: x >= 0, "an integer >= 0"),
    (
        (
            "iterations",
            "epochs",
            "seeds",
            "batch*",
            "*_batch",
            "syn_steps",
            "expert_epochs",
            "max_start_epoch",
            "n_bases",
            "n_hallucinators",
            "extractor_width",
            "extractor_depth",
            "outer_loop",
            "bn_size_pc",
            "max_experts",
            "*_limit",
            "num_experts",
        ),
        lambda x: x >= 1,
        "an integer >= 1",
    ),
]


# string options whose values form a fixed set, by dotted name, else by field name (wherever the field lives)
_CHOICES: dict[str, tuple[str, ...]] = {"precision": ("auto", "fp32", "bf16")}


def _rule(name: str) -> tuple[Callable[[float], bool], str] | None:
    for patterns, ok, what in _RULES:
        if any(fnmatch(name, p) for p in patterns):
            return ok, what
    return None


def _kinds(annotation: Any) -> set[str]:
    """The primitive types an annotation allows: subset of {int, float, bool, str, None, other}."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = {p.strip() for p in text.replace("Optional[", "").replace("]", "").split("|")}
    kinds = set()
    for p in parts:
        kinds.add(p if p in ("int", "float", "bool", "str", "None") else "other")
    return kinds


def checked_fields(
    cls: type,
    params: Mapping[str, Any] | None,
    prefix: str,
    unknown: Callable[[str, str], str],
    *,
    skip: Iterable[str] = (),
    also: Iterable[str] = (),
    convert: Callable[[dataclasses.Field, Any], Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of dataclass ``cls`` set in ``params``, each value checked.

    A value goes through ``convert(field, value)`` when given (nested dataclasses, tuples), else through
    :func:`check_value` as option ``prefix + key``. A key that is no field of ``cls`` is dropped when it is in
    ``skip`` and otherwise raises ``ConfigError(unknown(key, hint))``, ``hint`` naming close matches among the
    fields and ``also``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    skip = set(skip)
    kept: dict[str, Any] = {}
    for key, value in dict(params or {}).items():
        if key in fields:
            f = fields[key]
            kept[key] = convert(f, value) if convert else check_value(prefix + key, value, f.type)
        elif key not in skip:
            raise ConfigError(unknown(key, did_you_mean(key, [*fields, *also], prefix)))
    return kept


def check_value(name: str, value: Any, annotation: Any) -> Any:
    """``value`` for option ``name`` (dotted, for messages) checked against ``annotation`` and the name's rule;
    returns it (integral floats for integer fields come back as ints). Raises ConfigError saying what to do."""
    field = name.rsplit(".", 1)[-1]
    kinds = _kinds(annotation)
    if value is None:
        if "None" in kinds or "other" in kinds:
            return None
        if field == "dsa_strategy":  # null: no augmentation
            return ""
        raise ConfigError(f"{name} cannot be empty (null); set a value or leave it out for the default.")
    if field == "basis_size":
        return _basis_size(name, value)
    if "other" in kinds:  # dicts, tuples, ...: their owners check them
        return value
    numeric = kinds & {"int", "float"}
    if numeric and not isinstance(value, bool) and isinstance(value, (int, float)):
        if "float" not in numeric:  # an integer field
            if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
                raise ConfigError(f"{name}={value!r} is not an integer; use a whole number.")
            value = int(value)
        elif not math.isfinite(value):
            raise ConfigError(
                f"{name}={value!r} is not a finite number; use {_rule(field)[1] if _rule(field) else 'one'}."
            )
        rule = _rule(field)
        if rule is not None and not rule[0](value):
            raise ConfigError(f"{name}={value!r} is out of range; use {rule[1]}.")
        return value
    if "bool" in kinds and isinstance(value, bool):
        return value
    if "str" in kinds and isinstance(value, str):
        choices = _CHOICES.get(name) or _CHOICES.get(field)
        if choices and value not in choices:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}; use one of them.")
        return value
    wanted = " or ".join(sorted(k for k in kinds if k != "None")) or "a value"
    if numeric and isinstance(value, str):
        raise ConfigError(f"{name}={value!r} is not a number; use {_rule(field)[1] if _rule(field) else wanted}.")
    raise ConfigError(f"{name}={value!r} has the wrong type ({type(value).__name__}); use {wanted}.")


def check_choices(name: str, values: tuple, choices: Iterable[str] | None) -> tuple:
    """``values`` of a tuple option, each checked against the ``choices`` its field declares (``metadata``), once
    each; unchecked when it declares none (``eval.nets``: the evaluation checks its networks)."""
    if choices is None:
        return values
    for v in values:
        if v not in choices:
            raise ConfigError(
                f"{name}={v!r} is not one of {', '.join(choices)}.{did_you_mean(v, choices)} Use some of them."
            )
    return tuple(dict.fromkeys(values))


def _basis_size(name: str, value: Any) -> int | str | None:
    if isinstance(value, str) and value.strip().lower() in ("auto", "full"):
        return "auto" if value.strip().lower() == "auto" else None
    if isinstance(value, str) and value.strip().isdigit():  # typed into a text field
        value = int(value.strip())
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value != int(value) or value < 3:
        raise ConfigError(
            f"{name}={value!r} is invalid; use 'auto' (full size when it fits the budget, else the largest "
            "whole-factor reduction that does), 'full', or an integer >= 3."
        )
    return int(value)
