"""Expert trajectories for MTT (Cazenavette et al., "Dataset Distillation by Matching Training Trajectories",
CVPR 2022; the official ``buffer.py``): networks trained on the real data whose parameters are recorded
after every epoch.

Defaults follow the official experts: ConvNet, SGD lr 0.01 without momentum or weight decay, batch 256,
DSA on every batch, 50 epochs; ZCA when the distillation uses it.

Files (one folder per expert set; nothing is pickled)::

    DIR/experts.json                   how the set is made (format, version, ExpertConfig); written first
    DIR/expert_0000.safetensors        one finished expert: ``trajectory`` (E+1, P) float32, row e = the
                                       flat parameter vector after e epochs (row 0: the initialisation),
                                       plus JSON metadata: format + version, dataset info, net name/params,
                                       parameter names/shapes, lr, epochs, seed, zca, per-epoch train accuracy
                                       and validation accuracy (the held-out split of data.val_per_class;
                                       experts never touch the test split)
    DIR/expert_0000.partial.safetensors  an unfinished expert (epochs so far + optimizer and RNG states),
                                       replaced by the finished file when it completes

Every write is atomic, so an interrupted run leaves finished experts and at most one partial file per
expert in flight; running the same command again skips finished experts and continues partial ones from
their last epoch, producing the same files as an uninterrupted run (on the same machine and thread count).
Snapshots are ``detach().clone()``: ``tensor.cpu()`` of a CPU tensor aliases it, so every snapshot would change with
training.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from haba_core import io
from haba_core.augment.dsa import DSA_DEFAULT
from haba_core.config import DataConfig, flatten
from haba_core.devices import resolve_device
from haba_core.errors import CheckpointError, ConfigError
from haba_core.memory import reuse_freed_memory
from haba_core.options import option

EXPERT_FORMAT = "haba-expert-trajectory"
EXPERT_SET_FORMAT = "haba-expert-set"
EXPERT_VERSION = 1
MANIFEST = "experts.json"


@dataclass(frozen=True)
class ExpertConfig:
    """How experts are trained; every field is recorded in the manifest and in each expert file."""

    data: DataConfig = option(
        default_factory=DataConfig,
        help="the distillation's data section (zca, zca_variant, val_per_class must match it; experts never see val)",
    )
    net: dict = option(default_factory=lambda: {"name": "convnet", "params": {}}, help="the network trained")
    epochs: int = option(50, help="training epochs of each expert (its trajectory has epochs + 1 rows)", ge=1)
    lr: float = option(0.01, help="SGD lr", gt=0)
    momentum: float = option(0.0, help="SGD momentum", ge=0, lt=1)
    weight_decay: float = option(0.0, help="SGD weight decay", ge=0)
    batch: int = option(256, help="training mini-batch", ge=1)
    dsa_strategy: str = option(DSA_DEFAULT, help='DSA augmentations ("" or none: no augmentation)', null="")
    seed: int = option(0, help="expert i uses seed + i", ge=0)
    device: str = option("cpu", help="cpu, auto, cuda or cuda:N")
    val_every: int = option(
        0, help="epochs between validation-accuracy measurements (0: after the last; needs data.val_per_class)", ge=0
    )
    compile: bool = option(False, help="torch.compile the network (how experts are computed, not what they are)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ExpertConfig:
        from haba_core.config import _build

        return _build(cls, _nest_legacy(d), "")

    @property
    def net_name(self) -> str:
        return str(self.net.get("name", "convnet"))

    @property
    def net_params(self) -> dict:
        return dict(self.net.get("params", {}))


# Expert configs and overrides written before ExpertConfig held a DataConfig: flat key -> data.<key>
_LEGACY_DATA_KEYS = {
    "dataset": "name",
    "data_root": "root",
    "data_options": "options",
    "zca": "zca",
    "zca_variant": "zca_variant",
    "train_limit": "train_limit",
    "test_limit": "test_limit",
    "val_per_class": "val_per_class",
    "val_seed": "val_seed",
}


def _nest_legacy(d: dict) -> dict:
    """A config dict with the old flat data keys (``dataset``, ``data_root``, ...) moved under ``data``."""
    d = dict(d)
    if "test_every" in d:  # written when experts measured test accuracy: they measure validation accuracy now
        d["val_every"] = d.pop("test_every")
    data = dict(d.get("data") or {})
    for old, new in _LEGACY_DATA_KEYS.items():
        if old in d:
            data[new] = d.pop(old)
    if data:
        d["data"] = data
    return d


def _legacy_key(key: str) -> str:
    head, _, rest = key.partition(".")
    return f"data.{_LEGACY_DATA_KEYS[head]}{'.' + rest if rest else ''}" if head in _LEGACY_DATA_KEYS else key


def resolve_expert_config(overrides: Iterable[str] | dict = (), **fields: Any) -> ExpertConfig:
    """Defaults <- ``fields`` <- dotted ``overrides`` (``net.width=64``, ``lr=0.01``, ``data.options.im_size=32``).
    The data keys also take their old flat names (``dataset=``, ``train_limit=``, ``data_options.im_size=``)."""
    from haba_core.config import apply_overrides, split_override

    d = ExpertConfig().to_dict()
    d = apply_overrides(d, {_legacy_key(k): v for k, v in fields.items() if v is not None})
    if isinstance(overrides, dict):
        overrides = {_legacy_key(k): v for k, v in overrides.items()}
    else:
        overrides = [f"{_legacy_key(k)}={v}" for k, v in map(split_override, overrides)]
    return ExpertConfig.from_dict(apply_overrides(d, overrides))


def expert_path(out: str | Path, index: int, partial: bool = False) -> Path:
    return Path(out) / f"expert_{index:04d}{'.partial' if partial else ''}.safetensors"


def make_experts_hint(
    out: str | Path, dataset: str = "DATASET", zca: bool = False, net_params: dict | None = None
) -> str:
    """The command that makes experts for a run, for error messages."""
    sets = "".join(f" --set net.{k}={v}" for k, v in (net_params or {}).items())
    return (
        f"python -m haba_core experts --dataset {dataset} --out {out} --num-experts 5 --epochs 20"
        f"{' --zca' if zca else ''}{sets}"
    )


# ------------------------------------------------------------------------------------------------ training


def flat_params(net: nn.Module) -> Tensor:
    """All parameters as one new (P,) float32 vector (a copy, never a view or alias)."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).to(torch.float32).clone()


def load_flat_(net: nn.Module, flat: Tensor) -> None:
    """Copy a flat (P,) vector into the net's parameters, in ``net.parameters()`` order."""
    with torch.no_grad():
        i = 0
        for p in net.parameters():
            n = p.numel()
            p.copy_(flat[i : i + n].view_as(p))
            i += n


def _load_data(cfg: ExpertConfig):
    from haba_core.data import dataset_from_config

    return dataset_from_config(cfg.data).to(resolve_device(cfg.device))


def _expert_meta(cfg: ExpertConfig, index: int, info, net: nn.Module) -> dict:
    names, shapes = zip(*[(n, list(p.shape)) for n, p in net.named_parameters()], strict=True)
    return {
        "format": EXPERT_FORMAT,
        "version": EXPERT_VERSION,
        "index": index,
        "seed": cfg.seed + index,
        "dataset": info.to_dict(),
        "data": {
            "name": cfg.data.name,
            "zca": cfg.data.zca,
            "train_limit": cfg.data.train_limit,
            "options": cfg.data.options,
        },
        "net": {"name": cfg.net_name, "params": cfg.net_params},
        "param_names": list(names),
        "param_shapes": [list(s) for s in shapes],
        "num_params": sum(p.numel() for p in net.parameters()),
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "momentum": cfg.momentum,
        "weight_decay": cfg.weight_decay,
        "batch": cfg.batch,
        "dsa_strategy": cfg.dsa_strategy,
        "zca": cfg.data.zca,
        "config": cfg.to_dict(),
    }


def train_expert(
    cfg: ExpertConfig,
    index: int,
    out: str | Path,
    dataset=None,
    stop_after_epochs: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train expert ``index`` (seed ``cfg.seed + index``) into ``out``; resume its partial file if there is one.

    ``stop_after_epochs`` stops (as an interruption would) once that many epochs are done in total, leaving
    the partial file; used by tests. Returns the finished file's path (or the partial one when stopped).
    """
    from haba_core.augment import parse_strategy
    from haba_core.nets import create_net
    from haba_core.training import compiled, test_accuracy, train_epoch

    final, partial = expert_path(out, index), expert_path(out, index, partial=True)
    if final.exists():
        return final
    ds = dataset if dataset is not None else _load_data(cfg)
    info = ds.info
    device = ds.images_train.device
    if device.type == "cpu":
        reuse_freed_memory()  # batches of 256 activations exceed glibc's mmap threshold: avoid page-fault churn
    seed = cfg.seed + index
    torch.manual_seed(seed)
    net = create_net(cfg.net_name, info.channels, info.num_classes, info.im_size, **cfg.net_params).to(device)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    meta = _expert_meta(cfg, index, info, net)
    rows: list[Tensor] = [flat_params(net)]
    history: dict[str, list] = {"train_acc": [], "train_loss": [], "val_acc": [], "epoch_s": []}
    if partial.exists():
        tensors, pmeta = io.load_tensors(partial, expect_format=EXPERT_FORMAT)
        _check_same_recipe(partial, pmeta, meta)
        state = io.unflatten_state(pmeta["state"], tensors)
        rows = list(tensors["trajectory"].unbind(0))
        load_flat_(net, rows[-1].to(device))
        opt.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = {k: list(pmeta["history"].get(k) or [None] * (len(rows) - 1)) for k in history}
    strategy = cfg.dsa_strategy if parse_strategy(cfg.dsa_strategy) else ""
    images, labels = ds.images_train, ds.labels_train
    n = len(images)
    model = compiled(net) if cfg.compile else net  # shares net's parameters, which opt updates
    for epoch in range(len(rows) - 1, cfg.epochs):
        if stop_after_epochs is not None and epoch >= stop_after_epochs:
            return partial
        t0 = time.perf_counter()
        correct, loss_sum = train_epoch(
            model, opt, images, labels, cfg.batch, generator, strategy, im_size=info.im_size, stats=True
        )
        rows.append(flat_params(net))  # a clone: every epoch is its own snapshot
        history["train_acc"].append(correct / n)
        history["train_loss"].append(loss_sum / n)
        last = epoch + 1 == cfg.epochs
        val = len(ds.labels_val) > 0 and (last or (cfg.val_every and (epoch + 1) % cfg.val_every == 0))
        history["val_acc"].append(test_accuracy(net, ds.images_val, ds.labels_val) if val else None)
        history["epoch_s"].append(round(time.perf_counter() - t0, 3))
        if log:
            log(
                f"expert {index}: epoch {epoch + 1}/{cfg.epochs} train acc {correct / n:.4f}"
                + (f" val acc {history['val_acc'][-1]:.4f}" if val else "")
            )
        if not last:
            skeleton, tensors = io.flatten_state(
                {"optimizer": opt.state_dict(), "generator": generator.get_state(), "torch_rng": torch.get_rng_state()}
            )
            tensors["trajectory"] = torch.stack(rows)
            io.save_tensors(partial, tensors, {**meta, "complete": False, "state": skeleton, "history": history})
    # Timings vary run to run; the finished file keeps only what is reproducible, so that an interrupted and
    # resumed expert gives the same file as an uninterrupted one. Per-epoch seconds go to the manifest log.
    epoch_s = history.pop("epoch_s")
    io.save_tensors(final, {"trajectory": torch.stack(rows)}, {**meta, "complete": True, **history})
    partial.unlink(missing_ok=True)
    _append_log(out, {"index": index, "epoch_s": epoch_s, "finished_at": time.time()})
    return final


def _append_log(out: str | Path, record: dict) -> None:
    io.append_jsonl(Path(out) / "experts_log.jsonl", record)


_RECIPE_KEYS = (
    "dataset",
    "data",
    "net",
    "param_names",
    "param_shapes",
    "epochs",
    "lr",
    "momentum",
    "weight_decay",
    "batch",
    "dsa_strategy",
    "zca",
    "seed",
)


def _check_same_recipe(path: Path, found: dict, expected: dict) -> None:
    diff = [k for k in _RECIPE_KEYS if found.get(k) != expected.get(k)]
    if diff:
        raise CheckpointError(
            f"{path} was made with other settings ({', '.join(diff)} differ); delete it or use another --out."
        )


# ------------------------------------------------------------------------------------------------ many experts


def _expert_task(cfg_dict: dict, index: int, out: str) -> dict:
    """Expert ``index`` where an executor (``haba_core.executors``) sent it. A worker that sees ``out`` (this
    machine, or storage shared with it) trains into it, partial files and all; one that does not (another
    machine of a Ray cluster) trains in a temporary folder and returns the finished file's bytes, which
    :func:`train_experts` writes into ``out``."""
    import tempfile

    cfg = ExpertConfig.from_dict(cfg_dict)
    if (Path(out) / MANIFEST).exists():
        train_expert(cfg, index, out, log=lambda m: print(m, flush=True))
        return {"index": index, "data": None}
    with tempfile.TemporaryDirectory(prefix="haba_expert_") as tmp:
        return {"index": index, "data": train_expert(cfg, index, tmp).read_bytes()}


def write_manifest(out: str | Path, cfg: ExpertConfig) -> None:
    """Create ``out/experts.json``, or check that an existing one records the same recipe."""
    out = Path(out)
    path = out / MANIFEST
    manifest = {"format": EXPERT_SET_FORMAT, "version": EXPERT_VERSION, "config": cfg.to_dict()}
    if path.exists():
        old = io.read_json_strict(path)
        if old.get("format") != EXPERT_SET_FORMAT:
            raise CheckpointError(f"{path} is not an expert-set manifest; choose another --out.")
        try:  # a manifest written before ExpertConfig held a DataConfig reads in the current layout
            old_cfg = flatten(ExpertConfig.from_dict(old.get("config", {})).to_dict())
        except ConfigError:
            old_cfg = flatten(old.get("config", {}))
        new_cfg = flatten(manifest["config"])
        # how, not what: may change between sessions (test_every: val_every's name in older manifests)
        ignore = {"device", "val_every", "test_every", "compile", "data.root", "data.root_only"}
        diff = sorted(k for k in set(old_cfg) | set(new_cfg) if k not in ignore and old_cfg.get(k) != new_cfg.get(k))
        if diff:
            raise ConfigError(
                f"{out} holds experts made with other settings ({', '.join(diff)} differ: "
                + ", ".join(f"{k}={old_cfg.get(k)!r} there, {new_cfg.get(k)!r} now" for k in diff)
                + "); use another --out or the same settings."
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(path, manifest)


def train_experts(
    cfg: ExpertConfig,
    out: str | Path,
    num_experts: int,
    workers: int = 1,
    log: Callable[[str], None] | None = print,
    executor=None,
    retries: int = 0,
) -> list[Path]:
    """Train experts 0..num_experts-1 into ``out`` (skipping finished ones, resuming partial ones).

    ``workers > 1`` trains that many at once in separate processes (``haba_core.executors``' local pool, each
    with ``cores // workers`` threads). ``executor`` (a ``haba_core.executors.Executor``, e.g. Ray) runs one task
    per expert instead, each tried ``retries + 1`` times; finished experts land in ``out`` whichever machine
    trained them.
    """
    out = Path(out)
    write_manifest(out, cfg)
    todo = [i for i in range(num_experts) if not expert_path(out, i).exists()]
    if log and len(todo) < num_experts:
        log(f"{num_experts - len(todo)} of {num_experts} experts already finished in {out}; training {len(todo)}")
    workers = max(1, min(int(workers), len(todo) or 1))
    if executor is None and workers > 1:
        from haba_core.executors import make_executor

        executor = make_executor("local", workers)
    if executor is not None:
        from haba_core.executors import Task

        def save(r) -> None:
            if r.ok and r.value["data"] is not None:
                io.atomic_write_bytes(expert_path(out, r.value["index"]), r.value["data"])
            if log:
                log(f"{r.id}: " + (f"finished on {r.worker}" if r.ok else f"FAILED after {r.attempts} attempt(s)"))

        tasks = [Task(f"expert_{i:04d}", (cfg.to_dict(), i, str(out))) for i in todo]
        failed = [r for r in executor.map(_expert_task, tasks, retries=retries, on_result=save, log=log) if not r.ok]
        if failed:
            from haba_core.errors import HabaError

            first = (failed[0].error or "").splitlines()[0]
            raise HabaError(
                f"{len(failed)} expert(s) failed ({failed[0].id}: {first}); finished experts are kept "
                f"in {out}; run the same command again to train the rest."
            )
    else:
        ds = _load_data(cfg) if todo else None
        for i in todo:
            train_expert(cfg, i, out, dataset=ds, log=log)
    return [expert_path(out, i) for i in range(num_experts)]
