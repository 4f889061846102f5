"""Run configuration: frozen dataclasses with defaults in code (after dinov2 / nanoGPT).

An experiment file (YAML or JSON) lists only what differs from the defaults; dotted overrides such as
``method.lr_img=100`` or ``synset.n_hallucinators=3`` are applied on top. The resolved config is written
into the run folder before step 0 and is enough to rebuild the run.

Method-specific hyperparameters live in ``method.params`` as a plain mapping, validated by the chosen
method's own dataclass (see ``haba_core.methods``); ``method.lr_img=100`` is shorthand for
``method.params.lr_img=100``. A synset kind's own options live the same way in ``synset.params``, validated by
the kind's ``Config`` (see ``haba_core.synsets``) and stored resolved (every option of the kind, none of another
kind's); ``synset.n_hallucinators=3`` is shorthand for ``synset.params.n_hallucinators=3``, and configs written
before ``synset.params`` existed (kind options beside ``kind``) still read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from haba_core.errors import ConfigError
from haba_core.loggers import SINKS
from haba_core.synsets import SYNSETS
from haba_core.validate import check_choices, check_value, checked_fields

LOGGERS = {"choices": tuple(SINKS.list())}  # field metadata: the values a tuple option takes


@dataclass(frozen=True)
class DataConfig:
    name: str = "fashion_mnist"
    root: str = "data"  # where the dataset's files are looked up first (a download goes there too)
    root_only: bool = False  # read only from root (a missing root is an error, no system copy): what --data-root sets
    zca: bool = False
    zca_variant: str = "kornia"  # "kornia": raw [0,1] pixels, eps 0.1 (MTT/HaBa reference) | "relative"
    train_limit: int | None = None  # class-balanced subset of the training set (fast profiles, tests)
    test_limit: int | None = None
    val_per_class: int = 0  # training images per class held out as the validation split (never distilled)
    val_seed: int = 0  # which images the validation split holds (seeded, class-balanced)
    options: dict = field(default_factory=dict)  # extra kwargs for the source (e.g. toy's im_size)


@dataclass(frozen=True)
class SynsetConfig:
    kind: str = "haba"  # a registered synset kind (haba_core.synsets: pixels, haba, fred, ...)
    budget_ipc: float | None = 1.0  # storage budget in images-per-class equivalents; solves n_bases
    n_bases: int | None = None  # per class; overrides the budget solve when set (then storage is reported)
    # stored resolution (square): "auto" = full size when it fits the budget, else the largest whole-factor
    # reduction that does (budget.auto_basis_size; the run says what it chose); None = full size; or an int
    basis_size: int | str | None = "auto"
    init: str = "real"  # "real" | "noise"
    lr_images: float | None = None  # None: the method's lr_img
    lr_hallucinators: float | None = None  # None: the method's lr_hallucinators (else its lr_img)
    momentum_hallucinators: float | None = None  # None: the method's momentum
    params: dict = field(default_factory=dict)  # the kind's own options (its Config), e.g. HaBa's n_hallucinators

    def __post_init__(self):
        """``params`` becomes the kind's resolved options (its ``Config`` with defaults; another kind's options
        dropped); an unknown kind or option fails here, with close matches."""
        if not isinstance(self.params, Mapping):
            raise ConfigError(f"synset.params must be a mapping of the kind's options, got {self.params!r}.")
        own = [f.name for f in fields(self)]
        kind = SYNSETS.get(str(self.kind))
        object.__setattr__(self, "params", dataclasses.asdict(kind.make_options(self.params, "synset.", also=own)))

    @classmethod
    def normalize(cls, d: dict, prefix: str) -> dict:
        """``_build`` hook on the raw mapping: kind options written beside ``kind`` (configs from before
        ``params`` existed) move into ``params``."""
        return dict(_kind_options_in_params({"synset": d})["synset"])


@dataclass(frozen=True)
class HabaLossConfig:
    """HaBa's adversarial contrastive constraint (``haba_losses.py``); active only for kinds that declare it."""

    enabled: bool = True
    lambda_cos: float = 0.1  # weight of L_cos added to the DD loss on the synthetic side
    extractor_width: int = 128
    extractor_depth: int = 3
    extractor_lr: float = 1e-3
    extractor_momentum: float = 0.9
    ce_weight: float = 1.0
    likelihood_weight: float = 0.1  # mean((1 - cos) / 2) on the extractor side
    supcon_weight: float = 0.1
    temperature: float = 0.07
    batch: int | None = None  # bases per contrastive batch; None: all of them (the reference)


@dataclass(frozen=True)
class EvalConfig:
    nets: tuple[str, ...] = ("convnet",)
    seeds: int = 3
    epochs: int = 300
    batch: int = 256
    lr: float | None = None  # None: the learned synthetic lr (MTT) if any, else 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dsa: bool = True
    pairing: str = "random"  # haba: "random" (each basis once per epoch, random hallucinator) | "all"
    standardize: bool = False  # per-batch (x - mean) / std before DSA (HaBa's official evaluation), all rows alike
    split: str = "test"  # "test" | "val": where accuracy is measured ("val" needs data.val_per_class)
    test_batch: int = 1000  # test images per forward batch (an execution choice when standardize is off)
    # with standardize: test images per standardization batch, i.e. whose mean and std each test image is
    # standardized with; HaBa's official test loader takes 128. Part of the protocol (only then).
    standardize_test_batch: int = 128
    # "auto" (bf16 where the device computes it natively, else fp32) | "fp32" | "bf16": forward passes under
    # bfloat16 autocast; part of the protocol, recorded resolved. bf16 kept accuracy within 1 std of float32 on
    # Fashion-MNIST IPC 1 and 10, HaBa and pixels (bench/results/precision.md)
    precision: str = "auto"
    compile: bool = False  # torch.compile each network (an execution choice: not part of the protocol)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    synset: SynsetConfig = field(default_factory=SynsetConfig)
    method: dict = field(default_factory=lambda: {"name": "dm", "params": {}})
    haba: HabaLossConfig = field(default_factory=HabaLossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    net: dict = field(default_factory=lambda: {"name": "convnet", "params": {}})  # distillation network
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    iterations: int = 1000
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    eval_every: int = 0  # 0: evaluate only at the end (when eval_at_end)
    eval_at_end: bool = False
    snapshot_every: int = 50
    checkpoint_every: int = 50
    log_every: int = 1
    loggers: tuple[str, ...] = field(default=(), metadata=LOGGERS)  # also log there: tensorboard, wandb (offline)

    @property
    def method_name(self) -> str:
        return str(self.method.get("name", "dm")).lower()

    @property
    def method_params(self) -> dict:
        return dict(self.method.get("params", {}))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        return _build(cls, d, "")

    def replace(self, **kw: Any) -> RunConfig:
        return dataclasses.replace(self, **kw)


def _build(cls: type, d: Mapping[str, Any] | None, prefix: str) -> Any:
    """Build dataclass ``cls`` from a nested mapping, rejecting unknown keys with close matches."""
    d = dict(d or {})
    if hasattr(cls, "normalize"):
        d = cls.normalize(d, prefix)
    valid = ", ".join(sorted(f.name for f in fields(cls)))

    def unknown(key: str, hint: str) -> str:
        return f"Unknown config key {prefix + key!r}.{hint} Valid: {valid}."

    def convert(f, value):
        sub = _DATACLASS_FIELDS.get((cls, f.name)) or getattr(cls, "NESTED", {}).get(f.name)
        if sub is not None:
            return _build(sub, value, f"{prefix}{f.name}.")
        if f.type in ("tuple[str, ...]",) and value is not None:
            values = tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value
            return check_choices(prefix + f.name, tuple(values), f.metadata.get("choices"))
        return check_value(prefix + f.name, value, f.type)

    kwargs = checked_fields(cls, d, prefix, unknown, convert=convert)
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - guarded by the key check above
        raise ConfigError(str(e)) from e


_DATACLASS_FIELDS = {
    (RunConfig, "data"): DataConfig,
    (RunConfig, "synset"): SynsetConfig,
    (RunConfig, "haba"): HabaLossConfig,
    (RunConfig, "eval"): EvalConfig,
}


def parse_value(text: str) -> Any:
    """Parse an override value: JSON when it parses (numbers, true/false/null, lists), else the string."""
    low = text.strip()
    if low.lower() in ("true", "false"):
        return low.lower() == "true"
    if low.lower() in ("none", "null"):
        return None
    try:
        return json.loads(low)
    except json.JSONDecodeError:
        return text


def apply_overrides(d: dict, overrides: list[str] | Mapping[str, Any]) -> dict:
    """Apply ``key.sub=value`` overrides to a nested config dict (returns a new dict).

    ``method.X`` and ``net.X`` (other than ``name``/``params``) go to ``method.params.X`` / ``net.params.X``.
    """
    d = json.loads(json.dumps(d))
    items = overrides.items() if isinstance(overrides, Mapping) else [split_override(o) for o in overrides]
    for key, value in items:
        if isinstance(value, str) and not isinstance(overrides, Mapping):
            value = parse_value(value)
        parts = config_path(key)
        node = d
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"Cannot set {key!r}: {p!r} is not a section.")
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return d


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"dotted.key": value}``; ``options`` dicts and empty dicts are values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v and k != "options":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_path(key: str) -> list[str]:
    """Dotted key -> path in the config dict: ``method.X`` / ``net.X`` (other than ``name``/``params``) live
    at ``method.params.X`` / ``net.params.X``, and ``synset.X`` (not a :class:`SynsetConfig` field) at
    ``synset.params.X``."""
    parts = key.split(".")
    if parts[0] in ("method", "net") and len(parts) == 2 and parts[1] not in ("name", "params"):
        parts = [parts[0], "params", parts[1]]
    if parts[0] == "synset" and len(parts) == 2 and parts[1] not in {f.name for f in fields(SynsetConfig)}:
        parts = ["synset", "params", parts[1]]
    return parts


def split_override(text: str) -> tuple[str, str]:
    """``"key.sub=value"`` -> ``("key.sub", "value")`` (the value still a string); a clear error without ``=``."""
    if "=" not in text:
        raise ConfigError(f"Override {text!r} must look like key=value, e.g. method.lr_img=100.")
    k, v = text.split("=", 1)
    return k.strip(), v


def load_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON experiment file into a nested dict."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file {path} does not exist.")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping at top level.")
    return data


def resolve_config(
    base: Mapping[str, Any] | None = None, files: list[str | Path] = (), overrides: list[str] | Mapping = ()
) -> RunConfig:
    """Defaults <- files (in order) <- overrides, validated into a RunConfig."""
    d = RunConfig().to_dict()
    for layer in [base or {}] + [load_config_file(f) for f in files]:
        d = _deep_merge(d, _kind_options_in_params(layer))
    d = apply_overrides(d, overrides)
    return RunConfig.from_dict(d)


def _kind_options_in_params(layer: Mapping) -> Mapping:
    """A config layer with the synset kind's options written beside ``kind`` (the layout before
    ``synset.params``) moved into ``synset.params``, so later layers and overrides still win over them."""
    syn = layer.get("synset")
    if not isinstance(syn, Mapping):
        return layer
    own = {f.name for f in fields(SynsetConfig)}
    moved = {k: v for k, v in syn.items() if k not in own}
    if not moved:
        return layer
    params = {**dict(syn.get("params") or {}), **moved}
    return {**layer, "synset": {**{k: v for k, v in syn.items() if k in own}, "params": params}}


def _deep_merge(a: dict, b: Mapping) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
