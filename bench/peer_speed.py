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
thread count: a 4096 x 4096 matrix product, a ConvNet-128 middle convolution (256 x 128 x 16 x 16, 3x3,
channels-last) and the forward and gradient convolutions of each ConvNet-128 layer at batch 100 (``conv_kernel_rates``:
where MTT's unroll spends its time), in float32 and bf16; a row's share of peak is taken against the fastest of these
kernels in its precision (``attainable``). ``--report`` rewrites the table from the JSON.

    python -m bench.peer_speed --dc ../peers/DatasetCondensation --haba ../peers/DatasetFactorization \\
        --mtt ../peers/mtt-distillation --threads 2 --out bench/results/peers

writes ``OUT.json`` (every measurement, with each peer's commit and the runtime help it needed) and ``OUT.md``.
Run it on an otherwise idle machine: both sides of a row share the machine with nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

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
PEER_NAMES = {
    "dc": "DatasetCondensation",
    "haba": "official HaBa (DatasetFactorization)",
    "mtt": "mtt-distillation",
}
EVAL_EPOCHS = 51  # the official evaluation's epochs at --epoch_eval_train 50
OUR_VARIANTS = {
    "default": [],
    "fp32": ["method.precision=fp32", "eval.precision=fp32"],
}


# ---- the attainable peak -------------------------------------------------------------------------------------


def _median_time(fn, reps: int) -> float:
    fn()  # warm-up (oneDNN picks its kernel)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def attainable_peak(reps: int = 5, n: int = 4096) -> dict:
    """FLOP/s of an ``n x n`` matrix product and of a ConvNet-128 middle convolution (256 x 128 x 16 x 16, 3x3,
    padding 1, channels-last), float32 and bf16, at this process's thread count: the most this machine's kernels
    give for the work our steps are made of."""
    out: dict = {}
    g = torch.Generator().manual_seed(0)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
        mm = _median_time(lambda a=a, b=b: torch.mm(a, b), reps)
        x = torch.randn(256, 128, 16, 16, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(128, 128, 3, 3, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            conv = _median_time(lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1), reps)
        out[name] = {
            "matmul_flops_s": 2 * n**3 / mm,
            "conv_flops_s": 2 * 256 * 16 * 16 * 128 * 128 * 9 / conv,
        }
        out[name]["peak_flops_s"] = max(out[name]["matmul_flops_s"], out[name]["conv_flops_s"])
    return out


# the convolutions of a ConvNet-128 (depth 3) on 3x32x32 images: (in channels, map size); MTT's unrolled student
# trains on batch_syn = 100 images a step
CONVNET_LAYERS = ((3, 32), (128, 16), (128, 8))


def conv_kernel_rates(batch: int = 100, reps: int = 5, layers=CONVNET_LAYERS) -> dict:
    """FLOP/s of the three convolution kernels a training step runs (forward, input gradient, weight gradient) at
    each ConvNet-128 layer's shape, channels-last, float32 and bf16, at this process's thread count: what the
    convolutions of an MTT unroll can reach on this machine, layer by layer."""
    out: dict = {}
    g = torch.Generator().manual_seed(0)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for c_in, size in layers:
            cl = torch.channels_last
            x = torch.randn(batch, c_in, size, size, generator=g).to(dtype).contiguous(memory_format=cl)
            w = torch.randn(128, c_in, 3, 3, generator=g).to(dtype).contiguous(memory_format=cl)
            y = torch.randn(batch, 128, size, size, generator=g).to(dtype).contiguous(memory_format=cl)
            flops = 2 * batch * size * size * 128 * c_in * 9

            def backward(mask, x=x, w=w, y=y):
                return torch.ops.aten.convolution_backward(
                    y, x, w, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1, mask
                )

            with torch.no_grad():
                times = {
                    "forward": _median_time(lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1), reps),
                    "input_grad": _median_time(lambda: backward([True, False, False]), reps),
                    "weight_grad": _median_time(lambda: backward([False, True, False]), reps),
                }
            out[f"{name} {c_in}->128 @{size}x{size}"] = {k: flops / t for k, t in times.items()}
    return out


# ---- our side of a row (run in its own process: ``--ours ROW``) -----------------------------------------------

DM_SETTING = [
    "data.name=fashion_mnist",
    "method.name=dm",
    "synset.kind=pixels",
    "synset.budget_ipc=10",
    "net.width=128",
    "method.batch_real=256",
    "method.lr_img=1.0",
]
DC_SETTING = [
    "data.name=fashion_mnist",
    "synset.kind=pixels",
    "synset.budget_ipc=1",
    "net.width=128",
    "method.batch_real=256",
    "method.lr_img=0.1",
]


def _distill_row(row: str, variant: str, warmup: int, iterations: int, flops: bool, overrides: list[str]) -> dict:
    """Time ``warmup + iterations`` outer iterations of our distillation for ``row``; with ``flops``, count one
    more iteration's FLOPs on the float32 eager graph with ATen's pooling (the peers' arithmetic). ``overrides``
    go after the row's settings (the tests shrink a row with them)."""
    from haba_core.config import resolve_config
    from haba_core.engine import Distiller
    from haba_core.nets.layers import AvgPool2x2

    extra = [o for o in OUR_VARIANTS[variant] if o.startswith("method.")]
    with tempfile.TemporaryDirectory() as tmp:
        if row.startswith("mtt"):
            from bench.profile_mtt import cifar_setting

            ds, setting = cifar_setting(tmp, kind="haba" if row == "mtt_haba" else "pixels")
        else:
            from haba_core.data import load_dataset

            ds = load_dataset("fashion_mnist", root=str(ROOT / "data"))
            setting = DM_SETTING if row == "dm" else [*DC_SETTING, f"method.name={row}"]
        setting = [*setting, *overrides]
        steps = ["snapshot_every=0", "checkpoint_every=0", "seed=0"]
        cfg = resolve_config(overrides=[*setting, *extra, *steps, f"iterations={warmup + iterations}"])
        d = Distiller(cfg, dataset=ds)
        d.run()
        result = {
            "median_s": statistics.median(d.step_times[warmup:]),
            "steps_s": [round(t, 4) for t in d.step_times[warmup:]],
            "precision": d.method.precision,
            "settings": {"overrides": [*setting, *extra], "threads": torch.get_num_threads()},
        }
        if flops:
            from torch.utils.flop_counter import FlopCounterMode

            eager = [*setting, "method.precision=fp32", *steps, "iterations=1"]
            if not row.startswith("mtt"):  # DM, DC and DSA may compile their real pass; MTT never compiles
                eager.append("method.compile=false")
            d = Distiller(resolve_config(overrides=eager), dataset=ds)
            AvgPool2x2.matmul = False
            with FlopCounterMode(display=False) as counter:
                d.run()
            AvgPool2x2.matmul = True
            result["flops"] = int(counter.get_total_flops())
    return result


def _eval_row(row: str, variant: str, workers: int, flops: bool, overrides: list[str] = ()) -> dict:
    """Evaluate the CIFAR10-shaped HaBa set of ``bench.speed`` (100 bases x 5 hallucinators): one network
    (``eval_1``) or five (``eval_5``), ``EVAL_EPOCHS`` epochs each, tested on 10,000 images, with ``workers``
    processes."""
    from bench.speed import _eval_run
    from haba_core import runfolder as RF
    from haba_core.config import resolve_config
    from haba_core.evaluate import evaluate_run
    from haba_core.executors import make_executor

    nets = 1 if row == "eval_1" else 5
    extra = [*(o for o in OUR_VARIANTS[variant] if o.startswith("eval.")), *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        run, cfg = _eval_run(Path(tmp))
        ecfg = resolve_config(overrides=[f"eval.epochs={EVAL_EPOCHS}", f"eval.seeds={nets}", *extra]).eval
        executor = make_executor("local", workers=workers)
        t0 = time.perf_counter()
        ev = evaluate_run(run, cfg, ecfg, RF.synset_path(run), executor=executor, log=None)
        wall = time.perf_counter() - t0
        executor.close()
    net = ev["synset"]["nets"]["convnet"]
    result = {
        "median_s": wall,
        "steps_s": [round(wall, 3)],
        "precision": ev["synset"]["protocol"].get("precision", "fp32"),
        "train_s": net["train_s"],
        "test_s": net["test_s"],
        "settings": {"overrides": [f"eval.epochs={EVAL_EPOCHS}", f"eval.seeds={nets}", *extra], "workers": workers},
    }
    if flops:
        result["flops"] = _eval_flops(nets)
    return result


def _eval_flops(nets: int) -> int:
    """FLOPs of evaluating ``nets`` networks: one epoch of training and one test pass counted on the float32 eager
    graph (the difference of a 2-epoch and a 1-epoch count), the epoch multiplied by ``EVAL_EPOCHS`` (every epoch
    does the same work)."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench.speed import _eval_run
    from haba_core import runfolder as RF
    from haba_core.config import resolve_config
    from haba_core.evaluate import evaluate_run
    from haba_core.nets.layers import AvgPool2x2

    counts = {}
    for epochs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            run, cfg = _eval_run(Path(tmp))
            ecfg = resolve_config(overrides=[f"eval.epochs={epochs}", "eval.seeds=1", "eval.precision=fp32"]).eval
            AvgPool2x2.matmul = False
            with FlopCounterMode(display=False) as counter:
                evaluate_run(run, cfg, ecfg, RF.synset_path(run), log=None)
            AvgPool2x2.matmul = True
            counts[epochs] = counter.get_total_flops()
    epoch = counts[2] - counts[1]
    return int(nets * (counts[1] + (EVAL_EPOCHS - 1) * epoch))


def run_ours(a) -> int:
    torch.set_num_threads(a.threads)
    if a.allocator == "glibc-noreuse":  # the engine and the evaluation as they were: glibc's defaults
        import haba_core.engine
        import haba_core.evaluate

        haba_core.engine.reuse_freed_memory = haba_core.evaluate.reuse_freed_memory = lambda: False
    if a.ours.startswith("eval"):
        result = _eval_row(a.ours, a.variant, a.workers, a.count_flops, a.overrides)
    else:
        result = _distill_row(a.ours, a.variant, a.warmup, a.iterations, a.count_flops, a.overrides)
    result["allocator"] = a.allocator
    Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


# ---- the side-by-side run ---------------------------------------------------------------------------------------


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


def attainable(res: dict, precision: str) -> float:
    """The most FLOP/s any kernel measured in the run reached in ``precision``: the large matrix product, the large
    convolution, and each layer's forward and gradient convolutions (a smaller convolution can run faster than the
    large one)."""
    rates = [res["peak"][precision]["matmul_flops_s"], res["peak"][precision]["conv_flops_s"]]
    for layer, r in (res.get("conv_kernels") or {}).items():
        if layer.split()[0] == precision:
            rates += list(r.values())
    return max(rates)


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
    p.add_argument("--dc", help="DatasetCondensation checkout (github.com/VICO-UoE/DatasetCondensation)")
    p.add_argument("--haba", help="official HaBa checkout (github.com/Huage001/DatasetFactorization)")
    p.add_argument("--mtt", help="mtt-distillation checkout (github.com/GeorgeCazenavette/mtt-distillation)")
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
