"""Our steps against the official codes', measured side by side in one run on this machine, and each against the
machine's attainable peak.

Each row is one piece of work done by an official code (a *peer*, run from a checkout the user fetched: see
``bench.peers``) and by ours, on the same shapes and the same number of torch threads, one process after the other
(each in a fresh process) within one invocation:

- ``dm``: one DM outer iteration, Fashion-MNIST IPC 10 pixels, ConvNet-128 (first convolution padded by 3, as the
  reference pads 1x28x28), batch_real 256, DSA: DatasetCondensation's ``main_DM.py`` against ``haba distill``.
- ``dc``, ``dsa``: one DC / DSA outer iteration, Fashion-MNIST IPC 1 pixels, ConvNet-128, batch_real 256, loops
  1/1 (the reference's ``get_loops(1)``): DatasetCondensation's ``main.py``.
- ``mtt_pixels``: one MTT outer iteration, CIFAR10 shapes (generated data), IPC 10, syn_steps 30, expert_epochs 2,
  ConvNet-128, DSA: mtt-distillation's ``distill.py``.
- ``mtt_haba``: one MTT+HaBa outer iteration at the official CIFAR10 IPC 10 settings (10 bases per class, 5
  hallucinators, syn_steps 30, the contrastive constraint on): the official HaBa ``distill_fac.py``.
- ``eval_1``, ``eval_5``: the evaluation of that HaBa set (100 bases x 5 hallucinators at 3x32x32), ConvNet-128
  trained and tested on 10,000 images: one network, and five. The official ``--epoch_eval_train 50`` trains 51
  epochs (its loop is ``range(Epoch + 1)``), so ours train 51 (``EVAL_EPOCHS``).

Ours run twice a row: as a user gets it (``default``: no setting changed, so on a CPU with native bf16 the steps run
in bf16; ``haba distill`` and the bench start distillation under jemalloc, so ours do here too) and in float32
(``fp32``), which is what the peers compute. The five-network evaluation adds ``haba evaluate --workers 2`` (two
processes, one thread each: the same two cores); the DM and one-network evaluation rows add float32 under glibc's
malloc, with and without keeping freed memory (``our_variants``).

**Utilization.** Each row's FLOPs are counted by torch's FLOP counter on one eager iteration (matrix products and
convolutions: the peers' in their own process, ours on the float32 eager graph with ATen's pooling, the same
arithmetic). Achieved FLOP/s = FLOPs / median seconds. The attainable peak is measured in the same run, at the same
thread count (``bench.peak``): a 4096 x 4096 matrix product, a ConvNet-128 middle convolution (256 x 128 x 16 x 16,
3x3, channels-last) and the forward and gradient convolutions of each ConvNet-128 layer at batch 100 (where MTT's
unroll spends its time), in float32 and bf16; a row's share of peak is taken against the fastest of these kernels in
its precision. ``--report`` rewrites the table from the JSON.

    python -m bench.peer_speed --dc ../peers/DatasetCondensation --haba ../peers/DatasetFactorization \\
        --mtt ../peers/mtt-distillation --threads 2 --out bench/results/peers

writes ``OUT.json`` (every measurement, with each peer's commit and the runtime help it needed) and ``OUT.md``.
Run it on an otherwise idle machine: both sides of a row share the machine with nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.peak import attainable, attainable_peak, conv_kernel_rates
from bench.peers.ours import OUR_VARIANTS, run_ours
from bench.provenance import provenance, timestamp, write_report
from haba_core.memory import ALLOCATOR_ENV, allocator_env

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    work: str
    peer: str  # the checkout flag: dc | haba | mtt
    module: str  # bench.peers.<module>
    target: dict  # our variant -> the speedup over the peer the issue asks for


ROWS = {
    "dm": Row("DM step, Fashion-MNIST IPC 10 pixels, ConvNet-128, batch_real 256", "dc", "dc_code", {"default": 3.0}),
    "dc": Row("DC step, Fashion-MNIST IPC 1 pixels, ConvNet-128, batch_real 256, loops 1/1", "dc", "dc_code", {}),
    "dsa": Row("DSA step, Fashion-MNIST IPC 1 pixels, ConvNet-128, batch_real 256, loops 1/1", "dc", "dc_code", {}),
    "mtt_pixels": Row("MTT step, CIFAR10 shapes, IPC 10, syn_steps 30, ConvNet-128", "mtt", "mtt_code", {}),
    "mtt_haba": Row(
        "MTT+HaBa step, CIFAR10 shapes, 10 bases/class x 5 hallucinators, syn_steps 30, ConvNet-128",
        "haba",
        "haba_code",
        {"fp32": 2.5, "default": 3.5},
    ),
    "eval_1": Row("HaBa evaluation, one ConvNet-128, 51 epochs + test on 10,000", "haba", "haba_code", {}),
    "eval_5": Row(
        "HaBa evaluation, five ConvNet-128, 51 epochs + test on 10,000 each",
        "haba",
        "haba_code",
        {"default": 3.0, "2 workers": 3.0},
    ),
}
CHECKOUT_SCRIPTS = {"dc": "main_DM.py", "haba": "distill_fac.py", "mtt": "distill.py"}  # one a checkout must hold
REPOSITORIES = {
    "dc": "https://github.com/VICO-UoE/DatasetCondensation",
    "haba": "https://github.com/Huage001/DatasetFactorization",
    "mtt": "https://github.com/GeorgeCazenavette/mtt-distillation",
}
PEER_NAMES = {
    "dc": "DatasetCondensation",
    "haba": "official HaBa (DatasetFactorization)",
    "mtt": "mtt-distillation",
}


def our_variants(row: str) -> dict[str, tuple[str, int, str]]:
    """label -> (variant, worker processes, allocator) of our side of ``row``. ``default`` and ``fp32`` run under
    jemalloc, as ``haba distill`` and the bench start them where it is installed; the DM and one-network evaluation
    rows add float32 under glibc, as a process that is not restarted gets it (a notebook, a script importing the
    engine): keeping freed memory (the engine's default) and with glibc's defaults (before it was)."""
    out = {"default": ("default", 1, "jemalloc"), "fp32": ("fp32", 1, "jemalloc")}
    if row in ("dm", "eval_1"):
        out["fp32, glibc keeping freed memory"] = ("fp32", 1, "glibc")
        out["fp32, glibc defaults"] = ("fp32", 1, "glibc-noreuse")
    if row == "eval_5":
        out["2 workers"] = ("default", 2, "jemalloc")
    return out


def _child(cmd: list[str], env: dict, log: Path) -> dict | None:
    """Run one side of a row; its JSON, or None (the failure's tail is printed and kept in ``log``)."""
    out = log.with_suffix(".json")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([*cmd, "--json", str(out)], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not out.exists():
        print(f"  failed ({proc.returncode}): {' '.join(cmd)}\n" + log.read_text()[-2000:], flush=True)
        return None
    result = json.loads(out.read_text())
    result["process_wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def measure(a) -> dict:
    threads = str(a.threads)
    checkouts = {"dc": a.dc, "haba": a.haba, "mtt": a.mtt}
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONPATH": str(ROOT)}
    peer_env = {k: v for k, v in env.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    rows: dict = {}
    logs = Path(a.logs)
    logs.mkdir(parents=True, exist_ok=True)
    for name in a.rows.split(","):
        row = ROWS[name]
        checkout = checkouts[row.peer]
        rows[name] = {"work": row.work, "peer_name": PEER_NAMES[row.peer], "targets": row.target, "ours": {}}
        is_eval = name.startswith("eval")
        warmup, iterations = (0, 1) if is_eval else (a.warmup, a.iterations)
        count = ["--flops"] if a.flops else []
        if checkout:
            print(f"[{name}] {PEER_NAMES[row.peer]} ...", flush=True)
            cmd = [sys.executable, "-m", f"bench.peers.{row.module}", "--row", name, "--checkout", str(checkout)]
            cmd += ["--threads", threads, "--warmup", str(warmup), "--iterations", str(iterations), *count]
            cmd += ["--workdir", str(logs / "work" / row.peer)]  # the peers' data and expert buffers, kept
            rows[name]["peer"] = _child(cmd, peer_env, logs / f"{name}_peer.log")
        else:
            print(f"[{name}] no --{row.peer} checkout given: our side only", flush=True)
        for label, (variant, workers, allocator) in our_variants(name).items():
            print(f"[{name}] ours, {label} ...", flush=True)
            cmd = [sys.executable, "-m", "bench.peer_speed", "--ours", name, "--variant", variant]
            cmd += ["--workers", str(workers), "--threads", "1" if workers > 1 else threads]
            cmd += ["--warmup", str(warmup), "--iterations", str(iterations), "--allocator", allocator]
            cmd += count if label in ("default", "fp32") else []
            child_env = allocator_env(env) if allocator == "jemalloc" else {**peer_env, ALLOCATOR_ENV: "system"}
            slug = "".join(c if c.isalnum() else "_" for c in label)
            rows[name]["ours"][label] = _child(cmd, child_env, logs / f"{name}_ours_{slug}.log")
        print(f"[{name}] {summary(rows[name])}", flush=True)
    return rows


def summary(r: dict) -> str:
    peer = (r.get("peer") or {}).get("median_s")
    parts = [f"peer {peer:.3f} s" if peer else "peer -"]
    for variant, o in r["ours"].items():
        if o:
            parts.append(f"{variant} {o['median_s']:.3f} s" + (f" ({peer / o['median_s']:.2f}x)" if peer else ""))
    return ", ".join(parts)


def utilization(flops: int | None, seconds: float | None, peak: float) -> tuple[str, str]:
    if not flops or not seconds:
        return "", ""
    achieved = flops / seconds
    return f"{achieved / 1e9:.0f}", f"{100 * achieved / peak:.0f}%"


def markdown(res: dict) -> str:
    m, peak = res["machine"], res["peak"]
    best = {p: attainable(res, p) for p in peak}
    lines = [
        "### Speed against the official codes, side by side on one machine",
        "",
        f"`{res['command']}` at commit `{res['git_commit'][:12]}`, {res['finished_at']}; {m['cpu']}, {m['cores']} "
        f"cores, torch {m['torch']}, **{res['threads']} thread(s)** for every process (the `2 workers` rows: two "
        "processes of one thread). Each side of a row ran in its own process, one after the other, in this run; "
        "seconds are medians over the timed iterations. Speedup = the peer's seconds / ours.",
        "",
        "Attainable peak, measured in this run at the same thread count (GFLOP/s): "
        + "; ".join(
            f"{p} matmul {v['matmul_flops_s'] / 1e9:.0f}, conv {v['conv_flops_s'] / 1e9:.0f}" for p, v in peak.items()
        )
        + "; the fastest kernel of the run (these two and the layer table below): "
        + ", ".join(f"{p} {v / 1e9:.0f}" for p, v in best.items())
        + ". A row's share of peak is its achieved FLOP/s over that fastest kernel of its precision.",
        "",
        "| work | code | precision | seconds | speedup vs peer | target | GFLOP | GFLOP/s | share of peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"].values():
        p = r.get("peer")
        ps = p["median_s"] if p else None
        if p:
            gf, share = utilization(p.get("flops"), ps, best["fp32"])
            flops = f"{p['flops'] / 1e9:.1f}" if p.get("flops") else ""
            lines.append(f"| {r['work']} | {r['peer_name']} | fp32 | {ps:.3f} | 1.00x | | {flops} | {gf} | {share} |")
        for variant, o in r["ours"].items():
            if not o:
                lines.append(f"| {r['work']} | ours, {variant} | | failed | | | | | |")
                continue
            prec = o.get("precision", "fp32")
            x = f"{ps / o['median_s']:.2f}x" if ps else ""
            tgt = f">= {r['targets'][variant]}x" if variant in r["targets"] else ""
            flops = o.get("flops") or (r["ours"].get("default") or {}).get("flops")
            gf, share = utilization(flops, o["median_s"], best[prec])
            fl = f"{flops / 1e9:.1f}" if flops else ""
            cells = [r["work"], f"ours, {variant}", prec, f"{o['median_s']:.3f}", x, tgt, fl, gf, share]
            lines.append("| " + " | ".join(cells) + " |")
    kernels = res.get("conv_kernels") or {}
    if kernels:
        lines += [
            "",
            "What the convolutions of a training step reach at each ConvNet-128 layer (batch 100, 3x32x32 images, "
            "channels-last; GFLOP/s, in this run at the same thread count):",
            "",
            "| precision, layer | forward | input gradient | weight gradient |",
            "|---|---|---|---|",
        ]
        for layer, r in kernels.items():
            cells = [f"{r[k] / 1e9:.0f}" for k in ("forward", "input_grad", "weight_grad")]
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines += ["", "Runtime help each peer needed to run here (none of it changes the timed arithmetic):", ""]
    seen = set()
    for r in res["rows"].values():
        p = r.get("peer")
        if p and (r["peer_name"], p["row"]) not in seen:
            seen.add((r["peer_name"], p["row"]))
            lines.append(f"- {r['peer_name']} `{p['script']}` (`{p['commit'][:12]}`), row `{p['row']}`:")
            lines += [f"  - {h}" for h in p["runtime_help"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peer_speed", description=__doc__.split("\n\n")[0])
    for flag, what in (("dc", "DatasetCondensation"), ("haba", "official HaBa"), ("mtt", "mtt-distillation")):
        p.add_argument(f"--{flag}", help=f"{what} checkout (a clone of {REPOSITORIES[flag]})")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of every process")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip the FLOP counts")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "peers"), help="writes OUT.json and OUT.md")
    p.add_argument("--logs", default=str(ROOT / "runs" / "peer_speed"), help="each process's output")
    # internal: our side of one row, in this process
    p.add_argument("--ours", choices=list(ROWS), help=argparse.SUPPRESS)
    p.add_argument("--variant", default="default", choices=list(OUR_VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--flops", dest="count_flops", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--allocator", default="jemalloc", choices=["jemalloc", "glibc", "glibc-noreuse"], help=argparse.SUPPRESS
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--report", action="store_true", help="only rewrite OUT.md from OUT.json")
    a = p.parse_args(argv)
    if a.ours:
        return run_ours(a)
    if a.report:
        res = json.loads(Path(a.out).with_suffix(".json").read_text())
        Path(a.out).with_suffix(".md").write_text(markdown(res))
        return 0
    unknown = set(a.rows.split(",")) - set(ROWS)
    if unknown:
        raise SystemExit(f"--rows: unknown {sorted(unknown)}; choose from {', '.join(ROWS)}")
    for flag, script in CHECKOUT_SCRIPTS.items():
        folder = getattr(a, flag)
        if folder and not (Path(folder) / script).is_file():
            raise SystemExit(
                f"--{flag} {folder}: no {script} there; clone {REPOSITORIES[flag]} into it (or leave --{flag} out to "
                "time our side of its rows alone)"
            )
    res: dict = {**provenance("bench.peer_speed", argv), "threads": a.threads, "load_avg_start": os.getloadavg()}
    torch.set_num_threads(a.threads)
    res["peak"] = attainable_peak()
    print("peak GFLOP/s:", {k: round(v["peak_flops_s"] / 1e9) for k, v in res["peak"].items()}, flush=True)
    res["conv_kernels"] = conv_kernel_rates()
    res["rows"] = measure(a)
    res["peak_after"] = attainable_peak()  # the machine did not change under the run
    res["finished_at"] = timestamp()
    res["load_avg_end"] = os.getloadavg()
    write_report(Path(a.out), res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
