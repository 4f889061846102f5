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

Every field is declared with :func:`haba_core.options.option`: its help, its range and, for a fixed set of strings, a
``Literal`` annotation; validation, the CLI's help and the New run page read that declaration (``haba options``
lists them all).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from haba_core.augment.dsa import DSA_DEFAULT
from haba_core.data.datasets import ZCA_VARIANTS
from haba_core.errors import ConfigError
from haba_core.loggers import SINKS
from haba_core.options import Precision, option
from haba_core.protocol import EvalSettings
from haba_core.synsets import SYNSETS
from haba_core.validate import basis_size, check_option, checked_fields


@dataclass(frozen=True)
class DataConfig:
    name: str = option("fashion_mnist", help="the dataset: a registered name (fashion_mnist, mnist, cifar10, ...)")
    # location: where the files are read from, not which data (left out of identity())
    root: str = option(
        "data", help="where the dataset's files are looked up first (a download goes there too)", location=True
    )
    root_only: bool = option(
        False,
        help="read only from root (a missing root is an error, no system copy): what --data-root sets",
        location=True,
    )
    zca: bool = option(False, help="ZCA-whiten the images (fitted on the training images kept)")
    zca_variant: str = option(
        "kornia",
        help="kornia: raw [0, 1] pixels, eps 0.1 (the MTT/HaBa reference); relative: normalized pixels, eps 0.1 x "
        "the mean eigenvalue",
        choices=ZCA_VARIANTS,
    )
    train_limit: int | None = option(
        None, help="class-balanced subset of the training set (fast profiles, tests); None: all of it", ge=1
    )
    test_limit: int | None = option(None, help="class-balanced subset of the test set; None: all of it", ge=1)
    val_per_class: int = option(
        0, help="training images per class held out as the validation split (never distilled)", ge=0
    )
    val_seed: int = option(0, help="which images the validation split holds (seeded, class-balanced)", ge=0)
    options: dict = option(default_factory=dict, help="extra keyword arguments of the source (e.g. toy's im_size)")

    def identity(self) -> dict[str, Any]:
        """Which data this is, without where its files are read from (fields marked ``location``): what an
        evaluation's cells are keyed by, so a run folder read from another data root keeps its cells."""
        d = dataclasses.asdict(self)
        return {f.name: d[f.name] for f in fields(self) if not f.metadata.get("location")}


@dataclass(frozen=True)
class SynsetConfig:
    kind: str = option("haba", help="the synset kind: a registered name (pixels, haba, fred, ...)")
    budget_ipc: float | None = option(
        1.0,
        help="floats the synthetic set may store, in units of one image per class (budget x classes x C x H x W); "
        "it solves n_bases",
        gt=0,
    )
    n_bases: int | None = option(
        None, help="bases per class; overrides the budget solve when set (then storage is reported)", ge=1
    )
    # "auto" resolves through budget.auto_basis_size (the run says what it chose); "full" is stored as None
    basis_size: int | str | None = option(
        "auto",
        help="stored resolution of the bases (square): auto (full size when it fits the budget, else the largest "
        "whole-factor reduction that does), full, or an integer >= 3",
        parse=basis_size,
    )
    init: Literal["real", "noise"] = option("real", help="the bases start as random real images or as noise")
    lr_images: float | None = option(None, help="SGD lr of the bases; None: the method's lr_img", gt=0)
    lr_hallucinators: float | None = option(
        None, help="SGD lr of the hallucinators; None: the method's lr_hallucinators (else its lr_img)", gt=0
    )
    momentum_hallucinators: float | None = option(
        None, help="SGD momentum of the hallucinators; None: the method's momentum", ge=0, lt=1
    )
    params: dict = option(default_factory=dict, help="the kind's own options (its Config), e.g. HaBa's n_hallucinators")

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

    enabled: bool = option(True, help="apply the constraint (to kinds with 2+ hallucinators)")
    lambda_cos: float = option(0.1, help="weight of L_cos added to the DD loss on the synthetic side", ge=0)
    extractor_width: int = option(128, help="channels of the feature extractor's conv layers", ge=1)
    extractor_depth: int = option(3, help="conv blocks of the feature extractor", ge=1)
    extractor_lr: float = option(1e-3, help="SGD lr of the feature extractor", gt=0)
    extractor_momentum: float = option(0.9, help="SGD momentum of the feature extractor", ge=0, lt=1)
    ce_weight: float = option(1.0, help="weight of the extractor's cross-entropy on the hallucinated images", ge=0)
    likelihood_weight: float = option(0.1, help="weight of mean((1 - cos) / 2) on the extractor side", ge=0)
    supcon_weight: float = option(0.1, help="weight of the extractor's supervised contrastive loss", ge=0)
    temperature: float = option(0.07, help="temperature of the supervised contrastive loss", gt=0)
    batch: int | None = option(None, help="bases per contrastive batch; None: all of them (the reference)", ge=1)


@dataclass(frozen=True)
class EvalConfig(EvalSettings):
    """How a run's synthetic set is evaluated: the shared :class:`~haba_core.protocol.EvalSettings` (epochs, lr,
    batch, ...; defined there once) plus which networks and how many, and the settings a protocol resolves."""

    nets: tuple[str, ...] = option(("convnet",), help="networks trained on the set (registered names)")
    seeds: int = option(3, help="networks of each architecture, one seed each", ge=1)
    dsa: bool = option(True, help="DSA on every training batch (the run's dsa_strategy)")
    test_batch: int = option(
        1000, help="test images per forward batch (an execution choice when standardize is off)", ge=1
    )
    # HaBa's official test loader takes 128. Part of the protocol (only then).
    standardize_test_batch: int = option(
        128, help="with standardize: test images whose mean and std each test image is standardized with", ge=1
    )
    # part of the protocol, recorded resolved. bf16 kept accuracy within 1 std of float32 on Fashion-MNIST IPC 1
    # and 10, HaBa and pixels (bench/results/precision.md)
    precision: Precision = option(
        "auto", help="auto (bf16 where the device computes it natively, else fp32), fp32 or bf16 autocast"
    )
    compile: bool = option(False, help="torch.compile each network (an execution choice: not part of the protocol)")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = option(default_factory=DataConfig, help="the dataset and its splits")
    synset: SynsetConfig = option(default_factory=SynsetConfig, help="the synthetic set: kind, budget, bases")
    method: dict = option(
        default_factory=lambda: {"name": "dm", "params": {}},
        help="the DD objective: name (a registered method) and params (its Config)",
    )
    haba: HabaLossConfig = option(default_factory=HabaLossConfig, help="HaBa's adversarial contrastive constraint")
    eval: EvalConfig = option(default_factory=EvalConfig, help="how the synthetic set is evaluated")
    net: dict = option(
        default_factory=lambda: {"name": "convnet", "params": {}},
        help="the distillation network: name (a registered network) and params (its options, e.g. width)",
    )
    dsa_strategy: str = option(
        DSA_DEFAULT, help="DSA's augmentations, joined by _ (none or null: no augmentation)", null=""
    )
    iterations: int = option(1000, help="outer iterations (updates of the synthetic set)", ge=1)
    seed: int = option(0, help="seeds the network initialisations and every random draw of the run", ge=0)
    device: str = option("auto", help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N")
    eval_every: int = option(0, help="iterations between in-run evaluations; 0: only at the end (eval_at_end)", ge=0)
    eval_at_end: bool = option(False, help="evaluate the final set with the eval settings")
    snapshot_every: int = option(50, help="iterations between snapshots of the set; 0: none", ge=0)
    checkpoint_every: int = option(50, help="iterations between checkpoints; 0: only at the end", ge=0)
    log_every: int = option(1, help="iterations between lines of metrics.jsonl", ge=0)
    loggers: tuple[str, ...] = option(
        (), help="also log there: tensorboard, wandb (offline)", choices=tuple(SINKS.list())
    )

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

    def convert(spec, value):
        if spec.nested is not None:  # a section: its own dataclass, built the same way
            return _build(spec.nested, value, f"{prefix}{spec.name}.")
        return check_option(prefix + spec.name, value, spec)

    kwargs = checked_fields(cls, d, prefix, unknown, convert=convert)
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - guarded by the key check above
        raise ConfigError(str(e)) from e


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
