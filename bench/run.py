"""Run a benchmark profile: ``python -m bench.run --profile cpu`` (``make bench``), ``--smoke`` for CI.

Each cell runs in its own process (so peak memory is per cell) and writes one JSON file when it is done;
a rerun skips finished cells, so a stopped benchmark continues where it stopped (distillations inside a
cell also resume from their checkpoints). Results: ``bench/results/<profile>.json`` and ``<profile>.md``
with accuracy (mean +- sample std over n networks), storage, seconds per iteration, evaluation time, peak memory,
the share of each iteration spent in convolutions, the machine, the git commit and the exact command. Each cell's
JSON also keeps its seeds (distillation and evaluation networks), its full resolved config and the commit (with a
dirty flag) it ran at; each cell's test evaluation is a line of ``<out>/test_ledger.jsonl`` (``haba_core.ledger``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.profiles import PROFILES, Cell, Profile
from haba_core import runfolder as RF
from haba_core.ledger import LedgerEntry, git_commit, git_state
from haba_core.protocol import distinct_protocols, protocol_id, protocol_label

ROOT = Path(__file__).resolve().parent.parent
_STARTED = time.time()
CONV_OPS = ("conv",)  # aten::convolution, mkldnn_convolution, convolution_backward, conv2d, ...


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


TEST_LEDGER = "test_ledger.jsonl"  # beside the results: bench/results/test_ledger.jsonl for the bench and studies
STUDIES_LEDGER = ROOT / "bench" / "results" / TEST_LEDGER  # where the studies (scripts/) record their tests


def sample_std(values: list[float]) -> float:
    """The sample standard deviation (ddof 1) every reported +- is; 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


# ------------------------------------------------------------------------------------------ one cell (child)


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
    """Where a profile's MTT experts for ``dataset`` live (cells run in ``<out>/<profile>/runs/<cell>``)."""
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
    if cell.method == "mtt":
        overrides.append(f"method.expert_dir={experts_dir(profile_out, cell.dataset)}")
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
        return evaluate_run_of(profile, cell, workdir.parent.parent.parent / cell.run_of, cfg, ledger, t0)
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


def evaluate_run_of(profile: Profile, cell: Cell, source: Path, cfg, ledger: LedgerEntry, t0: float) -> dict:
    """Evaluate on the profile's networks the set that the profile in ``source`` kept for the cell of this name
    (``sets/<name>.safetensors``, distilled under the config its ``cells/<name>.json`` records)."""
    from haba_core.data import load_dataset
    from haba_core.evaluate import evaluate_synset
    from haba_core.synsets import load_synset

    record, set_file = source / "cells" / f"{cell.name}.json", source / "sets" / f"{cell.name}.safetensors"
    if not record.exists() or not set_file.exists():
        raise SystemExit(f"{cell.name} evaluates the set {set_file}, which is not there yet: run {source.name} first")
    saved, mine = json.loads(record.read_text())["config"], cfg.to_dict()
    same = all(saved.get(k) == mine.get(k) for k in ("synset", "haba", "seed", "iterations"))
    if not same or saved["method"].get("name") != mine["method"].get("name"):
        raise SystemExit(f"{cell.name}: {set_file} was distilled with another config than this cell's")
    synset = load_synset(set_file)
    ds = load_dataset(cfg.data.name, root=cfg.data.root)
    look = dataclasses.replace(ledger, config=saved)
    nets, seeds = profile.eval_nets, profile.eval_seeds
    ev = evaluate_synset(synset, ds, cfg.eval, nets, seeds, dsa_strategy=cfg.dsa_strategy, seed=cfg.seed, ledger=look)
    return {
        "eval": ev,
        "sec_per_iter": None,
        "iterations": cfg.iterations,
        "wall_s": time.time() - t0,
        "config": saved,
        "distill_seed": cfg.seed,
        "evaluated_set": str(set_file.relative_to(source.parent)),
    }


# ----------------------------------------------------------------------------------------- driver (parent)


def experts_command(profile: Profile, out: Path, dataset: str) -> list[str]:
    # the root as the cells read it (data.root, the default lookup), not --data-root, which reads only that folder
    return [
        sys.executable,
        "-m",
        "haba_core",
        "experts",
        "--dataset",
        dataset,
        "--out",
        str(experts_dir(out, dataset)),
        "--quiet",
        "--set",
        f"data.root={ROOT / 'data'}",
        *profile.experts[dataset],
    ]


# rough relative cost of a cell, for longest-first scheduling: method x budget (shares of `make bench`'s time)
_METHOD_COST = {None: 1.0, "dm": 1.5, "dc": 2.0, "dsa": 2.0, "mtt": 4.0}


def cell_cost(cell: Cell) -> float:
    return _METHOD_COST.get(cell.method, 2.0) * (3.0 if cell.budget_ipc >= 10 else 1.0)


def child_env(threads: int) -> dict:
    """The environment of a cell's process: ``threads`` intra-op threads (torch reads OMP_NUM_THREADS), under
    jemalloc keeping freed memory where it is installed (``haba_core.memory.allocator_env``)."""
    from haba_core.memory import allocator_env

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return allocator_env(env)


def _todo(profile: Profile, cells: list[Cell], out: Path, log) -> list[Cell]:
    """The cells without a current result (a result from before protocols is redone, its run removed)."""
    todo = []
    for cell in cells:
        result_path = out / "cells" / f"{cell.name}.json"
        if result_path.exists():
            pid = protocol_id(json.loads(result_path.read_text()).get("protocol"))
            if pid not in ("legacy", "missing"):
                log(f"[skip] {cell.name}: done earlier")
                continue
            log(f"[redo] {cell.name}: its result predates evaluation protocols (not comparable); distilling afresh")
            import shutil

            shutil.rmtree(out / "runs" / cell.name, ignore_errors=True)  # its run used the old network too
        todo.append(cell)
    return todo


class _Job:
    """One child process (a cell, or the experts of a dataset) writing its output to a log file."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, threads: int):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.name, self.log_path, self.t0 = name, log_path, time.time()
        self._fh = open(log_path, "w")  # closed in done()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._fh, stderr=subprocess.STDOUT, env=child_env(threads))

    def done(self) -> int | None:
        rc = self.proc.poll()
        if rc is not None and not self._fh.closed:
            self._fh.close()
        return rc

    def tail(self, n: int = 12) -> list[str]:
        return self.log_path.read_text(errors="replace").strip().splitlines()[-n:]


def run_profile(
    profile: Profile, out_root: Path, only: list[str] | None, log=print, jobs: int | None = None, report=None
) -> dict:
    """Run the profile's missing cells, ``jobs`` processes at a time (default: the profile's), longest first;
    each process gets ``cores // jobs`` threads. MTT cells start once their experts are trained (the experts
    run as one more job, first). Each child's output goes to ``<out>/<profile>/logs/<name>.log``."""
    out = out_root / profile.name
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    jobs = max(1, jobs or profile.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    cells = [c for c in profile.cells if not only or any(o in c.name for o in only)]
    todo = _todo(profile, cells, out, log)
    pending_experts = {c.dataset for c in todo if c.method == "mtt"}
    for dataset in pending_experts:
        if dataset not in profile.experts:
            raise SystemExit(f"profile {profile.name!r} has MTT cells on {dataset} but no experts recipe for it")
    queue: list[tuple[str, object]] = [("experts", d) for d in sorted(pending_experts)]
    queue += [("cell", c) for c in sorted(todo, key=cell_cost, reverse=True)]  # longest first
    log(f"{len(todo)} cells to run, {jobs} at a time, {threads} thread(s) each")
    running: list[tuple[str, object, _Job]] = []
    failed_experts: set[str] = set()
    while queue or running:
        # start what may start: experts any time, an MTT cell once its experts are ready
        for entry in list(queue):
            if len(running) >= jobs:
                break
            kind, item = entry
            if kind == "cell" and item.method == "mtt":
                if item.dataset in failed_experts:
                    queue.remove(entry)
                    log(f"[fail] {item.name}: its experts failed")
                    from haba_core import io

                    io.write_json(
                        cells_dir / f"{item.name}.failed.json",
                        {"cell": item.name, "error": f"the experts for {item.dataset} failed"},
                    )
                    continue
                if item.dataset in pending_experts:  # queued or training
                    continue
            queue.remove(entry)
            if kind == "experts":
                cmd = experts_command(profile, out, item)
                log("$ " + shlex.join(cmd))
                job = _Job(f"experts_{item}", cmd, out / "logs" / f"experts_{item}.log", threads)
                running.append((kind, item, job))
            else:
                log(f"[run ] {item.name}")
                cmd = [
                    sys.executable,
                    "-m",
                    "bench.run",
                    "--profile",
                    profile.name,
                    "--cell",
                    item.name,
                    "--out",
                    str(out_root),
                ]
                running.append((kind, item, _Job(item.name, cmd, out / "logs" / f"{item.name}.log", threads)))
        time.sleep(0.5)
        for entry in list(running):
            kind, item, job = entry
            rc = job.done()
            if rc is None:
                continue
            running.remove(entry)
            if kind == "experts":
                pending_experts.discard(item)
                if rc != 0:
                    failed_experts.add(item)
                    log(f"[fail] experts for {item}:\n  " + "\n  ".join(job.tail()))
                else:
                    log(f"experts for {item} ready ({time.time() - job.t0:.0f} s)")
                continue
            if rc != 0:
                err = job.tail()
                log(f"[fail] {item.name}:\n  " + "\n  ".join(err))
                from haba_core import io

                io.write_json(cells_dir / f"{item.name}.failed.json", {"cell": item.name, "error": "\n".join(err)})
                continue
            (cells_dir / f"{item.name}.failed.json").unlink(missing_ok=True)
            res = json.loads((cells_dir / f"{item.name}.json").read_text())
            log(f"[done] {item.name}: {res['summary']} ({res['wall_s']:.0f} s)")
    return (report or aggregate)(profile, out_root, {"jobs": jobs, "threads_per_job": threads})


def child(profile: Profile, cell_name: str, out_root: Path) -> int:
    from haba_core import io

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
        "config": res["config"],  # the full resolved config of the cell
        **({"evaluated_set": res["evaluated_set"]} if "evaluated_set" in res else {}),
        "summary": f"{100 * acc['mean']:.2f} +- {100 * sample_std(acc['per_seed']):.2f} % ({net}, sample std over "
        f"n = {n} nets)",
    }
    kept = workdir / "run" / RF.SYNSET
    if profile.keep_sets and kept.exists():  # before the record: a cell with a record always has its set
        io.atomic_write_bytes(out_root / profile.name / "sets" / f"{cell.name}.safetensors", kept.read_bytes())
    io.write_json(out_root / profile.name / "cells" / f"{cell.name}.json", record)
    return 0


def write_report(out: Path, result: dict, md: str) -> None:
    """``<out>.json`` (every measurement) and ``<out>.md`` (the table), as the measurement scripts leave them."""
    from haba_core import io

    io.write_json(out.with_suffix(".json"), result)
    out.with_suffix(".md").write_text(md)
    print(md)


def aggregate(profile: Profile, out_root: Path, schedule: dict | None = None) -> dict:
    from haba_core import io

    cells_dir = out_root / profile.name / "cells"
    rows, failed = [], []
    for cell in profile.cells:
        p = cells_dir / f"{cell.name}.json"
        if p.exists():
            rows.append(json.loads(p.read_text()))
        elif (cells_dir / f"{cell.name}.failed.json").exists():
            failed.append(json.loads((cells_dir / f"{cell.name}.failed.json").read_text()))
    result = {
        "profile": profile.name,
        "description": profile.description,
        "notes": list(profile.notes),
        "command": "python -m bench.run " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "git_commit": git_commit(),
        "machine": machine(),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cells": rows,
        "failed": failed,
        "complete": len(rows) == len(profile.cells),
        "protocols": distinct_protocols(r.get("protocol") for r in rows),
        "schedule": schedule or {},  # how this invocation ran its cells (timings were taken under it)
        "wall_s": round(time.time() - _STARTED, 1),  # this invocation, from start to the aggregate
    }
    io.write_json(out_root / f"{profile.name}.json", result)
    md = markdown(result)
    (out_root / f"{profile.name}.md").write_text(md)
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"### Benchmark `{result['profile']}`: {result['description']}",
        "",
        f"Command: `{result['command']}` at commit `{result['git_commit'][:12]}`, {result['finished_at']}; "
        f"{m['cpu'] or 'unknown CPU'}, {m['cores']} cores, torch {m['torch']}"
        + (f", {m['cuda']}" if m.get("cuda") else "")
        + ".",
    ]
    sched = result.get("schedule") or {}
    if sched:
        lines += [
            "",
            f"Schedule: {sched['jobs']} cell(s) at a time, {sched['threads_per_job']} thread(s) each "
            f"(s/iter and eval times were measured so); this invocation took "
            f"{result.get('wall_s', 0) / 60:.0f} min.",
        ]
    protocols = result.get("protocols") or distinct_protocols(r.get("protocol") for r in result["cells"])
    if len(protocols) > 1:
        lines += [
            "",
            f"**Rows were evaluated under {len(protocols)} different protocols "
            f"({'; '.join(protocols)}): compare only rows that share one.**",
        ]
    elif protocols:
        lines += ["", f"Every row: evaluation protocol {protocols[0]}."]
    ns = sorted({len(r["accuracy_per_seed"]) for r in result["cells"]})
    if ns:
        lines += ["", f"Accuracy: mean +- sample std (ddof 1) over n = {' or '.join(map(str, ns))} networks per row."]
    published = any(r["cell"].get("published") for r in result["cells"])
    head = (
        "| budget (IPC) | cell | accuracy % | stored floats | IPC-equiv | images/class | s/iter | distilled in "
        "| conv share | eval s/net | peak MB | protocol |"
    )
    lines += ["", head + (" published % | gap |" if published else ""), "|---" * (12 + 2 * published) + "|"]
    for r in result["cells"]:
        c, st = r["cell"], r["storage"]
        kind = st.get("label") or c["synset"]  # what ran, e.g. FreD's variance masks or the low-pass square
        name = "random real" if c["method"] is None else f"{c['method'].upper()} + {kind}"
        spi = "" if r["sec_per_iter"] is None else f"{r['sec_per_iter']:.3f}"
        share = "" if r.get("conv_share") is None else f"{100 * r['conv_share']:.0f}%"
        ev = "" if r.get("eval_train_s_median") is None else f"{r['eval_train_s_median']:.1f}"
        row = (
            f"| {c['budget_ipc']:g} | {name} | {100 * r['accuracy_mean']:.2f} +- "
            f"{100 * sample_std(r['accuracy_per_seed']):.2f} "
            f"| {st['floats_total']:,} | {st['ipc_equivalent']:.3f} | {st['images_per_class']} | {spi} "
            f"| {r.get('distill_precision') or ''} | {share} "
            f"| {ev} | {r['peak_rss_mb']:.0f} | {protocol_label(r.get('protocol'))} |"
        )
        if published:
            pub = c.get("published")
            row += (
                f" {pub[0]:.1f} +- {pub[1]:.1f} | {100 * r['accuracy_mean'] - pub[0]:+.2f} |" if pub else " (none) | |"
            )
        lines.append(row)
    for f in result["failed"]:
        lines.append(f"| | {f['cell']} | failed |" + " |" * (10 + 2 * published))
    if result.get("notes"):
        lines += ["", *(f"Note: {n}" for n in result["notes"])]
    if not result["complete"]:
        lines += ["", "_Incomplete: rerun the same command to finish the missing cells._"]
    return "\n".join(lines) + "\n"


def all_profiles() -> dict[str, Profile]:
    """The bench profiles and the findings' studies (``bench.studies``), whose cells run through here too."""
    from bench.studies import STUDIES

    return {**PROFILES, **{name: s.profile() for name, s in STUDIES.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    profiles = all_profiles()
    p.add_argument("--profile", default="cpu", choices=sorted(profiles))
    p.add_argument("--smoke", action="store_true", help="shorthand for --profile smoke")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--only", action="append", help="run only cells whose name contains this (repeatable)")
    p.add_argument("--jobs", type=int, help="cells run at once (default: the profile's; each gets cores/jobs threads)")
    p.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell in this process
    a = p.parse_args(argv)
    profile = profiles["smoke" if a.smoke else a.profile]
    out_root = Path(a.out)
    if a.cell:
        return child(profile, a.cell, out_root)
    result = run_profile(profile, out_root, a.only, jobs=a.jobs)
    print(markdown(result))
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
