"""What the workbench knows about an option, declared on its dataclass field (after transformers'
``HfArgumentParser`` dataclasses).

Every field of the config dataclasses (``haba_core.config``, each method's ``Config``, each synset kind's
``Config``, the experts' ``ExpertConfig``) is made with :func:`option`: its default, one line of help, its range
(``ge``, ``gt``, ``lt``) and, for a string with a fixed set of values, a ``Literal[...]`` annotation (or
``choices=`` when the values belong to another object, such as the registered logger sinks). :func:`option_specs`
reads a dataclass's fields back as :class:`OptionSpec`: ``haba_core.validate`` checks every value against them, the
CLI's flags and ``haba options`` print their help, and the app's New run page draws its widgets from them (a select
box for a field with choices).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING
from typing import Any, Literal

# The arithmetic of forward passes: bf16 autocast, float32, or "auto" (bf16 where the device computes it natively;
# haba_core.protocol.resolve_precision). Evaluation's and every method's ``precision`` take these.
Precision = Literal["auto", "fp32", "bf16"]
NO_NULL = object()  # OptionSpec.null of a field that declares no meaning for null


def option(
    default: Any = MISSING,
    *,
    help: str,
    ge: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
    null: Any = MISSING,
    parse: Callable[[str, Any], Any] | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
    **metadata: Any,
) -> Any:
    """A dataclass field that carries its own help, range and choices (``dataclasses.field(metadata=...)``).

    ``ge``/``gt``/``lt``: a number must be >= / > / < them; ``choices``: the values a string (or each value of a
    tuple) may take, where the annotation is no ``Literal``; ``null``: what ``None`` stands for in a field that is
    not optional (``dsa_strategy``: no augmentation); ``parse(name, value)``: the field's own check, for a value
    with several forms (``synset.basis_size``); other keywords are kept in the metadata as they are."""
    if not help:
        raise TypeError("an option needs its help: one line saying what it sets")
    given = {"ge": ge, "gt": gt, "lt": lt, "choices": None if choices is None else tuple(choices), "parse": parse}
    meta = {"help": help, **{k: v for k, v in given.items() if v is not None}, **metadata}
    if null is not MISSING:
        meta["null"] = null
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One field as front ends and validation see it: annotation resolved, default made, metadata read."""

    name: str
    annotation: Any
    default: Any
    help: str = ""
    choices: tuple[str, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    lt: float | None = None
    null: Any = NO_NULL
    parse: Callable[[str, Any], Any] | None = None
    metadata: Any = dataclasses.field(default_factory=dict, compare=False)

    @functools.cached_property
    def kinds(self) -> frozenset[str]:
        """The kinds of value the annotation allows: among int, float, bool, str, None, tuple, dataclass, other."""
        return frozenset(_kinds(self.annotation))

    @property
    def integer(self) -> bool:
        return "int" in self.kinds and "float" not in self.kinds

    @property
    def nested(self) -> type | None:
        """The dataclass this field holds (a config section such as ``data``), else None."""
        tp = self.annotation
        return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None

    def in_range(self, x: float) -> bool:
        above = (self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
        return above and (self.lt is None or x < self.lt)

    def range_text(self) -> str | None:
        """What a number must be, as messages and help say it: ``an integer >= 1``, ``a number in [0, 1)``."""
        noun = "an integer" if self.integer else "a number"
        if self.lt is not None and (self.ge is not None or self.gt is not None):
            left, low = ("[", self.ge) if self.ge is not None else ("(", self.gt)
            return f"{noun} in {left}{low:g}, {self.lt:g})"
        bounds = [f"{op} {x:g}" for op, x in ((">=", self.ge), (">", self.gt), ("<", self.lt)) if x is not None]
        return f"{noun} {' and '.join(bounds)}" if bounds else None

    def constraint(self) -> str:
        """The range or the choices in words (empty when the field has neither)."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        return self.range_text() or ""

    def describe(self) -> str:
        """The help with the constraint after it: ``outer iterations (an integer >= 1)``."""
        return f"{self.help} ({self.constraint()})" if self.constraint() else self.help


def _kinds(tp: Any) -> set[str]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds(a) for a in typing.get_args(tp)))
    if origin is Literal:
        return {type(a).__name__ for a in typing.get_args(tp)}
    if tp is type(None):
        return {"None"}
    if tp in (int, float, bool, str):
        return {tp.__name__}
    if origin is tuple:
        return {"tuple"}
    return {"dataclass"} if isinstance(tp, type) and dataclasses.is_dataclass(tp) else {"other"}


def _literal_choices(tp: Any) -> tuple[str, ...] | None:
    if typing.get_origin(tp) is Literal:
        return tuple(typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [c for a in typing.get_args(tp) if (c := _literal_choices(a))]
        return tuple(v for c in found for v in c) if found else None
    return None


def _resolve(annotation: Any, cls: type) -> Any:
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, vars(sys.modules[cls.__module__]))  # what get_type_hints does, one field at a time
    except Exception:
        return object


@functools.cache
def option_specs(cls: type) -> dict[str, OptionSpec]:
    """Every field of dataclass ``cls`` as an :class:`OptionSpec`, by name, in field order."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that does not resolve here: that field is checked as "other"
        hints = {f.name: _resolve(f.type, cls) for f in dataclasses.fields(cls)}
    out = {}
    for f in dataclasses.fields(cls):
        m = f.metadata
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = OptionSpec(
            name=f.name,
            annotation=hints[f.name],
            default=default,
            help=m.get("help", ""),
            choices=m.get("choices") or _literal_choices(hints[f.name]),
            ge=m.get("ge"),
            gt=m.get("gt"),
            lt=m.get("lt"),
            null=m.get("null", NO_NULL),
            parse=m.get("parse"),
            metadata=m,
        )
    return out
