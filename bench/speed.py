"""Our fast paths against our own reference paths in one run: the MTT+HaBa outer iteration, the DM and DSA steps
and HaBa's evaluation, each in its variants side by side. (The official codes themselves run beside ours in
``bench.peer_speed``.)

Rows (each a median over timed repetitions after warm-up, one variant after another in one process run):

- ``mtt``: one MTT+HaBa outer iteration at CIFAR10 IPC 10 settings (syn_steps 30, 100 bases, 5
  hallucinators, ConvNet-128, 3x32x32, DSA): ``bench.profile_mtt``, one child process per variant (so
  each peak RSS is that variant's own): ``reference`` (our unrolled reference path, which runs at the official
  code's speed), ``fast-noreuse`` (the fast unroll with the default allocator), ``fast`` and ``bf16``.
- ``dm``: one DM step on Fashion-MNIST IPC 10 pixels at the published settings (ConvNet-128 with the
  reference padding, instance norm, batch_real 256, DSA), real data; variants float32 eager (the default),
  float32 with the feature extractor compiled, bfloat16 compiled.
- ``dc``: one DSA step on Fashion-MNIST IPC 1 pixels (real data) at two settings: the published ones the
  reproduction profile runs (ConvNet-128 with the reference padding, batch_real 256, loops 1/1) and the CPU
  preset ``make bench`` runs (ConvNet-64, batch_real 64); float32 eager vs the real batches' pass compiled
  (``method.compile``), then also in bf16 (``method.precision``). DC's step differs only by the augmentation.
- ``eval``: HaBa's evaluation, ConvNet-128 trained 50 epochs on 100 bases x 5 hallucinators (3x32x32, random
  pairing: 100 images an epoch) and tested on 10,000 images: five networks (seeds) through
  ``evaluate_run`` with two worker processes (one thread each), as ``haba evaluate --workers 2`` runs them.
  Variants: float32 eager (before), float32 compiled, bfloat16 compiled (with the old 1,000-image test pass
  and with today's CPU test chunks). Generated ``toy`` images: the data fixes only shapes here.
- ``pad``: one evaluation training step of ConvNet-128 with the reference first layer (1x28x28, padding 3) on
  100 images, bf16 eager and compiled, with the first convolution padded by oneDNN vs explicitly
  (``haba_core.nets.convnet.WidePadConv2d``), in alternating rounds in one process.
- ``pool``: 2x2 average pooling, ATen's NCHW kernel vs one matrix product (``haba_core.nets.layers.AvgPool2x2``),
  float32 and bf16: the op alone, and whole DSA and MTT steps of the ``make bench`` cells (Fashion-MNIST IPC 10
  pixels, CPU presets), in alternating rounds in one process.

Speedups are taken against our own reference paths (float32 eager; MTT's reference unroll), measured in the same
run. They pool with ATen's kernel, as the official codes do (``AvgPool2x2.matmul`` off; ``HABA_POOL=aten`` for the
evaluation's worker processes). How any of this compares with the official codes is ``bench.peer_speed``'s
table, where both run on the same machine in one invocation.

    .venv/bin/python -m bench.speed --out bench/results/speed

writes ``speed.json`` (every measurement) and ``speed.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.provenance import provenance, timestamp, write_report
from haba_core import io
from haba_core import runfolder as RF
from haba_core.config import resolve_config
from haba_core.data import load_dataset
from haba_core.engine import Distiller
from haba_core.evaluate import evaluate_run
from haba_core.executors import make_executor
from haba_core.memory import allocator_env
from haba_core.nets.layers import POOL_ENV, AvgPool2x2
from haba_core.synsets import create_synset
from haba_core.training import TEST_CHUNK_ENV

ROOT = Path(__file__).resolve().parents[1]

REFERENCE = "fp32 eager"  # the variant that stands in for the official code: it pools with ATen's kernel
DM_VARIANTS = {
    "fp32 eager": ["method.precision=fp32", "method.compile=false"],
    "fp32 compiled": ["method.precision=fp32", "method.compile=true"],
    "bf16 compiled": ["method.precision=bf16", "method.compile=true"],
}
# the DM row's work: Fashion-MNIST IPC 10 pixels at the published settings (bench.peers.ours times the same)
DM_SETTING = [
    "data.name=fashion_mnist",
    "method.name=dm",
    "synset.kind=pixels",
    "synset.budget_ipc=10",
    "net.width=128",
    "method.batch_real=256",
    "method.lr_img=1.0",
]
DC_VARIANTS = {
    "fp32 eager": ["method.compile=false", "method.precision=fp32"],
    "fp32, real pass compiled": ["method.compile=true", "method.precision=fp32"],
    "bf16, real pass compiled": ["method.compile=true", "method.precision=bf16"],
}
DC_SETTINGS = {
    "published settings (ConvNet-128, batch_real 256)": ["net.width=128", "method.batch_real=256"],
    "CPU preset (ConvNet-64, batch_real 64)": ["net.width=64", "method.batch_real=64"],
}
EVAL_VARIANTS = {
    "fp32 eager": ["eval.precision=fp32", "eval.compile=false"],
    "fp32 compiled": ["eval.precision=fp32", "eval.compile=true"],
    "bf16 compiled, 1000-image test chunks": ["eval.precision=bf16", "eval.compile=true"],
    "bf16 compiled": ["eval.precision=bf16", "eval.compile=true"],
}
# environment of a variant's evaluation workers: the fp32 rows keep the test pass they were measured with before
# the CPU test chunk (haba_core.training.CPU_TEST_CHUNK) existed; the last row is today's default
EVAL_ENV = {
    REFERENCE: {TEST_CHUNK_ENV: "1000", POOL_ENV: "aten"},
    "fp32 compiled": {TEST_CHUNK_ENV: "1000"},
    "bf16 compiled, 1000-image test chunks": {TEST_CHUNK_ENV: "1000"},
}


def time_mtt(a) -> dict:
    """Each variant in its own child process: ``reuse_memory`` changes a process's allocator for good, and the
    peak RSS of a variant must not include the heap an earlier variant left behind."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in a.mtt_variants.split(","):
            out = Path(tmp) / f"{variant}.json"
            cmd = [
                sys.executable,
                "-m",
                "bench.profile_mtt",
                "--variants",
                variant,
                "--iterations",
                str(a.mtt_iterations),
                "--json",
                str(out),
            ]
            env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "HABA_ALLOCATOR")}
            if variant.startswith("jemalloc"):  # the others run on the system allocator
                env = allocator_env(env)
                if "LD_PRELOAD" not in env:
                    print(f"skipping {variant}: jemalloc is not installed", flush=True)
                    continue
            subprocess.run(cmd, check=True, cwd=ROOT, env=env)
            results.update(json.loads(out.read_text())["results"])
    return results


def time_steps(ds, overrides: list[str], warmup: int, iterations: int, aten_pool: bool = False) -> dict:
    """Distill ``warmup + iterations`` steps (no snapshots or checkpoints) and take the median of the timed ones;
    ``aten_pool``: with ATen's pooling kernel (``AvgPool2x2.matmul`` off), as the official code."""
    steps = ["snapshot_every=0", "checkpoint_every=0", f"iterations={warmup + iterations}"]
    d = Distiller(resolve_config(overrides=[*overrides, *steps]), dataset=ds)
    AvgPool2x2.matmul = not aten_pool
    try:
        d.run()
    finally:
        AvgPool2x2.matmul = True
    return {"median_s": statistics.median(d.step_times[warmup:]), "times_s": [round(t, 3) for t in d.step_times]}


def time_dm(a) -> dict:
    ds = load_dataset("fashion_mnist", root=str(ROOT / "data"))
    out = {}
    for name, extra in DM_VARIANTS.items():
        overrides = [*DM_SETTING, *extra]
        out[name] = time_steps(ds, overrides, a.dm_warmup, a.dm_iterations, aten_pool=name == REFERENCE)
        print(f"dm {name}: {out[name]['median_s']:.3f} s/step", flush=True)
    return out


def time_pad(a) -> dict:
    """One evaluation training step of ConvNet-128 with the reference first layer (1x28x28, padding 3) on 100
    images with DSA, one thread, under bf16 autocast: the first convolution padded by oneDNN vs explicitly
    (``WidePadConv2d.explicit_pad``), alternating rounds in one process. Generated images: they fix shapes only."""
    import torch.nn.functional as F

    from haba_core.nets import create_net
    from haba_core.nets.convnet import WidePadConv2d
    from haba_core.training import augment_batch, autocast, compiled

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # restored below: rows measured after this one keep the process's threads
    g0 = torch.Generator().manual_seed(0)
    x0, y0 = torch.randn(100, 1, 28, 28, generator=g0), torch.randint(0, 10, (100,), generator=g0)
    out = {}
    for mode in ("bf16 eager", "bf16 compiled"):
        steps = {}
        for explicit in (False, True):
            torch.manual_seed(0)
            net = create_net("convnet", 1, 10, (28, 28), width=128)
            f = compiled(net) if mode.endswith("compiled") else net
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            g = torch.Generator().manual_seed(0)

            def step(f=f, opt=opt, g=g, explicit=explicit):
                WidePadConv2d.explicit_pad = explicit
                x = augment_batch(x0, "color_crop_cutout_flip_scale_rotate", g, (28, 28))
                with autocast("bf16", "cpu"):
                    loss = F.cross_entropy(f(x), y0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            for _ in range(3):  # warm-up (and the compile)
                step()
            steps[explicit] = step
        times = {False: [], True: []}
        for _ in range(a.pad_rounds):
            for explicit, step in steps.items():
                t0 = time.perf_counter()
                for _ in range(5):
                    step()
                times[explicit].append((time.perf_counter() - t0) / 5)
        WidePadConv2d.explicit_pad = True
        for explicit, ts in times.items():
            name = f"{mode}, {'explicit pad (default)' if explicit else 'padding=3 in the convolution'}"
            out[name] = {"median_s": statistics.median(ts), "rounds_s": [round(t, 4) for t in ts]}
            print(f"pad {name}: {out[name]['median_s'] * 1000:.1f} ms/step", flush=True)
    torch.set_num_threads(threads)
    return out


POOL_STEPS = {  # the make-bench cells the pooling change speeds most: CPU presets, Fashion-MNIST IPC 10 pixels
    "DSA step, CPU preset, IPC 10 pixels": ["configs/fmnist_cpu_dsa.yaml", "method.compile=true"],
    "MTT step, CPU preset, IPC 10 pixels": ["configs/fmnist_cpu_mtt.yaml"],
}


def _pool_ab(fn, rounds: int, warmup: int = 0) -> dict:
    """Median seconds of ``fn()`` with ATen's pooling and with the matrix product, in alternating rounds (the
    first ``warmup`` rounds untimed)."""
    times: dict[str, list[float]] = {"aten": [], "matmul": []}
    for i in range(warmup + rounds):
        for name in times:
            AvgPool2x2.matmul = name == "matmul"
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    AvgPool2x2.matmul = True
    return {name: statistics.median(ts) for name, ts in times.items()}


def time_pool(a) -> dict:
    """2x2 average pooling, ATen's NCHW kernel vs one matrix product (``AvgPool2x2.matmul``), one thread, in
    alternating rounds in one process: the op alone (forward + backward on 150 x 64 x 32 x 32 maps) and whole
    distillation steps of the ``make bench`` cells, float32 and bf16. MTT's experts are untrained stand-ins
    (``write_synthetic_experts``): the step's work does not depend on their values."""
    from haba_core.data import dataset_info
    from haba_core.methods.expert_set import write_synthetic_experts
    from haba_core.methods.experts import resolve_expert_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict = {"op": {}, "steps": {}}
    pool = AvgPool2x2()
    for dtype in (torch.float32, torch.bfloat16):
        x0 = torch.randn(150, 64, 32, 32).to(dtype)
        g = torch.randn(150, 64, 16, 16).to(dtype)

        def op(x0=x0, g=g):
            x = x0.detach().requires_grad_()
            pool(x).backward(g)

        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        out["op"][name] = _pool_ab(op, a.pool_op_reps, warmup=3)
        print(f"pool op {name}: {out['op'][name]}", flush=True)
    ds = load_dataset("fashion_mnist", root=str(ROOT / "data"))
    with tempfile.TemporaryDirectory() as experts:
        ecfg = resolve_expert_config(["net.width=64"], dataset="fashion_mnist", epochs=6)
        write_synthetic_experts(experts, ecfg, dataset_info("fashion_mnist"), num_experts=2)
        for work, (preset, *extra) in POOL_STEPS.items():
            for precision in ("fp32", "bf16"):
                cfg = resolve_config(
                    files=[ROOT / preset],
                    overrides=[
                        *extra,
                        "synset.kind=pixels",
                        "synset.budget_ipc=10",
                        f"method.precision={precision}",
                        f"data.root={ROOT / 'data'}",
                        "snapshot_every=0",
                        "checkpoint_every=0",
                        *([f"method.expert_dir={experts}"] if "mtt" in preset else []),
                    ],
                )
                d = Distiller(cfg, dataset=ds)
                d.iterate()  # warm-up (and the compile)
                r = _pool_ab(d.iterate, a.pool_rounds)
                out["steps"][f"{work}, {precision}"] = r
                print(f"pool {work}, {precision}: {r}", flush=True)
    torch.set_num_threads(threads)
    return out


def _eval_run(folder: Path) -> tuple[Path, object]:
    """A run folder holding a 3x32x32 HaBa set: 10 bases per class, 5 hallucinators (CIFAR10 IPC 10 shapes)."""
    options = {"channels": 3, "im_size": 32, "num_classes": 10, "n_test_per_class": 1000}
    cfg = resolve_config(overrides=["data.name=toy", *(f"data.options.{k}={v}" for k, v in options.items())])
    ds = load_dataset("toy", **options)
    g = torch.Generator().manual_seed(0)
    synset = create_synset("haba", ds.info, n_bases=10, n_hallucinators=5, generator=g)
    synset.init_from_real(ds, g)
    io.write_json(folder / RF.CONFIG, cfg.to_dict())
    synset.save(RF.synset_path(folder))
    return folder, cfg


def time_eval(a) -> dict:
    out = {}
    for name, extra in EVAL_VARIANTS.items():
        if a.eval_variants and name not in a.eval_variants.split(";"):
            continue
        reps = []
        env = EVAL_ENV.get(name, {})
        saved = {k: os.environ.get(k) for k in (TEST_CHUNK_ENV, POOL_ENV, *env)}
        os.environ.pop(TEST_CHUNK_ENV, None)
        os.environ.update(env)  # the workers start below and inherit it
        for rep in range(a.eval_repeats):
            with tempfile.TemporaryDirectory() as tmp:
                run, cfg = _eval_run(Path(tmp))
                ecfg = resolve_config(overrides=["eval.epochs=50", "eval.seeds=5", *extra]).eval
                executor = make_executor("local", workers=2)
                t0 = time.perf_counter()
                ev = evaluate_run(run, cfg, ecfg, RF.synset_path(run), executor=executor, log=None)
                wall = time.perf_counter() - t0
                executor.close()
                net = ev["synset"]["nets"]["convnet"]
                reps.append(
                    {
                        "wall_s": wall,
                        "train_s_median": net["train_s"],
                        "test_s_median": net["test_s"],
                        "acc_mean": net["mean"],
                        "protocol": ev["synset"]["protocol"]["name"],
                    }
                )
                print(
                    f"eval {name} #{rep}: 5 nets {wall:.1f} s wall, {net['train_s']:.1f} s training per net", flush=True
                )
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        out[name] = {
            "env": env,
            "wall_s": statistics.median(r["wall_s"] for r in reps),
            "train_s": statistics.median(r["train_s_median"] for r in reps),
            "test_s": statistics.median(r["test_s_median"] for r in reps),
            "repeats": reps,
        }
    return out


def time_dc(a) -> dict:
    ds = load_dataset("fashion_mnist", root=str(ROOT / "data"))
    out = {}
    for setting, extra_s in DC_SETTINGS.items():
        out[setting] = {}
        for name, extra in DC_VARIANTS.items():
            overrides = [
                "data.name=fashion_mnist",
                "method.name=dsa",
                "synset.kind=pixels",
                "synset.budget_ipc=1",
                "method.outer_loop=1",
                "method.inner_loop=1",
                "method.lr_img=0.1",
                *extra_s,
                *extra,
            ]
            out[setting][name] = time_steps(ds, overrides, a.dc_warmup, a.dc_iterations, aten_pool=name == REFERENCE)
            print(f"dsa {setting}, {name}: {out[setting][name]['median_s']:.3f} s/step", flush=True)
    return out


def markdown(res: dict) -> str:
    """The table: each fast variant against our reference path for the same work, measured side by side in this
    run."""
    m = res["machine"]
    lines = [
        "### Speed: fast paths vs reference paths, side by side",
        "",
        f"`{res['command']}` at commit `{res['git_commit'][:12]}`, {res['finished_at']}; {m['cpu']}, "
        f"{m['cores']} cores, torch {m['torch']}. Speedup = our reference path / the variant, both measured in this "
        "run. Our reference paths are the straightforward float32 eager computations; the official codes are "
        "measured beside ours by `python -m bench.peer_speed`.",
        "",
        "| work | variant | seconds | speedup over our reference path |",
        "|---|---|---|---|",
    ]
    mtt = res.get("mtt") or {}
    if "reference" in mtt:
        ref = mtt["reference"]["median_s"]
        work = "MTT+HaBa outer iteration, CIFAR10-IPC10 settings"
        for name, label in (
            ("reference", "reference unroll, fp32"),
            ("fast-noreuse", "fast unroll, fp32, default allocator"),
            ("fast", "fast unroll, fp32, glibc keeping freed memory"),
            ("bf16", "fast unroll, bf16 autocast, glibc keeping freed memory"),
            ("jemalloc", "fast unroll, fp32, jemalloc (the default where installed)"),
            ("jemalloc-bf16", "fast unroll, bf16 autocast, jemalloc"),
        ):
            if name in mtt:
                s = mtt[name]["median_s"]
                peak = mtt[name].get("peak_rss_mb")
                lines.append(f"| {work} | {label} (peak {peak / 1024:.1f} GB) | {s:.2f} | {ref / s:.2f}x |")
    dm = res.get("dm") or {}
    if dm:
        ref = dm[next(iter(dm))]["median_s"]
        for name, r in dm.items():
            lines.append(
                f"| DM step, Fashion-MNIST IPC 10 pixels, ConvNet-128, batch_real 256 | {name} "
                f"| {r['median_s']:.3f} | {ref / r['median_s']:.2f}x |"
            )
    for setting, variants in (res.get("dc") or {}).items():
        ref = variants[next(iter(variants))]["median_s"]
        for name, r in variants.items():
            lines.append(
                f"| DSA step, Fashion-MNIST IPC 1 pixels, {setting} | {name} | {r['median_s']:.3f} "
                f"| {ref / r['median_s']:.2f}x |"
            )
    pad = res.get("pad") or {}
    names = list(pad)
    for before, after in zip(names[::2], names[1::2], strict=True):
        ref = pad[before]["median_s"]
        for name in (before, after):
            s = pad[name]["median_s"]
            lines.append(
                f"| Evaluation training step, Fashion-MNIST shapes (1x28x28, first padding 3), 100 images "
                f"| {name} | {s:.3f} | {ref / s:.2f}x |"
            )
    po = res.get("pool") or {}
    for name, r in (po.get("op") or {}).items():
        lines.append(
            f"| 2x2 average pooling, forward + backward, 150 x 64 x 32 x 32, {name} | ATen NCHW kernel -> "
            f"one matrix product (default) | {r['aten']:.4f} -> {r['matmul']:.4f} | {r['aten'] / r['matmul']:.2f}x |"
        )
    for name, r in (po.get("steps") or {}).items():
        lines.append(
            f"| {name} | pooling: ATen NCHW kernel -> one matrix product (default) | {r['aten']:.3f} -> "
            f"{r['matmul']:.3f} | {r['aten'] / r['matmul']:.2f}x |"
        )
    ev = res.get("eval") or {}
    if ev:
        first = ev[next(iter(ev))]
        for key, work in (
            ("train_s", "HaBa evaluation: one network's training (50 epochs, 100 bases x 5 hallucinators)"),
            ("test_s", "HaBa evaluation: one network's test pass (10,000 images of 3x32x32)"),
            ("wall_s", "HaBa evaluation: 5 networks incl. tests, wall, 2 workers"),
        ):
            for name, r in ev.items():
                lines.append(f"| {work} | {name} | {r[key]:.1f} | {first[key] / r[key]:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="mtt,dm,dc,eval,pad,pool", help="which rows to measure (comma-separated)")
    p.add_argument("--mtt-variants", default="reference,fast-noreuse,fast,bf16,jemalloc,jemalloc-bf16")
    p.add_argument("--mtt-iterations", type=int, default=3)
    p.add_argument("--dm-iterations", type=int, default=10)
    p.add_argument("--dm-warmup", type=int, default=2)
    p.add_argument("--dc-iterations", type=int, default=4)
    p.add_argument("--dc-warmup", type=int, default=2)
    p.add_argument("--eval-repeats", type=int, default=1)
    p.add_argument("--pad-rounds", type=int, default=6, help="alternating rounds of 5 steps per variant (pad row)")
    p.add_argument("--pool-op-reps", type=int, default=15, help="timed repetitions per variant (pool row, the op)")
    p.add_argument("--pool-rounds", type=int, default=3, help="alternating rounds of one step per variant (pool row)")
    p.add_argument("--eval-variants", default="", help="';'-separated eval variants to run (default: all)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "speed"), help="writes OUT.json and OUT.md")
    a = p.parse_args(argv)
    rows = set(a.rows.split(","))
    res: dict = {
        **provenance("bench.speed", argv),  # finished_at: set again when the last row is measured
        "load_avg_start": os.getloadavg(),
    }
    if "dm" in rows:
        res["dm"] = time_dm(a)
    if "dc" in rows:
        res["dc"] = time_dc(a)
    if "eval" in rows:
        res["eval"] = time_eval(a)
    if "pad" in rows:
        res["pad"] = time_pad(a)
    if "pool" in rows:
        res["pool"] = time_pool(a)
    if "mtt" in rows:
        res["mtt"] = time_mtt(a)
    res["finished_at"] = timestamp()
    res["load_avg_end"] = os.getloadavg()
    res["python"] = platform.python_version()
    write_report(Path(a.out), res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
