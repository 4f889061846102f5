"""Evaluation: train fresh networks from scratch on a synthetic set and test them on real data.

Protocol (DC/DSA/MTT/HaBa convention): SGD momentum 0.9, weight decay 5e-4, lr x0.1 at half the epochs,
batch 256, DSA on every training batch. For HaBa each epoch shows every basis once with a random
hallucinator (``pairing="random"``, the official protocol) or every basis x hallucinator pair
(``"all"``). HaBa's official evaluation also standardizes every batch as a whole, ``(x - x.mean()) / x.std()``,
training and test batches alike, *before* DSA (the reference order); that is the ``standardize`` option.
All of this is one :class:`~haba_core.protocol.EvalProtocol`, the same for every kind of set (HaBa, pixels,
random real), recorded with every result (``protocol``: its fields, ``name`` and ``id``). Reported accuracy
is the final network's (never the best over epochs).

Three layers:

- one network: :class:`~haba_core.training.SeedTrainer` / :func:`~haba_core.training.train_from_scratch` (the
  reference, one seed at a time);
- several seeds of one architecture at once (``haba_core.grouped``): :class:`GroupedTrainer` stacks the S
  networks into one network with S-grouped convolutions and per-seed linear layers (:func:`stack_nets`); each
  seed keeps its own initialisation (``torch.manual_seed(seed)``) and its own generator for data order, HaBa
  pairings and DSA draws, consumed in the same order as the sequential path, so the two paths train the same
  networks on the same batches (equal up to floating-point summation order). :func:`train_seeds` picks the
  path (grouped by default on CUDA; on CPU it measured no faster, see ``scripts/bench_eval_batched.py``) and
  falls back to the sequential one where stacking does not apply, recording which path ran;
- a run folder's cross-architecture matrix: :func:`evaluate_run` splits the work into cells (source x net
  x seeds), runs them through an executor (``haba_core.executors``: this process, a process pool or Ray),
  writes every finished cell atomically to ``RUN/eval/cells/<tag>/<net>_s<seed>.json`` and aggregates the
  cells into ``RUN/evaluation.json`` and ``RUN/eval/matrix.csv`` (tables: ``haba_core.reports``). A killed
  or failed evaluation, run again, computes only the missing cells. ``<tag>`` names the source and hashes
  everything a cell depends on (the synset file's bytes, the protocol, the data), so cells of another synset
  or protocol are never reused.

Every evaluation on the test split is recorded in a test ledger (``haba_core.ledger``): the in-memory entry points
take a ``ledger`` entry and refuse to test without one; :func:`evaluate_run` records each finished task in the
driver, where its cells are written, whichever executor (this process, a process pool, Ray) computed it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from haba_core.devices import resolve_device
from haba_core.grouped import GroupedTrainer, NotStackable, grouped_by_default, stack_nets, train_seeds_grouped  # noqa: F401
from haba_core.ledger import LedgerEntry, admit
from haba_core.memory import reuse_freed_memory
from haba_core.nets import create_net
from haba_core.protocol import EvalProtocol
from haba_core.reports import matrix_csv, matrix_markdown, matrix_rows  # noqa: F401
from haba_core.storage import Storage, random_real_storage
from haba_core.training import ImageSource, Recipe, train_from_scratch


def train_seeds(
    sources: Sequence[ImageSource],
    dataset,
    net_name: str,
    recipe: Recipe,
    seeds: Sequence[int],
    batched: bool | None = None,
) -> list[dict]:
    """Train one network per seed (``sources[k]`` feeds ``seeds[k]``): grouped when ``batched``, else one at a
    time. ``batched=None`` groups on CUDA only: on CPU the grouped network measured 0.7-1.3x the speed of the
    sequential loop (``scripts/bench_eval_batched.py``), since CPU convolutions are compute-bound and grouped
    kernels are no faster than S dense ones. Each result records its ``path``; a fallback from grouped to
    sequential records why (``fallback``)."""
    if dataset.images_test.device.type == "cpu":
        # training batches' activations exceed glibc's mmap threshold (100 images of ConvNet-128 at 32x32: 52 MB):
        # one float32 network's evaluation took 12.92 s with this, 18.27 s without (bench/results/peers.md)
        reuse_freed_memory()
    if batched is None:
        batched = grouped_by_default(dataset.images_test.device)
    reason = None
    if batched and len(seeds) > 1:
        try:
            return train_seeds_grouped(sources, dataset, net_name, recipe, seeds)
        except NotStackable as e:
            reason = str(e)
    out = [train_from_scratch(src, dataset, net_name, recipe, sd) for src, sd in zip(sources, seeds, strict=True)]
    if reason:
        for r in out:
            r["fallback"] = reason
    return out


# ------------------------------------------------------------------------------------------------ in memory


def summarize(accs: list[float]) -> dict:
    """Mean and sample std (ddof 1; 0 for one network) of ``accs`` over its ``n`` networks."""
    mean = statistics.fmean(accs) if accs else float("nan")
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return {"mean": mean, "std": std, "ddof": 1, "n": len(accs), "per_seed": accs}


def protocol_of(cfg, lr: float | None, dsa_strategy: str, test_images: int | None = None, device=None) -> dict:
    """The recorded :class:`EvalProtocol` of EvalConfig ``cfg`` (``lr``: the set's learned lr, if any;
    ``device``: where the networks train, for ``eval.precision=auto``)."""
    return EvalProtocol.from_config(cfg, dsa_strategy, test_images, device).record(lr)


def _net_summary(runs: list[dict]) -> dict:
    paths = sorted({r.get("path", "sequential") for r in runs})
    out = {
        **summarize([r["acc"] for r in runs]),
        "seeds": [r["seed"] for r in runs],
        "train_s": statistics.median(r["train_s"] for r in runs) if runs else None,
        "test_s": statistics.median(r["test_s"] for r in runs) if runs else None,
        "path": paths[0] if len(paths) == 1 else "mixed",
    }
    fallbacks = sorted({r["fallback"] for r in runs if r.get("fallback")})
    if fallbacks:
        out["fallback"] = "; ".join(fallbacks)
    return out


def evaluate_source(
    source: ImageSource,
    dataset,
    recipe: Recipe,
    nets: Iterable[str],
    seeds: int,
    seed: int = 0,
    batched: bool | None = None,
) -> dict:
    """Train ``seeds`` fresh networks per architecture; mean +- std of final test accuracy."""
    seed_list = [seed + k for k in range(seeds)]
    return {
        name: _net_summary(train_seeds([source] * seeds, dataset, name, recipe, seed_list, batched)) for name in nets
    }


def evaluate_synset(
    synset, dataset, cfg, nets=("convnet",), seeds=3, lr=None, dsa_strategy="", seed=0, batched=None, ledger=None
) -> dict:
    """Evaluate a synset under ``cfg`` (an EvalConfig). Returns per-net results, protocol and storage. ``batched``:
    see :func:`train_seeds`. On the test split the evaluation is recorded through ``ledger`` (a
    :class:`~haba_core.ledger.LedgerEntry`, required there)."""
    lr = lr if lr is not None else synset.extra.get("syn_lr")
    look = admit(ledger, cfg.split, {"eval": dataclasses.asdict(cfg)})
    dataset = dataset.evaluated_on(cfg.split)
    protocol = protocol_of(cfg, lr, dsa_strategy, len(dataset.labels_test), dataset.images_test.device)
    recipe = Recipe.from_protocol(protocol, cfg.test_batch, cfg.compile)
    synset = synset.to(dataset.images_test.device)
    with torch.enable_grad():
        per_net = evaluate_source(_synset_source(synset, cfg.pairing), dataset, recipe, nets, seeds, seed, batched)
    return _result(per_net, protocol, synset.storage(), look)


def _synset_source(synset, pairing: str) -> ImageSource:
    def source(g: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = synset.materialize(g, pairing=pairing)
        return x.detach(), y

    return source


def _fixed_source(images: Tensor, labels: Tensor) -> ImageSource:
    return lambda g: (images, labels)


def random_real_baseline(
    dataset, ipc: int, cfg, nets=("convnet",), seeds=3, dsa_strategy="", seed=0, batched=None, ledger=None
) -> dict:
    """The random-real-subset baseline: ``ipc`` real images per class (a new draw per network seed); on the test
    split recorded through ``ledger`` (required there)."""
    look = admit(ledger, cfg.split, {"eval": dataclasses.asdict(cfg)})
    dataset = dataset.evaluated_on(cfg.split)
    protocol = protocol_of(cfg, None, dsa_strategy, len(dataset.labels_test), dataset.images_test.device)
    recipe = Recipe.from_protocol(protocol, cfg.test_batch, cfg.compile)
    seed_list = [seed + k for k in range(seeds)]
    sources = [_fixed_source(*dataset.subset_random(ipc, torch.Generator().manual_seed(s))) for s in seed_list]
    per_net = {name: _net_summary(train_seeds(sources, dataset, name, recipe, seed_list, batched)) for name in nets}
    return _result(per_net, protocol, random_real_storage(dataset.info, ipc), look)


def _result(per_net: dict, protocol: dict, storage: Storage, look: LedgerEntry | None = None) -> dict:
    """The result of an in-memory evaluation, recorded in the test ledger through ``look`` (when testing)."""
    if look is not None:
        seeds = sorted({s for r in per_net.values() for s in r["seeds"]})
        look.record(protocol, sum(r["n"] for r in per_net.values()), kind=storage.kind, nets=list(per_net), seeds=seeds)
    summary = ", ".join(f"{n} {100 * r['mean']:.2f}+-{100 * r['std']:.2f}" for n, r in per_net.items())
    return {"nets": per_net, "protocol": protocol, "storage": storage.to_dict(), "summary": summary}


# ------------------------------------------------------------------------------------------------ cells


def eval_cell_task(job: dict) -> list[dict]:
    """Train the networks of one cell (one source, one architecture, some seeds) where the executor sent it.

    ``job`` is plain data: ``data`` (the run's :class:`~haba_core.config.DataConfig` as ``dataclasses.asdict``, its
    root resolved), ``device``, ``source`` (``{"kind": "synset", "file": bytes, "pairing": ...}`` or ``{"kind":
    "random_real", "ipc": k}``), ``net``, ``seeds``, ``recipe`` (a :class:`~haba_core.training.Recipe` as
    ``dataclasses.asdict``), ``batched``. Returns one record per seed. Top-level so executors can pickle it.
    """
    from haba_core.config import DataConfig
    from haba_core.data.datasets import dataset_from_config

    recipe = Recipe(**job["recipe"])
    dataset = dataset_from_config(DataConfig(**job["data"]))
    dataset = dataset.evaluated_on(recipe.split).to(resolve_device(job["device"]))
    src, seeds = job["source"], list(job["seeds"])
    if src["kind"] == "synset":
        synset = _synset_from_bytes(src["file"], dataset.images_test.device)
        sources = [_synset_source(synset, src["pairing"])] * len(seeds)
    else:
        sources = [_fixed_source(*dataset.subset_random(src["ipc"], torch.Generator().manual_seed(s))) for s in seeds]
    with torch.enable_grad():
        return train_seeds(sources, dataset, job["net"], recipe, seeds, job["batched"])


def _synset_from_bytes(data: bytes, device):
    from haba_core.synsets import load_synset

    with tempfile.TemporaryDirectory(prefix="haba_eval_") as tmp:
        path = Path(tmp) / "set.safetensors"  # a scratch copy of the bytes a worker was sent
        path.write_bytes(data)
        return load_synset(path, device)


def _tag(name: str, identity: dict) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{name}-{digest}"


def evaluate_run(
    run: str | Path,
    cfg,
    ecfg,
    synset_path: str | Path,
    *,
    baseline: str | None = None,
    executor=None,
    retries: int = 1,
    batched: bool | None = None,
    device: str | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
    ledger: LedgerEntry | None = None,
) -> dict:
    """The cross-architecture matrix of a run folder: ``ecfg.nets`` x ``ecfg.seeds`` on the synset at
    ``synset_path`` (and on a random real subset at the same storage when ``baseline="random"``).

    ``cfg`` is the run's RunConfig (data, DSA strategy, device), ``ecfg`` the EvalConfig to use. Finished
    cells already in ``RUN/eval/cells/<tag>/`` (same synset file, data and protocol) are reused, never
    recomputed; new ones are written as they finish. Writes ``RUN/evaluation.json`` (the structure of
    :func:`evaluate_synset` under ``"synset"``/``"random_real"``, plus ``failed``, ``complete``, ``executor``,
    ``wall_s``, ...), a copy under ``RUN/eval/eval_<time>.json``, and ``RUN/eval/matrix.csv``. Returns the
    evaluation dict; ``result["complete"]`` is False when some task failed after its retries. On the test split
    every finished task is recorded through ``ledger`` (default: the run folder's test ledger) as it lands.
    """
    from haba_core import runfolder as RF
    from haba_core.data.datasets import check_ipc, dataset_from_config
    from haba_core.errors import ConfigError
    from haba_core.executors import InlineExecutor, Task
    from haba_core.synsets import load_synset

    run, synset_path = Path(run), Path(synset_path)
    t_start = time.time()
    say = log or (lambda _m: None)
    d = dataclasses.replace(cfg.data, root=str(Path(cfg.data.root).expanduser().resolve()))
    data = dataclasses.asdict(d)  # what every worker loads (DataConfig(**data)): the run's data, whole
    device = device or cfg.device
    dsa = cfg.dsa_strategy if ecfg.dsa else ""
    nets = list(ecfg.nets)
    seeds = [seed + k for k in range(ecfg.seeds)]
    synset_bytes = synset_path.read_bytes()
    synset = load_synset(synset_path)
    info = synset.info
    data_identity = d.identity()

    # fail early, in the driver, when the data cannot be loaded (not once per task in the workers)
    ds = dataset_from_config(d).evaluated_on(ecfg.split)
    test_images, per_class = len(ds.labels_test), ds.class_counts()
    del ds
    sources: dict[str, dict] = {}
    protocol = protocol_of(ecfg, synset.extra.get("syn_lr"), dsa, test_images, resolve_device(device))
    sources["synset"] = {
        "protocol": protocol,
        "storage": synset.storage(),
        "spec": {"kind": "synset", "file": synset_bytes, "pairing": ecfg.pairing},
        "identity": {"synset_sha256": hashlib.sha256(synset_bytes).hexdigest(), "pairing": ecfg.pairing},
    }
    if baseline == "random":
        ipc = max(1, math.floor(synset.storage().ipc_equivalent + 1e-9))
        check_ipc(ipc, per_class, "--baseline random", "Evaluate without it (untick Baseline in the app).")
        sources["random_real"] = {
            "protocol": protocol_of(ecfg, None, dsa, test_images, resolve_device(device)),  # same, no learned lr
            "storage": random_real_storage(info, ipc),
            "spec": {"kind": "random_real", "ipc": ipc},
            "identity": {"random_real_ipc": ipc},
        }
    elif baseline:
        raise ConfigError(f"Unknown baseline {baseline!r}. Valid: random.")
    for net in nets:  # an architecture that cannot take these images fails here, not in every task
        create_net(net, info.channels, info.num_classes, info.im_size)
    grouped = batched if batched is not None else grouped_by_default(resolve_device(device))
    tasks: list[Task] = []
    meta: dict[str, tuple[str, str, list[int]]] = {}
    reused = 0
    for name, src in sources.items():
        src["tag"] = _tag(name, {**src["identity"], "protocol": src["protocol"], "data": data_identity})
        src["dir"] = RF.cells_dir(run, src["tag"])
        recipe = dataclasses.asdict(Recipe.from_protocol(src["protocol"], ecfg.test_batch, ecfg.compile))
        spec = {"source": name, **src["identity"], "protocol": src["protocol"], "storage": src["storage"].to_dict()}
        RF.write_cell_spec(src["dir"], {**spec, "data": data_identity, "synset_file": str(synset_path)})
        for net in nets:
            todo = [s for s in seeds if not RF.cell_path(src["dir"], net, s).exists()]
            reused += len(seeds) - len(todo)
            groups = [todo] if grouped else [[s] for s in todo]  # per-seed tasks spread over workers
            for group in (g for g in groups if g):
                tid = f"{name}/{net}/s{','.join(map(str, group))}"
                job = {
                    "data": data,
                    "device": device,
                    "source": src["spec"],
                    "net": net,
                    "seeds": group,
                    "recipe": recipe,
                    "batched": grouped,
                }
                tasks.append(Task(tid, (job,)))
                meta[tid] = (name, net, group)
    # the test split is recorded task by task as results land; a search refuses a second test before any is run
    look = admit(ledger or RF.ledger_entry(run, cfg.to_dict()), ecfg.split, cfg.to_dict(), check=bool(tasks))
    total = len(sources) * len(nets) * len(seeds)
    say(
        f"evaluation: {total} cells ({len(nets)} nets x {len(seeds)} seeds x {len(sources)} sources), "
        f"{reused} already done, {len(tasks)} tasks to run"
    )

    def on_result(r) -> None:
        name, net, group = meta[r.id]
        if not r.ok:
            say(f"FAILED {r.id} after {r.attempts} attempt(s): {(r.error or '').splitlines()[0]}")
            return
        for rec in r.value:
            cell = {
                **rec,
                "source": name,
                "tag": sources[name]["tag"],
                "attempts": r.attempts,
                "worker": r.worker,
                "task_s": round(r.seconds, 3),
                "finished_at": time.time(),
            }
            RF.write_cell(sources[name]["dir"], net, rec["seed"], cell)
        if look is not None:
            src = sources[name]
            look.record(src["protocol"], len(r.value), cell=r.id, kind=src["storage"].kind, nets=[net], seeds=group)
        accs = " ".join(f"{100 * rec['acc']:.2f}" for rec in r.value)
        say(f"done {r.id}: {accs} ({r.value[0].get('path')}, {r.seconds:.1f} s on {r.worker})")

    executor = executor or InlineExecutor()
    results = executor.map(eval_cell_task, tasks, retries=retries, on_result=on_result, log=say) if tasks else []
    failed = [
        {
            "task": r.id,
            "source": meta[r.id][0],
            "net": meta[r.id][1],
            "seeds": meta[r.id][2],
            "attempts": r.attempts,
            "error": r.error,
        }
        for r in results
        if not r.ok
    ]

    out: dict[str, Any] = {
        "synset_file": str(synset_path.relative_to(run) if synset_path.is_relative_to(run) else synset_path),
        "started_at": t_start,
    }
    for name, src in sources.items():
        per_net = {}
        for net in nets:
            cells = RF.read_cells(src["dir"], net, seeds)
            if cells:
                per_net[net] = _net_summary(cells)
                # compute seconds spent on this net's cells (a grouped task's time is shared by its seeds)
                per_net[net]["compute_s"] = round(sum(c.get("task_s", 0.0) / c.get("group_size", 1) for c in cells), 3)
                missing = [s for s in seeds if s not in per_net[net]["seeds"]]
                if missing:
                    per_net[net]["missing_seeds"] = missing
        out[name] = {**_result(per_net, src["protocol"], src["storage"]), "cells": str(src["dir"].relative_to(run))}
    out.update(
        {
            "architectures": nets,
            "seeds": seeds,
            "batched": grouped,
            "executor": executor.describe(),
            "retries": retries,
            "computed_tasks": len(tasks),
            "reused_cells": reused,
            "failed": failed,
            "complete": not failed,
            "wall_s": time.time() - t_start,  # this invocation (reused cells cost nothing)
            "compute_s": round(sum(r.get("compute_s", 0.0) for n in sources for r in out[n]["nets"].values()), 3),
            "matrix_csv": RF.MATRIX_CSV,
        }
    )
    RF.write_evaluation(run, out, matrix_csv(out))
    return out
