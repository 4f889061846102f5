"""Time and profile one MTT+HaBa outer iteration at CIFAR10 IPC 10 settings (issue #14), variants side by side.

Settings: syn_steps 30, batch_syn 100, ConvNet width 128 depth 3, 3x32x32 inputs, DSA, 10 bases per class,
5 hallucinators, HaBa's contrastive constraint on: the whole engine step, as a run would do it. Data: the
generated ``toy`` set at 3x32x32 with 10 classes (MTT never reads real images while distilling, so the data
only fixes shapes and the bases' initialisation). Experts: *synthetic* trajectories (a real ConvNet
initialisation followed by random steps, ``write_synthetic_experts``): random but consistent parameters,
fine for timing, meaningless for accuracy.

Variants (``--variants``, always run in this order, since ``reuse_memory`` changes the process's allocator
for good): ``reference`` (the straightforward unroll, float32, default allocator: the "before"),
``fast-noreuse`` (the fast unroll alone), ``fast-nchw`` (fast + allocator reuse, NCHW), ``fast`` (fast +
allocator reuse + channels-last: the "after", the target is <= 15 s median on 2 cores), ``bf16`` (fast + bf16
autocast, reported separately). ``reference`` pools with ATen's kernel (``AvgPool2x2.matmul`` off), as the
official code does; the others with the default matrix product. For each: median wall seconds and process CPU
seconds per outer iteration over ``--iterations`` after ``--warmup``, the load average (the machine is shared:
wall times are only comparable at equal load), peak RSS per iteration, and with ``--profile`` the share of CPU
time in convolution ops (torch.profiler, one more iteration) and the top ops.

    .venv/bin/python -m bench.profile_mtt --variants reference,fast,bf16 --profile --json runs/profile_mtt.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.provenance import provenance
from haba_core.config import DataConfig, resolve_config
from haba_core.data import load_dataset
from haba_core.engine import Callback, Distiller
from haba_core.memory import active_allocator
from haba_core.methods.expert_set import write_synthetic_experts
from haba_core.methods.experts import ExpertConfig
from haba_core.nets.layers import AvgPool2x2

VARIANTS = {  # run in this order: reuse_memory changes the process's allocator for good
    "reference": ["method.unroll=reference", "method.precision=fp32", "method.reuse_memory=false"],
    "fast-noreuse": ["method.unroll=fast", "method.precision=fp32", "method.reuse_memory=false"],
    "fast-nchw": [
        "method.unroll=fast",
        "method.precision=fp32",
        "method.reuse_memory=true",
        "method.channels_last=false",
    ],
    "fast": ["method.unroll=fast", "method.precision=fp32", "method.reuse_memory=true"],
    "bf16": ["method.unroll=fast", "method.precision=bf16", "method.reuse_memory=true"],
    # the fast unroll in a process under jemalloc keeping freed memory (bench.speed starts it so): what
    # `haba distill` and the bench's cells run where jemalloc is installed
    "jemalloc": ["method.unroll=fast", "method.precision=fp32", "method.reuse_memory=true"],
    "jemalloc-bf16": ["method.unroll=fast", "method.precision=bf16", "method.reuse_memory=true"],
    # no method setting: what `haba distill` gives a user (bench.peer_speed's row against the official code)
    "default": [],
}
DATA_OPTIONS = {"channels": 3, "im_size": 32, "num_classes": 10}


def cifar_setting(
    expert_dir: str | Path,
    *,
    kind: str = "haba",
    ipc: int = 10,
    hallucinators: int = 5,
    width: int = 128,
    syn_steps: int = 30,
    batch_syn: int | None = 100,
) -> tuple[object, list[str]]:
    """The ``toy`` dataset at CIFAR10 shapes and the run's overrides at CIFAR10 IPC 10 MTT settings (HaBa's
    official ``run_cifar10_ipc10_style5.sh``, less ZCA), with synthetic expert trajectories written into
    ``expert_dir``. ``kind="pixels"``: ``ipc`` images per class (mtt-distillation's setting), no hallucinators."""
    ds = load_dataset("toy", **DATA_OPTIONS)
    ecfg = ExpertConfig(
        data=DataConfig(name="toy", options=DATA_OPTIONS),
        epochs=22,
        net={"name": "convnet", "params": {"width": width}},
    )
    write_synthetic_experts(expert_dir, ecfg, ds.info, num_experts=2)
    synset = (
        ["synset.kind=haba", f"synset.n_bases={ipc}", f"synset.n_hallucinators={hallucinators}"]
        if kind == "haba"
        else [f"synset.kind={kind}", f"synset.n_bases={ipc}"]
    )
    return ds, [
        "data.name=toy",
        *(f"data.options.{k}={v}" for k, v in DATA_OPTIONS.items()),
        f"net.width={width}",
        "synset.budget_ipc=null",
        *synset,
        "method.name=mtt",
        f"method.expert_dir={expert_dir}",
        f"method.syn_steps={syn_steps}",
        f"method.batch_syn={'null' if batch_syn is None else batch_syn}",
        "method.expert_epochs=2",
        "method.max_start_epoch=20",
        "method.lr_img=100",
        "method.lr_lr=1e-5",
        "method.lr_teacher=0.001",
        "snapshot_every=0",
        "checkpoint_every=0",
        "seed=0",
    ]


class Collect(Callback):
    """Keeps each step's logs plus its process CPU time (all threads) and the machine's load average."""

    def __init__(self) -> None:
        self.logs: list[dict] = []
        self.cpu = time.process_time()

    def on_start(self, d) -> None:
        self.cpu = time.process_time()

    def on_step(self, d, step, logs) -> None:
        now = time.process_time()
        self.logs.append({**logs, "cpu_s": now - self.cpu, "load1": os.getloadavg()[0]})
        self.cpu = now


def conv_share(prof) -> tuple[float, list[tuple[str, float]]]:
    """Fraction of self CPU time spent in convolution kernels, and the top ops by self time (ms)."""
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key.lower())
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    return conv / max(total, 1), [(e.key, e.self_cpu_time_total / 1000) for e in top]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile_mtt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--variants", default="reference,fast,bf16")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--syn-steps", type=int, default=30)
    p.add_argument("--batch-syn", type=int, default=100)
    p.add_argument("--ipc", type=int, default=10, help="bases per class")
    p.add_argument("--hallucinators", type=int, default=5)
    p.add_argument("--kind", default="haba", choices=["haba", "pixels"], help="pixels: mtt-distillation's setting")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--profile", action="store_true", help="torch.profiler on one more iteration per variant")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        ds, setting = cifar_setting(
            tmp,
            kind=a.kind,
            ipc=a.ipc,
            hallucinators=a.hallucinators,
            width=a.width,
            syn_steps=a.syn_steps,
            batch_syn=a.batch_syn,
        )
        names = sorted(a.variants.split(","), key=list(VARIANTS).index)
        for name in names:
            if name != "default" and name.startswith("jemalloc") != (active_allocator() == "jemalloc"):
                raise SystemExit(
                    f"variant {name} needs a process {'under' if 'jemalloc' in name else 'without'} "
                    "jemalloc (bench.speed starts each variant so)"
                )
            overrides = [*setting, f"iterations={a.warmup + a.iterations}", *VARIANTS[name]]
            # the reference stands in for the official code: ATen's pooling kernel, not our matrix product
            AvgPool2x2.matmul = name != "reference"
            cfg = resolve_config(overrides=overrides)
            col = Collect()
            t0 = time.perf_counter()
            d = Distiller(cfg, [col], dataset=ds)
            d.run()
            timed = d.step_times[a.warmup :]
            r = {
                "median_s": statistics.median(timed),
                "times_s": [round(t, 3) for t in d.step_times],
                "cpu_s_median": statistics.median(g["cpu_s"] for g in col.logs[a.warmup :]),
                "load1": [round(g["load1"], 2) for g in col.logs],
                "peak_rss_mb": max(g.get("peak_rss_mb", 0) for g in col.logs[a.warmup :]),
                "loss": [round(g["loss"], 5) for g in col.logs],
                "wall_s": time.perf_counter() - t0,
            }
            if a.profile:
                from torch.profiler import ProfilerActivity, profile

                d.cfg = d.cfg.replace(iterations=d.step + 1)
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    d.run()
                share, top = conv_share(prof)
                r["profiled_s"] = d.step_times[-1]
                r["conv_share"] = share
                r["top_ops_ms"] = top
            results[name] = r
            print(
                f"{name:10s} median {r['median_s']:.2f} s/iter (CPU {r['cpu_s_median']:.2f} s, load {r['load1']})  "
                f"peak RSS {r['peak_rss_mb']:.0f} MB  "
                f"times {r['times_s']}" + (f"  conv share {100 * r['conv_share']:.1f}%" if a.profile else ""),
                flush=True,
            )
            if a.profile:
                for k, ms in r["top_ops_ms"]:
                    print(f"    {ms:10.1f} ms  {k}")
            del d
    print("\nvariant        s/iter (median)  CPU s/iter  peak RSS MB  conv share")
    for name, r in results.items():
        share = f"{100 * r['conv_share']:.1f}%" if "conv_share" in r else "-"
        print(f"{name:13s}  {r['median_s']:15.2f}  {r['cpu_s_median']:10.2f}  {r['peak_rss_mb']:11.0f}  {share:>10s}")
    meta = {
        **provenance("bench.profile_mtt", argv),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "args": vars(a),
        "load_avg_at_end": os.getloadavg(),
        "settings": "CIFAR10 IPC10 MTT+HaBa: syn_steps 30, batch_syn 100, ConvNet-128, 3x32x32, DSA, 5 hallucinators",
        "experts": "synthetic trajectories (random but consistent), timing only",
    }
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
