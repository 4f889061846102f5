"""`make demo`: DM+HaBa vs pixel DM vs a random real subset on Fashion-MNIST at one storage budget.

Every step runs through the CLI (the commands are printed), so the demo doubles as a usage example.
Results: runs/demo/<cell>/evaluation.json and a table in runs/demo/summary.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def sh(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--budget-ipc", type=float, default=1)
    p.add_argument("--basis-size", type=int, default=14, help="HaBa basis resolution (28 does not fit IPC 1)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--fresh", action="store_true", help="delete earlier demo runs first")
    a = p.parse_args()
    out = Path(a.out)
    if a.fresh and out.exists():
        shutil.rmtree(out)
    py = [sys.executable, "-m", "haba_core"]
    cells = {
        "dm_haba": ["--synset", "haba", "--basis-size", str(a.basis_size)],
        "dm_pixels": ["--synset", "pixels"],
    }
    t0 = time.time()
    for name, extra in cells.items():
        run = out / name
        common = ["--config", "configs/fmnist_cpu_dm.yaml", "--budget-ipc", str(a.budget_ipc), "--quiet"]
        if (run / "status.json").exists() and json.loads((run / "status.json").read_text())["state"] == "finished":
            print(f"{run} already finished; reusing it")
        else:
            resume = ["--resume"] if (run / "config.json").exists() else []
            sh(py + ["distill", "--run-dir", str(run), "--iterations", str(a.iterations)] + common + extra + resume)
        baseline = ["--baseline", "random"] if name == "dm_pixels" else []
        sh(py + ["evaluate", "--run", str(run), "--seeds", str(a.seeds), "--epochs", str(a.epochs)] + baseline)
    rows = []
    for name in cells:
        run = out / name
        ev = json.loads((run / "evaluation.json").read_text())
        status = json.loads((run / "status.json").read_text())
        rows.append((name, ev["synset"], status.get("sec_per_iter")))
        if "random_real" in ev:
            rows.append(("random_real", ev["random_real"], None))
    lines = [
        f"Fashion-MNIST, storage budget IPC {a.budget_ipc:g}, ConvNet, {a.seeds} networks, {a.epochs} epochs",
        "",
        "| cell | accuracy % (mean +- std) | stored floats | IPC-equiv | images/class | s/iter | eval protocol |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r, spi in rows:
        acc = r["nets"]["convnet"]
        st = r["storage"]
        proto = "standardized" if r["protocol"]["standardize"] else "plain"
        lines.append(
            f"| {name} | {100 * acc['mean']:.2f} +- {100 * acc['std']:.2f} | {st['floats_total']:,} | "
            f"{st['ipc_equivalent']:.3f} | {st['images_per_class']} | {'' if spi is None else f'{spi:.3f}'} | {proto} |"
        )
    lines.append("")
    lines.append(f"total wall time {time.time() - t0:.0f} s")
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
