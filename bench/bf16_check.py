"""Does emulated bf16 (``haba_core.bf16``, on a CPU without AVX512-BF16 or AMX) give the studies' numbers?

Two measurements, written to ``bench/results/bf16_emulation.{json,md}``:

- **Speed**: one training step of the evaluation ConvNet-128 (forward, cross-entropy, backward) on Fashion-MNIST-
  shaped images, one thread, in float32, in bf16 through ATen's own kernels and in bf16 through the emulation,
  the three alternated in rounds; medians and their ratios to float32.
- **Accuracy**: study cells rerun on this machine (``--rerun study/cell`` runs the cell into
  ``bench/results/bf16_emulation/``, the same command as the study's, with its test look in that folder's ledger)
  beside the committed record of the same cell, seed and config, which ran on native bf16; for scale, the std
  across the arm's distillation seeds from the study's report.

    .venv/bin/python -m bench.bf16_check --rerun frontier/ipc10_haba__s0   # a cell (about 40 min on 2 cores)
    .venv/bin/python -m bench.bf16_check                                   # speed, and the table of reruns
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.provenance import provenance, write_report
from bench.study_design import FINDINGS, RESULTS

RERUNS = RESULTS / "bf16_emulation"


def step_times(rounds: int = 3, batch: int = 64) -> dict[str, list[float]]:
    """Seconds per training step in each arithmetic, ``rounds`` alternated rounds of one step each (after one
    warm-up step per arithmetic), one thread."""
    from haba_core import bf16
    from haba_core.nets import create_net

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = create_net("convnet", 1, 10, (28, 28))
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    bf16.uninstall()  # the "aten" rows must see ATen's kernels

    def step(kind: str) -> float:
        net.zero_grad()
        t = time.perf_counter()
        with bf16.EmulatedBf16() if kind == "emulated" else torch.autocast("cpu", enabled=False):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind != "fp32"):
                loss = F.cross_entropy(net(x), y)
            loss.backward()
        return time.perf_counter() - t

    kinds = ("fp32", "aten", "emulated")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for k in kinds:
        step(k)
    for _ in range(rounds):
        for k in kinds:
            times[k].append(step(k))
    return times


def rerun(spec: str) -> None:
    """The study's own command for one cell, into :data:`RERUNS` (its exit status, whether the study is complete,
    does not matter here)."""
    from bench import studies

    study, cell = spec.split("/")
    studies.main([study, "--jobs", "2", "--only", cell, "--out", str(RERUNS)])


def accuracy_rows() -> list[dict]:
    rows = []
    for path in sorted(RERUNS.glob("*/cells/*.json")):
        study, emulated = path.parent.parent.name, json.loads(path.read_text())
        native_path = FINDINGS / study / "cells" / path.name
        if not native_path.exists():
            continue
        native = json.loads(native_path.read_text())
        arm = emulated["cell"]["name"].split("__")[0]
        report = json.loads((FINDINGS / f"{study}.json").read_text())
        per_net = next(a for a in report["arms"] if a["arm"] == arm)["per_net"]
        nets = {}
        for net, e in emulated["accuracy_by_net"].items():
            n = native["accuracy_by_net"][net]
            nets[net] = {
                "native": n["mean"],
                "emulated": e["mean"],
                "native_per_seed": n["per_seed"],
                "emulated_per_seed": e["per_seed"],
                "std_seeds_of_arm": per_net[net]["std_seeds"] / 100 if net in per_net else None,  # report: percent
            }
        rows.append(
            {
                "cell": f"{study}/{emulated['cell']['name']}",
                "same_config": emulated["cell"]["overrides"] == native["cell"]["overrides"],
                "protocols": [native["protocol"]["id"], emulated["protocol"]["id"]],
                "bf16": [(native.get("machine") or {}).get("bf16", "native"), emulated["machine"]["bf16"]],
                "nets": nets,
                "emulated_wall_s": emulated["wall_s"],
            }
        )
    return rows


def markdown(r: dict) -> str:
    t = r["speed"]
    med = {k: statistics.median(v) for k, v in t.items()}
    lines = [
        "# bf16 where the CPU lacks it: the emulation against native bf16",
        "",
        f"Command: `{r['command']}`; commit `{r['git_commit'][:12]}`; {r['machine']['cpu']}, bf16 "
        f"{r['machine']['bf16']} here, torch {r['machine']['torch']}.",
        "",
        f"**Speed.** One eager training step of ConvNet-128 on {r['batch']} images of 1x28x28, one thread, median "
        f"of {len(t['fp32'])} alternated rounds (load average {r.get('load_before', 0):.1f} before): float32 "
        f"{med['fp32']:.3f} s; bf16 in ATen's kernels "
        f"{med['aten'] / med['fp32']:.2f}x float32's time; bf16 emulated {med['emulated'] / med['fp32']:.2f}x.",
        "",
        "**Accuracy.** A committed study cell (native bf16) rerun here with the same seed and config (emulated bf16); "
        "accuracy % of each network's set mean; the last column is the std across the arm's distillation seeds, "
        "the scale a difference is read against.",
        "",
        "| cell | network | native | emulated | emulated - native | std across seeds |",
        "|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        comparable = row["same_config"] and len(set(row["protocols"])) == 1
        flag = "" if comparable else " **(another config or protocol: not comparable)**"
        for net, v in row["nets"].items():
            std = v["std_seeds_of_arm"]
            lines.append(
                f"| `{row['cell']}`{flag} | {net} | {100 * v['native']:.2f} | {100 * v['emulated']:.2f} "
                f"| {100 * (v['emulated'] - v['native']):+.2f} | {'-' if std is None else f'{100 * std:.2f}'} |"
            )
    if not r["rows"]:
        lines.append("| (no rerun yet: `--rerun study/cell`) | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bf16_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--rerun", action="append", default=[], help="rerun a study cell here first: study/cell")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", default=str(RESULTS / "bf16_emulation"))
    a = p.parse_args(argv)
    for spec in a.rerun:
        rerun(spec)
    result = {
        **provenance("bench.bf16_check", argv),
        "batch": a.batch,
        "load_before": os.getloadavg()[0],  # other processes on the machine (the ratios are side by side)
        "speed": step_times(a.rounds, a.batch),
        "rows": accuracy_rows(),
    }
    write_report(Path(a.out), result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
