"""DC, DSA and MTT, each with pixels and with HaBa, against the random real subset on Fashion-MNIST at one budget.

Every step runs through the CLI (the commands are printed and saved), with the CPU presets
``configs/fmnist_cpu_{dc,dsa,mtt}.yaml``: experts first (MTT), then per cell ``distill`` and ``evaluate``.
HaBa stores 14x14 bases at budget IPC 1 (full-size bases and 5 hallucinators do not fit 28x28 there).
Finished cells are reused, interrupted ones resumed. Results: ``OUT/<cell>/evaluation.json`` and
``OUT/summary.md`` / ``OUT/summary.json`` (accuracy mean +- std over the evaluation networks, storage,
median seconds and peak RSS per distillation iteration, whether the cell beats the random real subset).

    .venv/bin/python scripts/backends_table.py --out runs/issue3/table --jobs 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("dc", "dsa", "mtt")


def sh(args: list[str], log: Path, env: dict) -> None:
    line = "$ " + " ".join(shlex.quote(a) for a in args)
    print(line, flush=True)
    with open(log, "a") as f:
        f.write(line + "\n")
        f.flush()
        subprocess.run(args, check=True, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/issue3/table")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--budget-ipc", type=float, default=1)
    p.add_argument("--basis-size", type=int, default=14, help="HaBa basis resolution at this budget")
    p.add_argument("--iterations", action="append", default=[], metavar="METHOD=N", help="e.g. dc=150")
    p.add_argument("--seeds", type=int, default=3, help="evaluation networks per cell")
    p.add_argument("--epochs", type=int, default=300, help="evaluation epochs")
    p.add_argument("--jobs", type=int, default=2, help="cells run at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job (OMP_NUM_THREADS)")
    p.add_argument("--experts", default="experts/fmnist_cpu", help="MTT expert folder (made when missing)")
    p.add_argument("--set", action="append", default=[], metavar="CELL:KEY=VALUE", help="mtt:method.lr_img=100")
    a = p.parse_args()
    out = ROOT / a.out
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    py = [sys.executable, "-m", "haba_core"]
    iters = dict(x.split("=", 1) for x in a.iterations)
    methods = a.methods.split(",")
    t0 = time.time()
    if "mtt" in methods:
        sh(py + ["experts", "--dataset", "fashion_mnist", "--out", a.experts, "--num-experts", "3", "--epochs", "6",
                 "--train-limit", "10000", "--set", "net.width=64", "--quiet"], out / "experts.log", env)  # fmt: skip

    cells = [(m, kind) for m in methods for kind in ("pixels", "haba")]

    def run_cell(cell: tuple[str, str]) -> None:
        m, kind = cell
        run = out / f"{m}_{kind}"
        log = out / f"{m}_{kind}.log"
        args = ["--config", f"configs/fmnist_cpu_{m}.yaml", "--synset", kind, "--budget-ipc", f"{a.budget_ipc:g}",
                "--quiet"]  # fmt: skip
        if kind == "haba":
            args += ["--basis-size", str(a.basis_size)]
        if m in iters:
            args += ["--iterations", iters[m]]
        if m == "mtt":
            args += ["--set", f"method.expert_dir={a.experts}"]
        for s in a.set:
            target, kv = s.split(":", 1)
            if target in (m, f"{m}_{kind}"):
                args += ["--set", kv]
        status = run / "status.json"
        if status.exists() and json.loads(status.read_text())["state"] == "finished":
            print(f"{run} already finished; reusing it", flush=True)
        else:
            resume = ["--resume"] if (run / "config.json").exists() else []
            sh(py + ["distill", "--run-dir", str(run)] + args + resume, log, env)
        if not (run / "evaluation.json").exists():
            base = ["--baseline", "random"] if cell == cells[0] else []
            sh(
                py + ["evaluate", "--run", str(run), "--seeds", str(a.seeds), "--epochs", str(a.epochs)] + base,
                log,
                env,
            )

    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        for f in [pool.submit(run_cell, c) for c in cells]:
            f.result()

    rows, baseline = [], None
    for m, kind in cells:
        run = out / f"{m}_{kind}"
        ev = json.loads((run / "evaluation.json").read_text())
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        spi = statistics.median(r["time_s"] for r in metrics) if metrics else None
        rss = max((r.get("peak_rss_mb", 0) for r in metrics), default=None)
        rows.append({"cell": f"{m}_{kind}", "result": ev["synset"], "sec_per_iter": spi, "peak_rss_mb": rss,
                     "iterations": len(metrics), "syn_lr": ev["synset"]["protocol"]["lr"]})  # fmt: skip
        baseline = ev.get("random_real", baseline)
    base_acc = baseline["nets"]["convnet"]["mean"] if baseline else None
    lines = [
        f"Fashion-MNIST, storage budget IPC {a.budget_ipc:g}, ConvNet, {a.seeds} evaluation networks x {a.epochs} "
        f"epochs, final accuracy; {a.jobs} cells at once, {a.threads} torch thread(s) each",
        "",
        "| cell | accuracy % (mean +- std) | > random real | stored floats | IPC-equiv | images/class | iterations "
        "| s/iter (median) | peak RSS MB | eval lr | eval protocol |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc, st = r["result"]["nets"]["convnet"], r["result"]["storage"]
        proto = "standardized" if r["result"]["protocol"]["standardize"] else "plain"
        beats = "" if base_acc is None else ("yes" if acc["mean"] > base_acc else "no")
        lines.append(
            f"| {r['cell']} | {100 * acc['mean']:.2f} +- {100 * acc['std']:.2f} | {beats} | {st['floats_total']:,} | "
            f"{st['ipc_equivalent']:.3f} | {st['images_per_class']} | {r['iterations']} | {r['sec_per_iter']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['syn_lr']:.4g} | {proto} |"
        )
    if baseline:
        acc, st = baseline["nets"]["convnet"], baseline["storage"]
        lines.append(
            f"| random real | {100 * acc['mean']:.2f} +- {100 * acc['std']:.2f} | | {st['floats_total']:,} | "
            f"{st['ipc_equivalent']:.3f} | {st['images_per_class']} | | | | 0.01 | plain |"
        )
    lines += ["", f"total wall time {time.time() - t0:.0f} s; load average at the end {os.getloadavg()[0]:.1f}",
              "", "command: " + " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv])]  # fmt: skip
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps({"rows": rows, "random_real": baseline, "args": vars(a)}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
