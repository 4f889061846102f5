"""Run a benchmark profile: ``python -m bench.run --profile cpu`` (``make bench``), ``--smoke`` for CI.

Each cell runs in its own process (``bench.cell``; so peak memory is per cell) and writes one JSON file when it is done;
a rerun skips finished cells, so a stopped benchmark continues where it stopped (distillations inside a
cell also resume from their checkpoints). Results: ``bench/results/<profile>.json`` and ``<profile>.md``
with accuracy (mean +- sample std over n networks), storage, seconds per iteration, evaluation time, peak memory,
the share of each iteration spent in convolutions, the machine, the git commit and the exact command. Each cell's
JSON also keeps its seeds (distillation and evaluation networks), its full resolved config and the commit (with a
dirty flag) it ran at; each cell's test evaluation is a line of ``<out>/test_ledger.jsonl`` (``haba_core.ledger``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench.cell import PARENT_ENV, ROOT, TEST_LEDGER, child, experts_dir, sample_std
from bench.profiles import PROFILES, Cell, Profile
from bench.provenance import provenance
from haba_core.protocol import distinct_protocols, protocol_id, protocol_label

_STARTED = time.time()
STUDIES_LEDGER = ROOT / "bench" / "results" / TEST_LEDGER  # where the studies (bench.val_search, ...) record tests


# ----------------------------------------------------------------------------------------- driver (parent)


def experts_command(profile: Profile, folder: Path, dataset: str) -> list[str]:
    """Train ``profile``'s experts for ``dataset`` into ``folder`` (a profile's own: ``cell.experts_dir``)."""
    # the root as the cells read it (data.root, the default lookup), not --data-root, which reads only that folder
    return [
        sys.executable,
        "-m",
        "haba_core",
        "experts",
        "--dataset",
        dataset,
        "--out",
        str(folder),
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
    jemalloc keeping freed memory where it is installed (``haba_core.memory.allocator_env``), and this process's
    pid, so that a cell ends with the run that started it (``bench.cell.child``)."""
    from haba_core.memory import allocator_env

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **{PARENT_ENV: str(os.getpid())})
    return allocator_env(env)


def _todo(profile: Profile, cells: list[Cell], out: Path, log) -> list[Cell]:
    """The cells without a current result (a result from before protocols, or of a cell whose settings changed
    since, is redone, its run removed)."""
    todo = []
    for cell in cells:
        result_path = out / "cells" / f"{cell.name}.json"
        if result_path.exists():
            record = json.loads(result_path.read_text())
            changes = profile.changes_since(cell, record)
            if protocol_id(record.get("protocol")) in ("legacy", "missing"):
                log(f"[redo] {cell.name}: its result predates evaluation protocols (not comparable); distilling afresh")
            elif changes:
                log(f"[redo] {cell.name}: the cell changed since its result ran: {'; '.join(changes)}")
            else:
                log(f"[skip] {cell.name}: done earlier")
                continue
            import shutil

            shutil.rmtree(out / "runs" / cell.name, ignore_errors=True)  # its run is the old cell's
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


def precision_note(profile: Profile, device: str = "auto") -> str | None:
    """What a profile that fixes bf16 is told on a CPU without native bf16: it runs emulated (``haba_core.bf16``)."""
    from haba_core.bf16 import bf16_arithmetic
    from haba_core.devices import resolve_device

    if profile.precision == "bf16" and bf16_arithmetic(resolve_device(device)) == "emulated":
        return (
            f"profile {profile.name!r} holds bf16, which this CPU lacks: its matrix products and convolutions are "
            "computed in float32 and rounded to bf16 as a native CPU's are (haba_core.bf16), eagerly (torch.compile "
            "captures nothing under the emulation), at about eager float32's speed"
        )
    return None


def run_profile(
    profile: Profile,
    out_root: Path,
    only: list[str] | None,
    log=print,
    jobs: int | None = None,
    report=None,
) -> dict:
    """Run the profile's missing cells, ``jobs`` processes at a time (default: the profile's), longest first;
    each process gets ``cores // jobs`` threads. Cells whose method needs experts (``Cell.needs_experts``: MTT)
    start once their experts are trained (the experts run as one more job, first). Each child's output goes to
    ``<out>/<profile>/logs/<name>.log``."""
    out = out_root / profile.name
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    jobs = max(1, jobs or profile.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    cells = [c for c in profile.cells if not only or any(o in c.name for o in only)]
    todo = _todo(profile, cells, out, log)
    if todo and (note := precision_note(profile)):
        log(f"note: {note}")
    pending_experts = {c.dataset for c in todo if c.needs_experts}
    for dataset in pending_experts:
        if dataset not in profile.experts:
            raise SystemExit(f"profile {profile.name!r} has cells needing experts on {dataset} but no experts recipe")
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
            if kind == "cell" and item.needs_experts:
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
                cmd = experts_command(profile, experts_dir(out, item), item)
                log("$ " + shlex.join(cmd))
                job = _Job(f"experts_{item}", cmd, out / "logs" / f"experts_{item}.log", threads)
                running.append((kind, item, job))
            else:
                log(f"[run ] {item.name}")
                cmd = [sys.executable, "-m", profile.runner, "--cell", item.name, "--out", str(out_root)]
                cmd[3:3] = ["--profile", profile.name] if profile.runner == "bench.run" else [profile.name]
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
        **provenance("bench.run"),
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
    commits = sorted({r["git_commit"][:12] for r in result["cells"] if r.get("git_commit")})
    if commits and commits != [result["git_commit"][:12]]:  # cells kept from earlier invocations
        lines[-1] += f" Cells ran at {', '.join(f'`{c}`' for c in commits)} (each cell's JSON records its own)."
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    p.add_argument("--smoke", action="store_true", help="shorthand for --profile smoke")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--only", action="append", help="run only cells whose name contains this (repeatable)")
    p.add_argument("--jobs", type=int, help="cells run at once (default: the profile's; each gets cores/jobs threads)")
    p.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell in this process
    a = p.parse_args(argv)
    profile = PROFILES["smoke" if a.smoke else a.profile]
    out_root = Path(a.out)
    if a.cell:
        return child(profile, a.cell, out_root)
    result = run_profile(profile, out_root, a.only, jobs=a.jobs)
    print(markdown(result))
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
