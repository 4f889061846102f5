"""Does the fast evaluation keep accuracy? Each distilled set is evaluated under float32 eager (the reference),
float32 compiled and bfloat16 compiled, over the same network seeds; a fast variant passes when its mean is
within one standard deviation of the float32 eager mean (issue #14).

    .venv/bin/python -m bench.precision_check --runs bench/results/synsets/runs --sets ipc1_dm_pixels,...

``--runs`` holds run folders (``<set>/run/synset.safetensors`` and ``config.json``, as ``bench.run`` leaves
them). Evaluation follows each run's config except ``eval.nets=convnet``, ``--seeds`` networks and ``--epochs``
epochs, with seeds ``seed + 1000 * iterations + k`` (those ``bench.run`` evaluated with). The check decides on
the validation split (``--split val``, the default): ``--val-per-class`` training images per class carved out
(the sets were distilled with them in the training set, which does not matter for comparing two evaluation
precisions on one set), so the test split stays untouched; ``--split test`` measures the test split and records
each evaluation in ``bench/results/test_ledger.jsonl``. Each (set, variant)
is evaluated in its own folder under ``--out`` with ``--workers`` processes (one thread each), so a stopped
check resumes where it stopped. Writes ``<out>.json`` and ``<out>.md``, adding to what an earlier invocation
with the same ``--out`` wrote (so cheap variants can cover more sets than expensive ones).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from bench.provenance import provenance, write_report
from bench.run import STUDIES_LEDGER
from haba_core import io
from haba_core import runfolder as RF
from haba_core.config import RunConfig, resolve_config
from haba_core.evaluate import evaluate_run
from haba_core.executors import make_executor
from haba_core.ledger import LedgerEntry

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "fp32 eager": ["eval.precision=fp32", "eval.compile=false"],
    "fp32 compiled": ["eval.precision=fp32", "eval.compile=true"],
    "bf16 compiled": ["eval.precision=bf16", "eval.compile=true"],
}
REFERENCES = ("fp32 eager", "fp32 compiled")  # the float32 result a set is checked against, first one present


def check(results: dict) -> list[dict]:
    """Per set and fast variant: the gap to the float32 mean and whether it is within one std of it."""
    rows = []
    for name, per in results.items():
        ref_name = next((v for v in REFERENCES if v in per), None)
        ref = per.get(ref_name)
        for variant, r in per.items():
            row = {
                "set": name,
                "variant": variant,
                "mean": r["mean"],
                "std": r["std"],
                "train_s": r["train_s"],
                "source": r.get("source", "this script"),
            }
            if ref and variant != ref_name:
                row["reference"] = ref_name
                row["gap"] = r["mean"] - ref["mean"]
                row["passes"] = abs(row["gap"]) <= ref["std"]
            rows.append(row)
    return rows


def markdown(res: dict) -> str:
    lines = [
        "### Fast evaluation vs float32 (same seeds, same protocol apart from precision)",
        "",
        f"`{res['command']}` at commit `{res['git_commit'][:12]}`, {res['finished_at']}. {res['seeds']} ConvNet "
        f"networks per row, {res['epochs']} epochs, accuracy on the {res.get('split', 'test')} split; a fast "
        "variant passes when its mean lies within one (sample) std of the float32 mean (eager where measured, else "
        "compiled: the same arithmetic).",
        "",
        "| set | variant | accuracy % | gap to float32 | within 1 std | training s/net | measured by |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        gap = f"{100 * r['gap']:+.2f}" if "gap" in r else ""
        ok = ("yes" if r["passes"] else "**no**") if "passes" in r else "(reference)"
        lines.append(
            f"| {r['set']} | {r['variant']} | {100 * r['mean']:.2f} +- {100 * r['std']:.2f} | {gap} | {ok} "
            f"| {r['train_s']:.1f} | {r['source']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.precision_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=str(ROOT / "bench" / "results" / "synsets" / "runs"))
    p.add_argument("--sets", default="ipc1_dm_pixels,ipc1_dm_haba,ipc10_dm_pixels,ipc10_dm_haba")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--split", choices=["val", "test"], default="val", help="where accuracy is measured")
    p.add_argument("--val-per-class", type=int, default=500, help="held-out training images per class (--split val)")
    p.add_argument("--out", help="default: bench/results/precision_val (--split val), bench/results/precision (test)")
    p.add_argument(
        "--from-bench",
        help="take 'fp32 compiled' from these bench cells (<dir>/<set>.json, same seeds "
        "and protocol, checked) instead of computing it again",
    )
    a = p.parse_args(argv)
    if a.from_bench and a.split != "test":
        raise SystemExit("--from-bench takes float32 results the bench measured on the test split: add --split test")
    out = Path(a.out or ROOT / "bench" / "results" / ("precision" if a.split == "test" else "precision_val"))
    work = out.parent / (out.name + "_runs")
    # results accumulate across invocations (e.g. the cheap variants on some sets, the rest on others)
    results: dict = (
        io.read_json_strict(out.with_suffix(".json"))["results"] if out.with_suffix(".json").exists() else {}
    )
    for name in a.sets.split(","):
        src = Path(a.runs) / name / "run"
        if not RF.synset_path(src).exists():
            raise SystemExit(f"{src} holds no synset.safetensors; distill it first (python -m bench.run ...)")
        cfg = RunConfig.from_dict(io.read_json_strict(src / RF.CONFIG))
        if a.split == "val":  # the evaluation networks never see these images; the test split stays untouched
            cfg = cfg.replace(data=dataclasses.replace(cfg.data, val_per_class=a.val_per_class))
        seed = cfg.seed + 1000 * cfg.iterations
        results.setdefault(name, {})
        bench_cell = Path(a.from_bench) / f"{name}.json" if a.from_bench else None
        if bench_cell is not None and bench_cell.exists():
            rec = io.read_json_strict(bench_cell)
            proto = rec["protocol"]
            if proto.get("precision", "fp32") != "fp32" or len(rec["accuracy_per_seed"]) != a.seeds:
                raise SystemExit(f"{bench_cell} is not a float32 result over {a.seeds} networks")
            results[name]["fp32 compiled"] = {
                "mean": rec["accuracy_mean"],
                "std": rec["accuracy_std"],
                "per_seed": rec["accuracy_per_seed"],
                "seeds": [seed + k for k in range(a.seeds)],
                "train_s": rec["eval_train_s_median"],
                "protocol": proto,
                "source": str(bench_cell),
            }
        for variant in a.variants.split(","):
            run = work / name / variant.replace(" ", "_")
            run.mkdir(parents=True, exist_ok=True)
            shutil.copy2(RF.synset_path(src), RF.synset_path(run))
            io.write_json(run / RF.CONFIG, cfg.to_dict())
            fast = resolve_config(overrides=VARIANTS[variant]).eval
            ecfg = dataclasses.replace(
                cfg.eval,
                nets=("convnet",),
                seeds=a.seeds,
                epochs=a.epochs,
                precision=fast.precision,
                compile=fast.compile,
                split=a.split,
            )
            executor = make_executor("local", workers=a.workers)
            look = LedgerEntry(STUDIES_LEDGER, f"precision_check/{name}/{variant}", "precision check")
            try:
                synset = RF.synset_path(run)
                ev = evaluate_run(run, cfg, ecfg, synset, executor=executor, seed=seed, log=None, ledger=look)
            finally:
                executor.close()
            r = ev["synset"]["nets"]["convnet"]
            results[name][variant] = {
                "mean": r["mean"],
                "std": r["std"],
                "per_seed": r["per_seed"],
                "seeds": r["seeds"],
                "train_s": r["train_s"],
                "protocol": ev["synset"]["protocol"],
            }
            print(
                f"{name} {variant}: {100 * r['mean']:.2f} +- {100 * r['std']:.2f} ({r['train_s']:.1f} s/net)",
                flush=True,
            )
    for name, per in results.items():  # rows of a set differ in precision only
        rest = {
            json.dumps({k: v for k, v in r["protocol"].items() if k not in ("precision", "name", "id")}, sort_keys=True)
            for r in per.values()
        }
        if len(rest) > 1:
            raise SystemExit(f"{name}: the variants were evaluated under protocols that differ beyond precision")
    res = {
        **provenance("bench.precision_check", argv),
        "seeds": a.seeds,
        "epochs": a.epochs,
        "split": a.split,
        "results": results,
        "rows": check(results),
    }
    res["all_pass"] = all(r.get("passes", True) for r in res["rows"])
    res["passing_variants"] = sorted(
        {r["variant"] for r in res["rows"] if "passes" in r}
        - {r["variant"] for r in res["rows"] if r.get("passes") is False}
    )
    write_report(out, res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
