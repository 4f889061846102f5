"""Validation of every option value, in one place, against what its field declares.

``config._build`` (hence ``RunConfig.from_dict``, ``resolve_config``, the CLI, the app's New run page and
library callers alike), ``Method.make_config``, ``Synset.make_options`` and the experts' config build their
dataclasses through :func:`checked_fields`, which rejects unknown names (with close matches) and runs each
value through :func:`check_option`. A value is checked against its field's annotation (an integer field takes
integers, and integral floats such as ``1e3`` become ints; a float field takes numbers, never booleans) and
against what the field declares with :func:`haba_core.options.option`: its range (learning rates > 0, momenta in
[0, 1), counts >= 1, ...), its choices (a ``Literal`` annotation or ``choices=``) or its own ``parse``. A bad value
raises a :class:`ConfigError` that names the option, the value and what to use instead, before any data is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from haba_core.errors import ConfigError, did_you_mean
from haba_core.options import NO_NULL, OptionSpec, option_specs


def checked_fields(
    cls: type,
    params: Mapping[str, Any] | None,
    prefix: str,
    unknown: Callable[[str, str], str],
    *,
    skip: Iterable[str] = (),
    also: Iterable[str] = (),
    convert: Callable[[OptionSpec, Any], Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of dataclass ``cls`` set in ``params``, each value checked.

    A value goes through ``convert(spec, value)`` when given (nested dataclasses), else through
    :func:`check_option` as option ``prefix + key``. A key that is no field of ``cls`` is dropped when it is in
    ``skip`` and otherwise raises ``ConfigError(unknown(key, hint))``, ``hint`` naming close matches among the
    fields and ``also``.
    """
    specs = option_specs(cls)
    skip = set(skip)
    kept: dict[str, Any] = {}
    for key, value in dict(params or {}).items():
        if key in specs:
            spec = specs[key]
            kept[key] = convert(spec, value) if convert else check_option(prefix + key, value, spec)
        elif key not in skip:
            raise ConfigError(unknown(key, did_you_mean(key, [*specs, *also], prefix)))
    return kept


def check_option(name: str, value: Any, spec: OptionSpec) -> Any:
    """``value`` for option ``name`` (dotted, for messages) checked against its field ``spec``; returns it (integral
    floats for integer fields come back as ints, a tuple option's comma text as a tuple). Raises ConfigError saying
    what to do."""
    kinds = spec.kinds
    if value is None:
        if kinds & {"None", "tuple", "dataclass", "other"}:
            return None
        if spec.null is not NO_NULL:  # e.g. dsa_strategy: null means no augmentation
            return spec.null
        raise ConfigError(f"{name} cannot be empty (null); set a value or leave it out for the default.")
    if spec.parse is not None:
        return spec.parse(name, value)
    if "tuple" in kinds:
        if not isinstance(value, (str, list, tuple)):
            raise ConfigError(f"{name}={value!r} has the wrong type ({type(value).__name__}); use a list of names.")
        values = tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else tuple(value)
        return check_choices(name, values, spec.choices)
    if kinds & {"dataclass", "other"}:  # dicts and sections: their owners check them
        return value
    what = spec.range_text()
    numeric = kinds & {"int", "float"}
    if numeric and not isinstance(value, bool) and isinstance(value, (int, float)):
        if spec.integer:
            if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
                raise ConfigError(f"{name}={value!r} is not an integer; use a whole number.")
            value = int(value)
        elif not math.isfinite(value):
            raise ConfigError(f"{name}={value!r} is not a finite number; use {what or 'one'}.")
        if not spec.in_range(value):
            raise ConfigError(f"{name}={value!r} is out of range; use {what}.")
        return value
    if "bool" in kinds and isinstance(value, bool):
        return value
    if "str" in kinds and isinstance(value, str):
        if spec.choices and value not in spec.choices:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(spec.choices)}; use one of them.")
        return value
    wanted = " or ".join(sorted(k for k in kinds if k != "None")) or "a value"
    if numeric and isinstance(value, str):
        raise ConfigError(f"{name}={value!r} is not a number; use {what or wanted}.")
    raise ConfigError(f"{name}={value!r} has the wrong type ({type(value).__name__}); use {wanted}.")


def check_choices(name: str, values: tuple, choices: Iterable[str] | None) -> tuple:
    """``values`` of a tuple option, each checked against the ``choices`` its field declares, once each; unchecked
    when it declares none (``eval.nets``: the evaluation checks its networks)."""
    if choices is None:
        return values
    for v in values:
        if v not in choices:
            raise ConfigError(
                f"{name}={v!r} is not one of {', '.join(choices)}.{did_you_mean(v, choices)} Use some of them."
            )
    return tuple(dict.fromkeys(values))


def basis_size(name: str, value: Any) -> int | str | None:
    """``synset.basis_size``: ``"auto"``, ``"full"`` (None) or an integer >= 3 (also typed as text)."""
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
