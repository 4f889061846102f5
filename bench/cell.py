"""One bench cell, in its own process (``python -m bench.run --cell NAME``, started by :func:`bench.run.run_profile`):
distill the cell (or draw a random real subset, or take the set another profile kept), evaluate it on the profile's
networks, record its test evaluation in ``<out>/test_ledger.jsonl`` and write ``cells/<name>.json`` (and, where the
profile keeps sets, ``sets/<name>.safetensors`` first)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import statistics
import time
from pathlib import Path

from bench.profiles import Cell, Profile
from bench.provenance import machine
from haba_core import runfolder as RF
from haba_core.ledger import LedgerEntry, git_state

ROOT = Path(__file__).resolve().parent.parent
CONV_OPS = ("conv",)  # aten::convolution, mkldnn_convolution, convolution_backward, conv2d, ...


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


TEST_LEDGER = "test_ledger.jsonl"  # beside the results: bench/results/test_ledger.jsonl for the bench and studies
PARENT_ENV = "HABA_BENCH_PARENT"  # set by bench.run for its cells: the pid they end with


def sample_std(values: list[float]) -> float:
    """The sample standard deviation (ddof 1) every reported +- is; 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def conv_share(d, iterations: int) -> dict:
    """Profile ``iterations`` outer iterations; the share of operator self-time spent in convolutions."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iterations):
            d.iterate()
    total = conv = 0.0
    for e in prof.key_averages():
        total += e.self_cpu_time_total
        if any(k in e.key.lower() for k in CONV_OPS):
            conv += e.self_cpu_time_total
    return {"conv_share": conv / total if total else None, "profiled_iterations": iterations}


def experts_dir(profile_out: Path, dataset: str) -> Path:
    """Where a profile's experts for ``dataset`` live, for the cells that need them (MTT; cells run in
    ``<out>/<profile>/runs/<cell>``)."""
    return profile_out / "experts" / dataset


def cell_overrides(profile: Profile, cell: Cell, profile_out: Path) -> list[str]:
    """The config overrides of a distillation cell (on top of its preset file)."""
    overrides = list(profile.common) + [
        f"method.name={cell.method}",
        f"synset.kind={cell.synset}",
        f"synset.budget_ipc={cell.budget_ipc}",
        f"eval.epochs={profile.eval_epochs}",
        f"eval.seeds={profile.eval_seeds}",
        f"data.root={ROOT / 'data'}",
    ]
    overrides += profile.precision_overrides(cell)
    if cell.needs_experts:  # the method names its expert folder's option
        overrides.append(f"method.{cell.expert_field}={experts_dir(profile_out, cell.dataset)}")
    overrides += list(cell.overrides)
    return overrides


def run_cell(profile: Profile, cell: Cell, workdir: Path, ledger: LedgerEntry) -> dict:
    """Distill (unless random real) and evaluate one cell in this process; its test evaluation is recorded
    through ``ledger`` with the cell's resolved config."""
    import torch

    from haba_core.config import resolve_config
    from haba_core.data import load_dataset
    from haba_core.engine import distill
    from haba_core.evaluate import random_real_baseline

    t0 = time.time()
    overrides = cell_overrides(profile, cell, workdir.parent.parent)
    if cell.method is None:  # the profile's eval.* settings, so the row shares the distilled rows' protocol
        cfg = resolve_config(overrides=[o for o in overrides if o.startswith(("eval.", "seed="))])
        ecfg = dataclasses.replace(
            cfg.eval, nets=profile.eval_nets, seeds=profile.eval_seeds, epochs=profile.eval_epochs
        )
        ds = load_dataset(profile.data.get("name", "fashion_mnist"), root=str(ROOT / "data"))
        ipc = max(1, math.floor(cell.budget_ipc + 1e-9))
        config = {**cfg.to_dict(), "eval": dataclasses.asdict(ecfg), "random_real_ipc": ipc}
        look = dataclasses.replace(ledger, config=config)
        # a study's distillation seed k draws other subsets (and networks): seeds 1000k, 1000k + 1, ...
        nets, seeds = profile.eval_nets, profile.eval_seeds
        ev = random_real_baseline(ds, ipc, ecfg, nets, seeds, cfg.dsa_strategy, seed=1000 * cfg.seed, ledger=look)
        out = {"eval": ev, "sec_per_iter": None, "iterations": 0, "wall_s": time.time() - t0}
        chosen = any(o.startswith("seed=") for o in overrides)  # a study's seed k: the subsets it draws
        return {**out, "config": config, "distill_seed": cfg.seed if chosen else None}
    files = [ROOT / cell.config] if cell.config else []
    cfg = resolve_config(files=files, overrides=overrides)
    if cell.run_of:
        return evaluate_run_of(profile, cell, workdir, cfg, ledger, t0)
    run_dir = workdir / "run"
    resume = (run_dir / RF.CONFIG).exists()
    d = distill(cfg, run_dir, resume=resume)
    spi = d.seconds_per_iteration()
    with torch.random.fork_rng():
        look = dataclasses.replace(ledger, config=d.cfg.to_dict())
        ev = d.evaluate(profile.eval_nets, profile.eval_seeds, cfg.eval, ledger=look)  # the profile's, even resumed
    speed = conv_share(d, profile.profile_iterations)
    if spi is None:  # resumed a finished run: time the profiled iterations instead
        spi = d.seconds_per_iteration()
    return {
        "eval": ev,
        "sec_per_iter": spi,
        "iterations": cfg.iterations,
        "wall_s": time.time() - t0,
        "config": d.cfg.to_dict(),
        "distill_seed": cfg.seed,
        "distill_precision": d.method.precision,
        **speed,
    }


def evaluate_run_of(profile: Profile, cell: Cell, workdir: Path, cfg, ledger: LedgerEntry, t0: float) -> dict:
    """Evaluate on the profile's networks the set that the profile ``cell.run_of`` (beside this one) kept for the
    cell of this name (``sets/<name>.safetensors``, distilled under the config its ``cells/<name>.json`` records).

    Each network's result is kept in ``workdir`` as it finishes (``haba_core.evaluate.evaluate_run``'s cells), so
    a stopped cell resumes with the networks it has not trained yet: on 2 cores one such cell can take hours. A cell
    given several threads (fewer cells at once than cores) trains that many networks at once, one thread each,
    as the other cells train theirs: small networks on a CPU gain more from processes than from intra-op threads."""
    import torch

    from haba_core.evaluate import evaluate_run
    from haba_core.executors import make_executor

    source = workdir.parent.parent.parent / cell.run_of
    record, set_file = source / "cells" / f"{cell.name}.json", source / "sets" / f"{cell.name}.safetensors"
    if not record.exists() or not set_file.exists():
        raise SystemExit(f"{cell.name} evaluates the set {set_file}, which is not there yet: run {source.name} first")
    saved, mine = json.loads(record.read_text())["config"], cfg.to_dict()
    same = all(saved.get(k) == mine.get(k) for k in ("synset", "haba", "seed", "iterations"))
    if not same or saved["method"].get("name") != mine["method"].get("name"):
        raise SystemExit(f"{cell.name}: {set_file} was distilled with another config than this cell's")
    look = dataclasses.replace(ledger, config=saved)
    ecfg = dataclasses.replace(cfg.eval, nets=tuple(profile.eval_nets), seeds=profile.eval_seeds)
    with make_executor("local", workers=torch.get_num_threads(), threads=1) as executor:
        ev = evaluate_run(workdir, cfg, ecfg, set_file, seed=cfg.seed, ledger=look, executor=executor, log=None)
    if not ev["complete"]:
        failed = "; ".join(
            f"{f['task']}: {((f['error'] or '').strip().splitlines() or [''])[-1]}" for f in ev["failed"]
        )
        raise SystemExit(f"{cell.name}: some networks failed ({failed}); rerun the cell to retry only those")
    return {
        "eval": ev["synset"],
        "sec_per_iter": None,
        "iterations": cfg.iterations,
        "wall_s": time.time() - t0,
        "config": saved,
        "distill_seed": cfg.seed,
        "evaluated_set": str(set_file.relative_to(source.parent)),
        # a resumed cell's wall_s is this invocation's: these say what the earlier ones did
        "networks_reused": ev["reused_cells"],
        "compute_s": ev["compute_s"],  # every network's training and testing, reused ones included
    }


def child(profile: Profile, cell_name: str, out_root: Path) -> int:
    from haba_core import io
    from haba_core.executors import die_with_parent

    if parent := os.environ.get(PARENT_ENV):  # started by bench.run: a run stopped with kill takes its cells along
        die_with_parent(int(parent))

    cell = next((c for c in profile.cells if c.name == cell_name), None)
    if cell is None:
        raise SystemExit(f"unknown cell {cell_name!r}; cells: {', '.join(c.name for c in profile.cells)}")
    workdir = out_root / profile.name / "runs" / cell.name
    workdir.mkdir(parents=True, exist_ok=True)
    git = git_state()  # the commit (and whether tracked files differed from it) this cell ran at
    res = run_cell(
        profile, cell, workdir, LedgerEntry(out_root / TEST_LEDGER, f"{profile.name}/{cell.name}", "bench cell")
    )
    ev = res["eval"]
    net = profile.eval_nets[0]  # the headline network; every network's accuracy is in accuracy_by_net
    acc = ev["nets"][net]
    n = len(acc["per_seed"])
    record = {
        "cell": dataclasses.asdict(cell),
        "accuracy_by_net": {
            k: {"mean": v["mean"], "per_seed": v["per_seed"], "seeds": v["seeds"], "train_s": v.get("train_s")}
            for k, v in ev["nets"].items()
        },
        "accuracy_mean": acc["mean"],
        "accuracy_std": sample_std(acc["per_seed"]),  # sample std (ddof 1) over accuracy_n networks
        "accuracy_n": n,
        "accuracy_per_seed": acc["per_seed"],
        "seeds": {"distill": res["distill_seed"], "eval": acc["seeds"]},
        "eval_net": net,
        "eval_train_s_median": acc.get("train_s"),
        "eval_test_s_median": acc.get("test_s"),
        "storage": ev["storage"],
        "protocol": ev["protocol"],
        "sec_per_iter": res["sec_per_iter"],
        "iterations": res["iterations"],
        "distill_precision": res.get("distill_precision"),  # what method.precision resolved to
        "conv_share": res.get("conv_share"),
        "peak_rss_mb": peak_rss_mb(),
        "wall_s": res["wall_s"],
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "machine": machine(),  # its "bf16" says whether bf16 was native or emulated (haba_core.bf16)
        "config": res["config"],  # the full resolved config of the cell
        **{k: res[k] for k in ("evaluated_set", "networks_reused", "compute_s") if k in res},
        "summary": f"{100 * acc['mean']:.2f} +- {100 * sample_std(acc['per_seed']):.2f} % ({net}, sample std over "
        f"n = {n} nets)",
    }
    kept = RF.synset_path(workdir / "run")
    if profile.keep_sets and kept.exists():  # before the record: a cell with a record always has its set
        io.atomic_write_bytes(out_root / profile.name / "sets" / f"{cell.name}.safetensors", kept.read_bytes())
    io.write_json(out_root / profile.name / "cells" / f"{cell.name}.json", record)
    return 0
