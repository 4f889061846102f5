"""How long to distill: validation accuracy and loss against iterations, then one test of the final sets.

Each ``--arm NAME:KEY=V[,KEY=V...]`` (e.g. ``pixels:synset.kind=pixels``) is distilled for ``--iterations``
with the training set minus a seeded class-balanced holdout (``data.val_per_class``), snapshotting at every
step of ``--eval-at``. Each snapshot is evaluated on the holdout (``eval.split=val``, ``--val-seeds``
networks, the same network seeds at every step), and the loss is averaged over the window of iterations
before it. The *plateau* of an arm is the first evaluated step whose validation accuracy is within one
standard deviation (of the networks at the best step) of the best step's, and from which the windowed loss
falls by less than ``--loss-tol`` (relative) to the end. Only then is the test set touched: every arm's final
set, ``--test-seeds`` networks, one protocol for every row; each arm's test is a line of
``bench/results/test_ledger.jsonl`` (search ``plateau/<name>``), and a later invocation that would test again (an
arm added or lengthened) is refused unless ``--retest-reason "..."`` says why. Runs and evaluation cells resume
(reused cells are no new test); results go to ``OUT/<name>.json`` and ``.md`` with the command, commit, protocol
and storage.

    python -m bench.plateau --name dm_ipc10 --config configs/fmnist_cpu_dm.yaml --set synset.budget_ipc=10 \\
        --arm pixels:synset.kind=pixels --arm haba:synset.kind=haba --iterations 2000 \\
        --eval-at 0,250,500,1000,1500,2000

Arms can be distilled in separate processes (``--only NAME``, ``--no-report``); a last call without
``--only`` finds every run and evaluation cached and writes the report.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from math import gcd
from pathlib import Path

from bench.provenance import provenance
from bench.run import STUDIES_LEDGER
from haba_core import io
from haba_core import runfolder as RF
from haba_core.config import resolve_config
from haba_core.engine import distill
from haba_core.evaluate import evaluate_run
from haba_core.executors import LocalExecutor
from haba_core.ledger import LedgerEntry, RetestError
from haba_core.protocol import require_one_protocol

ROOT = Path(__file__).resolve().parents[1]


def parse_arm(text: str) -> tuple[str, list[str]]:
    name, sep, sets = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--arm {text!r}: expected NAME:KEY=V[,KEY=V...], e.g. pixels:synset.kind=pixels")
    return name.strip(), [s.strip() for s in sets.split(",") if s.strip()]


def arm_iterations(sets: list[str], default: int) -> tuple[list[str], int]:
    """An arm's own ``iterations=N`` (to run one arm longer) taken out of its overrides, else ``default``."""
    rest, n = [], default
    for s in sets:
        key, _, value = s.partition("=")
        if key.strip() == "iterations":
            n = int(value)
        else:
            rest.append(s)
    return rest, n


def windowed_loss(metrics: list[dict], steps: list[int], key: str = "loss") -> dict[int, float | None]:
    """Mean of ``key`` over the iterations after the previous evaluated step, up to and including ``step``."""
    out, prev = {}, 0
    for s in steps:
        vals = [m[key] for m in metrics if prev < m.get("step", -1) <= s and m.get(key) is not None]
        out[s] = statistics.fmean(vals) if vals else None
        prev = s
    return out


def plateau_step(points: list[dict], loss_tol: float) -> int | None:
    """First step within one std of the best validation accuracy after which the windowed loss falls by
    less than ``loss_tol`` (relative) to the end; ``None`` when no step qualifies (not plateaued)."""
    best = max(points, key=lambda p: p["val_mean"])
    final_loss = points[-1]["loss"]
    for p in points[:-1]:  # the last step qualifies trivially: still climbing there is no plateau
        if p["val_mean"] < best["val_mean"] - best["val_std"]:
            continue
        if final_loss is None:  # no loss recorded at all: accuracy alone
            return p["step"]
        if p["loss"] is None:  # the initial set: no loss window yet
            continue
        if (p["loss"] - final_loss) <= loss_tol * abs(p["loss"]):
            return p["step"]
    return None


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (results stay valid in another clone), else absolute."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def snapshot(run: Path, step: int) -> Path:
    path = RF.snapshot_path(run, step)
    if not path.exists():
        raise SystemExit(f"{path} is missing: distill with snapshot steps that include {step}")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plateau", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--config", action="append", default=[])
    p.add_argument("--set", action="append", default=[], help="overrides for every arm")
    p.add_argument("--arm", action="append", required=True, help="NAME:KEY=V[,KEY=V...] (repeatable)")
    p.add_argument("--iterations", type=int, required=True)
    p.add_argument("--eval-at", required=True, help="comma-separated steps (0: the initial set)")
    p.add_argument("--val-per-class", type=int, default=500)
    p.add_argument("--val-seeds", type=int, default=2)
    p.add_argument("--test-seeds", type=int, default=5)
    p.add_argument("--loss-tol", type=float, default=0.02)
    p.add_argument("--workers", type=int, default=1, help="evaluation processes (1: in this process)")
    p.add_argument("--only", help="distill and validate this arm only (no test, no report)")
    p.add_argument("--retest-reason", help="why this study may test again (recorded in the test ledger)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "plateau"))
    a = p.parse_args(argv)
    arms = {name: arm_iterations(sets, a.iterations) for name, sets in map(parse_arm, a.arm)}
    asked = {int(s) for s in a.eval_at.split(",")}
    if min(asked) < 0:
        raise SystemExit("--eval-at steps must be >= 0")
    if a.only and a.only not in arms:
        raise SystemExit(f"--only {a.only!r}: not one of the arms {sorted(arms)}")
    out = Path(a.out)
    executor = LocalExecutor(workers=a.workers) if a.workers > 1 else None
    rows = []
    for name, (sets, iterations) in arms.items():
        if a.only and name != a.only:
            continue
        steps = sorted({s for s in asked if s <= iterations} | {iterations})
        every = 0
        for s in steps:  # snapshot at the gcd of the evaluated steps
            every = gcd(every, s)
        overrides = [
            *a.set,
            *sets,
            f"data.val_per_class={a.val_per_class}",
            f"iterations={iterations}",
            f"snapshot_every={every}",
            f"checkpoint_every={every}",
        ]
        cfg = resolve_config(files=a.config, overrides=overrides)
        run = out / "runs" / a.name / name
        d = distill(cfg, run, resume=(run / RF.CONFIG).exists(), callbacks=[RF.InitialSnapshot(run)])
        status = io.read_json_strict(run / RF.STATUS)
        if status.get("state") != "finished":
            raise SystemExit(
                f"{run}: distillation ended {status.get('state')!r} ({status.get('error')}); "
                "run the same command again to resume it from its last checkpoint"
            )
        metrics = RF.read_jsonl(run / RF.METRICS)
        losses = windowed_loss(metrics, steps)
        val_cfg = replace(cfg.eval, split="val", seeds=a.val_seeds, nets=cfg.eval.nets[:1])
        points = []
        for s in steps:
            res = evaluate_run(run, cfg, val_cfg, snapshot(run, s), executor=executor, log=None)
            acc = res["synset"]["nets"][val_cfg.nets[0]]
            points.append(
                {
                    "step": s,
                    "val_mean": acc["mean"],
                    "val_std": acc["std"],
                    "val_per_seed": acc["per_seed"],
                    "loss": losses[s],
                    "protocol": res["synset"]["protocol"],
                }
            )
            print(
                f"{name} step {s}: val {100 * acc['mean']:.2f} +- {100 * acc['std']:.2f}, "
                f"loss {losses[s] if losses[s] is None else round(losses[s], 4)}",
                flush=True,
            )
        times = [m["time_s"] for m in metrics if m.get("time_s") is not None]  # every step, across resumes
        rows.append(
            {
                "arm": name,
                "overrides": sets,
                "iterations": iterations,
                "points": points,
                "plateau": plateau_step(points, a.loss_tol),
                "sec_per_iter": statistics.median(times) if times else None,
                "storage": status.get("storage"),
                "run": shown(run),
            }
        )
        del d
    if a.only:
        return 0
    require_one_protocol([pt["protocol"] for r in rows for pt in r["points"]], "the validation points")
    search = LedgerEntry(
        STUDIES_LEDGER, "", "search final test", search=f"plateau/{a.name}", retest_reason=a.retest_reason
    )
    for r in rows:  # the test set, touched once per arm: the final set, same protocol
        run = ROOT / r["run"]  # shown() paths are relative to the repository or absolute
        cfg = resolve_config(base=io.read_json_strict(run / RF.CONFIG))
        test_cfg = replace(cfg.eval, split="test", seeds=a.test_seeds)
        look = replace(search, run=f"plateau/{a.name}/{r['arm']}")
        try:
            res = evaluate_run(
                run, cfg, test_cfg, snapshot(run, r["iterations"]), executor=executor, log=None, ledger=look
            )
        except RetestError as e:
            raise SystemExit(f"error: {e}") from e
        r["test"] = {k: res["synset"]["nets"][test_cfg.nets[0]][k] for k in ("mean", "std", "per_seed")}
        r["test_protocol"] = res["synset"]["protocol"]
    require_one_protocol([r["test_protocol"] for r in rows], "the test rows")
    if executor is not None:
        executor.close()
    result = {
        "name": a.name,
        **provenance("bench.plateau", argv),
        "val_per_class": a.val_per_class,
        "steps": sorted({p["step"] for r in rows for p in r["points"]}),
        "rows": rows,
    }
    io.write_json(out / f"{a.name}.json", result)
    io.atomic_write_bytes(out / f"{a.name}.md", (report(result) + "\n").encode())
    print(report(result))
    return 0


def report(result: dict) -> str:
    rows = result["rows"]
    vp, tp = rows[0]["points"][0]["protocol"], rows[0]["test_protocol"]
    head = " | ".join(f"step {s}" for s in result["steps"])
    lines = [
        f"### Distillation length `{result['name']}`",
        "",
        f"Command: `{result['command']}` at `{result['git_commit'][:12]}`. Validation: {result['val_per_class']} "
        f"held-out training images per class, protocol {vp['name']} ({vp['id']}); test: protocol {tp['name']} "
        f"({tp['id']}).",
        "",
        f"| arm | | {head} |",
        "|---|---|" + "---|" * len(result["steps"]),
    ]
    for r in rows:
        at = {p["step"]: p for p in r["points"]}
        accs = " | ".join(
            f"{100 * at[s]['val_mean']:.2f} +- {100 * at[s]['val_std']:.2f}" if s in at else "" for s in result["steps"]
        )
        loss = " | ".join(
            "" if s not in at or at[s]["loss"] is None else f"{at[s]['loss']:.4g}" for s in result["steps"]
        )
        lines += [f"| {r['arm']} | val accuracy % | {accs} |", f"| {r['arm']} | mean loss since previous | {loss} |"]
    lines += [
        "",
        "| arm | iterations | plateau (iterations) | test accuracy % (final set) | networks | stored floats | s/iter |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["test"]
        plateau = r["plateau"] if r["plateau"] is not None else f"not reached by {r['iterations']}"
        acc = f"{100 * t['mean']:.2f} +- {100 * t['std']:.2f}"
        lines.append(
            f"| {r['arm']} | {r['iterations']} | {plateau} | {acc} | {len(t['per_seed'])} "
            f"| {r['storage']['floats_total']:,} | {r['sec_per_iter'] or 0:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
