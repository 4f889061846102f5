"""The New-run form's model: presets, every hyperparameter with its default, and checks before launch.

Pure Python over ``haba_core.config`` / ``haba_core.budget``: the page renders :func:`field_specs` as
widgets, collects their values into a flat ``{dotted.key: value}`` mapping and calls :func:`check`, which
resolves the config exactly as the engine will and explains anything that would fail (an unavailable
backend, a budget that cannot hold the synset, an unknown hyperparameter, missing experts) before a process is
started. A widget's help, choices and minimum come from its field's declaration (``haba_core.options``), and the
experts panel from what the backend declares it needs (``Method.expert_field``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.jobs import REPO_ROOT

# Backends, synset kinds and networks come from the engine's registries (with their labels and help): a newly
# registered one appears on the pages without editing the workbench.
DEFAULT_PRESET = "fmnist_cpu_dm.yaml"
# Shown on the form itself; every other field goes to "Advanced".
MAIN_KEYS = (
    "data.name",
    "method.name",
    "synset.kind",
    "synset.budget_ipc",
    "synset.params.n_hallucinators",
    "synset.basis_size",
    "iterations",
    "seed",
    "device",
)
AUTO = "auto"


@dataclass(frozen=True)
class FieldSpec:
    """One hyperparameter: dotted key, widget kind, engine default, help and choices, all from its field's
    declaration (:func:`haba_core.options.option`)."""

    key: str
    kind: str  # bool | int | float | str | opt_int | opt_float | opt_bool | list | json
    default: Any
    help: str = ""  # the field's help with its range or choices
    # the values the field takes (a Literal or its choices): a select box, or a multiselect for a list field
    choices: tuple[str, ...] = ()
    min_value: float | None = None  # the smallest value a number takes (its field's ge), the widget's minimum

    @property
    def section(self) -> str:
        return self.key.split(".")[0] if "." in self.key else "run"

    @property
    def label(self) -> str:
        return self.key.rsplit(".", 1)[-1].replace("_", " ")


def presets(folder: Path | None = None) -> list[Path]:
    """Experiment files offered as presets: ``configs/*.yaml`` (and ``*.json``), sorted by name."""
    folder = Path(folder or REPO_ROOT / "configs")
    if not folder.is_dir():
        return []
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml"), *folder.glob("*.json")])


def default_preset(options: list[Path]) -> Path | None:
    for p in options:
        if p.name == DEFAULT_PRESET:
            return p
    return None


def preset_config(path: Path | None) -> dict:
    """The resolved config a preset stands for (engine defaults when ``path`` is None)."""
    from haba_core.config import resolve_config

    return resolve_config(files=[path] if path else []).to_dict()


def available_backends() -> tuple[list[str], str | None]:
    """(backends the engine registers, None) or ([], why the methods could not be loaded)."""
    try:
        from haba_core.methods import list_methods

        return list_methods(), None
    except Exception as e:  # shown to the user, e.g. a half-installed engine
        return [], f"{type(e).__name__}: {e}"


def available_nets() -> list[str]:
    from haba_core.nets import list_nets

    return list_nets()


def available_synsets() -> list[str]:
    """Registered synset kinds, HaBa first (the workbench's subject), then the others by name."""
    from haba_core.synsets import SYNSETS

    return sorted(SYNSETS.list(), key=lambda k: (k != "haba", k))


def _registry(family: str):
    from haba_core.data import DATASETS
    from haba_core.methods import METHODS
    from haba_core.nets import NETS
    from haba_core.synsets import SYNSETS

    return {"dataset": DATASETS, "method": METHODS, "synset": SYNSETS, "net": NETS}[family]


def label(family: str, name: str) -> str:
    """How the pages name a registered dataset, backend (``method``), synset kind or net; the name if unknown."""
    try:
        return _registry(family).label(name)
    except Exception:  # an unknown or unloadable entry is shown by its name
        return str(name)


def help_text(family: str, names: list[str] | None = None) -> str:
    """``Label: help.`` for every registered entry of ``family`` (or ``names``), for a widget's help."""
    reg = _registry(family)
    return " ".join(f"{reg.label(n)}: {reg.help(n)}." for n in (names or reg.list()) if reg.help(n))


def synset_class(kind: str):
    from haba_core.synsets import SYNSETS

    return SYNSETS.get(kind)


def available_datasets() -> list[str]:
    from haba_core.data import list_datasets

    return list_datasets()


# -- field specs from the engine's dataclasses ---------------------------------------------------------------
def _kind(kinds: frozenset[str]) -> str:
    """The widget kind of a field that allows values of ``kinds`` (``OptionSpec.kinds``)."""
    if "str" in kinds:  # also basis_size: int | str | None ("auto", "full" or a number)
        return "str"
    for base in ("bool", "int", "float"):
        if base in kinds:
            return f"opt_{base}" if "None" in kinds else base
    return "list" if "tuple" in kinds else "json"


def _specs(cls: type, prefix: str, skip: tuple[str, ...] = ()) -> list[FieldSpec]:
    from haba_core.options import option_specs

    out = []
    for o in option_specs(cls).values():
        if o.name in skip or o.nested is not None or o.name in ("method", "net"):  # sections have their own specs
            continue
        out.append(FieldSpec(prefix + o.name, _kind(o.kinds), o.default, o.describe(), tuple(o.choices or ()), o.ge))
    return out


def field_spec(key: str) -> FieldSpec:
    """The spec of one engine-level field (``iterations``, ``synset.budget_ipc``, ...)."""
    return next(s for s in field_specs() if s.key == key)


def field_specs() -> list[FieldSpec]:
    """Every engine-level hyperparameter (run, data, synset, haba, eval) with its engine default."""
    from haba_core.config import DataConfig, EvalConfig, HabaLossConfig, RunConfig, SynsetConfig

    specs = _specs(RunConfig, "") + _specs(DataConfig, "data.") + _specs(SynsetConfig, "synset.", skip=("params",))
    specs += synset_option_specs() + _specs(HabaLossConfig, "haba.") + _specs(EvalConfig, "eval.")
    return specs


def synset_option_specs() -> list[FieldSpec]:
    """Every registered synset kind's own options (``synset.params.*``, from its ``Config``), each once."""
    specs = [s for kind in available_synsets() for s in _specs(synset_class(kind).Config, "synset.params.")]
    return [s for i, s in enumerate(specs) if s.key not in {t.key for t in specs[:i]}]


def synset_takes(kind: str, spec: FieldSpec) -> bool:
    """Whether synset kind ``kind`` reads the option ``spec`` (a ``synset.params.*`` field)."""
    try:
        return spec.key.rsplit(".", 1)[-1] in synset_class(kind).option_names()
    except Exception:  # an unknown kind reads nothing
        return False


def method_specs(name: str) -> list[FieldSpec] | None:
    """The backend's own hyperparameters (``method.params.*``) with their defaults, or None if unavailable."""
    try:
        from haba_core.methods import METHODS

        cls = METHODS.get(name)
    except Exception:
        return None
    cfg = getattr(cls, "Config", None)
    if not dataclasses.is_dataclass(cfg):
        return []
    return _specs(cfg, "method.params.")


def net_specs(name: str, current: dict) -> list[FieldSpec]:
    """The distillation network's keyword parameters (``net.params.*``): its signature, else the preset's."""
    specs: dict[str, FieldSpec] = {}
    try:
        from haba_core.nets import NETS as REG

        factory = REG.get(name)
        for p in inspect.signature(factory).parameters.values():
            if p.default is inspect.Parameter.empty or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            if isinstance(p.default, (bool, int, float, str)):
                kind = {bool: "bool", int: "int", float: "float", str: "str"}[type(p.default)]
                specs[p.name] = FieldSpec(f"net.params.{p.name}", kind, p.default)
    except Exception:  # nets not importable: fall back to what the preset sets
        pass
    for k, v in (current or {}).items():
        if k not in specs and isinstance(v, (bool, int, float, str)):
            kind = {bool: "bool", int: "int", float: "float", str: "str"}[type(v)]
            specs[k] = FieldSpec(f"net.params.{k}", kind, v)
    return list(specs.values())


# -- values <-> config ---------------------------------------------------------------------------------------
def get_dotted(d: dict, key: str) -> Any:
    node: Any = d
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def widget_value(spec: FieldSpec, value: Any) -> Any:
    """A config value as its widget holds it (lists as comma text, dicts as JSON text)."""
    if spec.kind == "list":
        return ",".join(value or ())
    if spec.kind == "json":
        return json.dumps(value or {})
    if spec.kind == "opt_bool":
        return AUTO if value is None else ("true" if value else "false")
    return value


def config_value(spec: FieldSpec, value: Any) -> Any:
    """A widget's value as the config wants it; raises ValueError with a readable message."""
    if spec.kind == "list":
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        return [v.strip() for v in str(value or "").split(",") if v.strip()]
    if spec.kind == "json":
        try:
            out = json.loads(value or "{}")
        except json.JSONDecodeError as e:
            raise ValueError(f'{spec.key} must be JSON, e.g. {{"im_size": 16}} ({e})') from e
        if not isinstance(out, dict):
            raise ValueError(f"{spec.key} must be a JSON object.")
        return out
    if spec.kind == "opt_bool":
        return None if value in (None, AUTO) else value == "true"
    if spec.kind in ("int", "opt_int") and value is not None:
        return int(value)
    if spec.kind in ("float", "opt_float") and value is not None:
        return float(value)
    if spec.kind == "str" and spec.default is None and not value:
        return None
    return value


def float_step(value: float | None) -> float:
    """A +/- step one order of magnitude below ``value`` (0.01 for zero or None)."""
    import math

    if not value:
        return 0.01
    return 10.0 ** (math.floor(math.log10(abs(float(value)))) - 1)


def needs_experts(method: str) -> bool:
    """Whether the backend declares that it reads expert trajectories (``Method.needs_experts``: MTT)."""
    try:
        from haba_core.methods import METHODS

        return METHODS.get(method).needs_experts()
    except Exception:  # an unknown or unloadable backend needs nothing the page could offer
        return False


def expert_field(method: str) -> FieldSpec | None:
    """The backend hyperparameter naming its expert-trajectory folder (``Method.expert_field``), if it needs one."""
    if not needs_experts(method):
        return None
    from haba_core.methods import METHODS

    name = METHODS.get(method).expert_field
    return next((s for s in method_specs(method) or () if s.key == f"method.params.{name}"), None)


def parse_set_lines(text: str) -> list[str]:
    """``key=value`` lines of the free-form override box (blank lines and ``#`` comments skipped)."""
    out = []
    for line in (text or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def build_config(base: dict, values: dict[str, Any], set_lines: list[str] = ()) -> dict:
    """``base`` (a preset's resolved config) with the form's ``values`` and ``--set`` lines applied.

    ``synset.basis_size == "auto"`` is resolved later by :func:`check` (it depends on the budget).
    """
    from haba_core.config import apply_overrides

    d = json.loads(json.dumps(base))
    if values.get("method.name") and values["method.name"] != get_dotted(d, "method.name"):
        d["method"] = {"name": values["method.name"], "params": {}}  # another backend: its own defaults
    if values.get("net.name") and values["net.name"] != get_dotted(d, "net.name"):
        d["net"] = {"name": values["net.name"], "params": {}}
    for key, value in values.items():
        set_dotted(d, key, value)
    return apply_overrides(d, list(set_lines)) if set_lines else d


def auto_basis_size(info, kind: str, budget_ipc: float | None, **options) -> int | None:
    """The engine's rule for ``basis_size="auto"`` (:func:`haba_core.budget.auto_basis_size`), so the page shows
    exactly what ``distill`` will choose; ``options`` are the kind's own (``synset.params``)."""
    from haba_core.budget import auto_basis_size as engine_rule

    return engine_rule(info, kind, budget_ipc, **options)


@dataclass
class Check:
    """The outcome of checking a form: the config to launch, its storage plan, and what is wrong."""

    config: dict | None = None
    plan: Any = None  # haba_core.budget.Plan
    info: Any = None  # haba_core.data.DatasetInfo
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.config is not None


def check(d: dict, backends: list[str] | None = None, experts_dir: Path | None = None) -> Check:
    """Resolve and validate a config dict as the engine will; every problem becomes a sentence."""
    from haba_core.budget import plan_from_config
    from haba_core.config import RunConfig
    from haba_core.data import dataset_info
    from haba_core.errors import HabaError
    from haba_core.loggers import missing_packages

    out = Check()
    d = json.loads(json.dumps(d))
    if backends is None:
        backends, why = available_backends()
        if why:
            out.errors.append(f"The engine's backends could not be loaded ({why}).")
    name = str(get_dotted(d, "method.name") or "")
    if name not in backends:
        have = ", ".join(b.upper() for b in backends) or "none"
        out.errors.append(f"The {name.upper()} backend is not available in this engine yet (available: {have}).")
    try:
        info = dataset_info(get_dotted(d, "data.name"), **(get_dotted(d, "data.options") or {}))
        out.info = info
    except (HabaError, TypeError, ValueError) as e:
        out.errors.append(f"Dataset: {e}")
        return out
    try:
        cfg = RunConfig.from_dict(d)  # the synset kind and its options are checked here
    except (HabaError, TypeError, ValueError) as e:
        out.errors.append(str(e))
        return out
    if cfg.synset.basis_size == AUTO:
        from haba_core.budget import auto_basis_size as engine_rule
        from haba_core.budget import basis_note

        s = cfg.synset
        size = engine_rule(info, s.kind, s.budget_ipc, **s.params)
        cfg = cfg.replace(synset=dataclasses.replace(s, basis_size=size))
        if size is not None:
            out.notes.append(basis_note(info, s.kind, s.budget_ipc, size, **s.params))
    if cfg.data.root_only and not Path(cfg.data.root).expanduser().is_dir():
        out.errors.append(f"The data root {cfg.data.root} does not exist, and data.root_only reads only there.")
    try:
        kind = synset_class(cfg.synset.kind)
    except HabaError as e:
        out.errors.append(str(e))
        return out
    try:
        out.plan = plan_from_config(info, cfg.synset)
    except HabaError as e:
        out.errors.append(f"Storage budget: {e}")
    chosen = kind.validated_lr(info, cfg.method_name, out.plan.budget_ipc) if out.plan is not None else None
    if cfg.synset.lr_hallucinators is None and chosen is not None:
        from haba_core.budget import lr_note

        out.notes.append(lr_note(kind, cfg.method_name, out.plan.budget_ipc, chosen))
    if name in backends:
        try:
            from haba_core.methods import METHODS

            METHODS.get(name).make_config(cfg.method_params)
        except HabaError as e:
            out.errors.append(str(e))
        except TypeError as e:
            out.errors.append(f"method.params: {e}")
    nets = available_nets()
    if cfg.net.get("name", "convnet") not in nets:
        out.errors.append(f"Unknown distillation network {cfg.net.get('name')!r}; choose one of {', '.join(nets)}.")
    bad = [n for n in cfg.eval.nets if n not in nets]
    if bad:
        out.errors.append(f"Unknown evaluation network(s) {', '.join(bad)}; choose from {', '.join(nets)}.")
    out.errors += missing_packages(cfg.loggers)  # a sink without its package would only warn in the run's log
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            out.errors.append(f"device={cfg.device} asks for CUDA, but this machine has no CUDA GPU; use auto or cpu.")
    if kind.contrastive and not (out.plan is not None and out.plan.n_hallucinators >= 2 and cfg.haba.enabled):
        out.notes.append("The adversarial contrastive constraint needs 2+ hallucinators and haba.enabled; it is off.")
    if needs_experts(name) and experts_dir is not None:
        from workbench.jobs import has_experts

        if not has_experts(experts_dir):
            who = label("method", name)
            out.errors.append(f"{who} needs expert trajectories; {experts_dir} holds none yet. Train experts first.")
    if cfg.synset.n_bases is not None and cfg.synset.budget_ipc is not None and out.plan is not None:
        used = out.plan.to_dict().get("budget_used")
        if used and used > 1:
            out.warnings.append(f"synset.n_bases={cfg.synset.n_bases} uses {100 * used:.0f}% of the budget.")
    out.config = cfg.to_dict() if not out.errors else None
    return out


def breakdown_rows(plan) -> list[tuple[str, str]]:
    """What the budget buys, as (label, value) rows for the live breakdown."""
    p = plan.to_dict()
    c, h, w = p["basis_shape"]
    rows = [("Bases per class", f"{p['n_bases']}  ({c}x{h}x{w} each)")]
    if p["n_hallucinators"]:
        each = p["floats_hallucinators"] // max(1, p["n_hallucinators"])
        rows.append(("Hallucinators", f"{p['n_hallucinators']}  ({each:,} floats each)"))
    rows += [
        ("Images it yields", f"{p['images_per_class']} per class, {p['images_total']} in all"),
        ("Floats stored", f"{p['floats_total']:,}  ({plan.floats_parts()})"),
        ("IPC-equivalent", f"{p['ipc_equivalent']:.3f}"),
    ]
    if p.get("budget_floats"):
        rows.append(("Budget", f"{p['budget_floats']:,} floats, {100 * p['budget_used']:.1f}% used"))
    return rows
