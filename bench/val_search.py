"""Choose hyperparameters on the validation split, never on the test set.

Every combination of ``--grid KEY=V1,V2,...`` (several ``--grid`` flags multiply) is distilled with the
training set minus a seeded class-balanced holdout (``data.val_per_class``) and evaluated on that holdout
(``eval.split=val``). The best combination by validation accuracy is then, with ``--test``, evaluated once on
the test set under the same protocol, and that test is a line of ``bench/results/test_ledger.jsonl`` (search
``val_search/<name>``). A second test of the same search (say, after the grid grew and another combination won)
is refused unless ``--retest-reason "..."`` says why; the reason is recorded with it. Runs live in
``OUT/runs/<combination>`` and resume (a finished test is reused, not repeated); results go to ``OUT/<name>.json``
and ``.md`` with the command, commit, protocol and storage of each row.

    python -m bench.val_search --name dm_haba_ipc1_lr --config configs/fmnist_cpu_dm.yaml \\
        --set synset.kind=haba --set synset.budget_ipc=1 --grid synset.lr_hallucinators=1e-3,5e-4 --test

A knob that is a whole preset, such as the backend (each has its own config file and settings), is an axis of
``--preset NAME=FILE[,KEY=VALUE...]`` flags, multiplied with the grid; every preset's rows must share one
evaluation protocol (the search refuses otherwise):

    python -m bench.val_search --name haba_ipc1_backend --set synset.kind=haba --set synset.budget_ipc=1 \\
        --preset dm=configs/fmnist_cpu_dm.yaml --preset dc=configs/fmnist_cpu_dc.yaml \\
        --preset mtt=configs/fmnist_cpu_mtt.yaml,method.lr_img=100,method.expert_dir=experts/fmnist_cpu_val --test
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

from bench.provenance import provenance
from bench.run import STUDIES_LEDGER
from haba_core import io
from haba_core import runfolder as RF
from haba_core.config import RunConfig, resolve_config
from haba_core.engine import distill
from haba_core.ledger import LedgerEntry, RetestError
from haba_core.protocol import require_one_protocol

ROOT = Path(__file__).resolve().parents[1]
VAL_PER_CLASS = 500  # held-out training images per class (the validation split)


def combinations(grid: list[str]) -> list[dict[str, str]]:
    axes = []
    for g in grid:
        key, values = g.split("=", 1)
        axes.append([(key.strip(), v.strip()) for v in values.split(",")])
    return [dict(c) for c in itertools.product(*axes)] if axes else [{}]


def presets(specs: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """``NAME=FILE[,KEY=VALUE...]`` flags -> (name, [file], [overrides]); none -> one unnamed entry."""
    out = []
    for spec in specs:
        name, _, rest = spec.partition("=")
        file, *overrides = rest.split(",")
        if not name.strip() or not file.strip() or any("=" not in o for o in overrides):
            raise SystemExit(f"--preset {spec!r}: expected NAME=FILE[,KEY=VALUE...]")
        out.append((name.strip(), [file.strip()], [o.strip() for o in overrides]))
    return out or [("", [], [])]


def candidates(a) -> list[tuple[dict[str, str], list[str], list[str]]]:
    """(combination as recorded, config files, overrides) for every preset x grid combination; a preset shows in
    the combination as ``preset=NAME``, its own overrides after the search's ``--set`` and before the grid's."""
    out = []
    for name, files, own in presets(a.preset):
        for combo in combinations(a.grid):
            shown = {"preset": name, **combo} if name else combo
            overrides = [*a.set, *own, f"data.val_per_class={a.val_per_class}", *(f"{k}={v}" for k, v in combo.items())]
            out.append((shown, [*a.config, *files], overrides))
    return out


def tag(combo: dict[str, str]) -> str:
    return "_".join(f"{k.split('.')[-1]}={v}" for k, v in combo.items()) or "default"


def run_one(cfg: RunConfig, run_dir: Path, split: str, ledger: LedgerEntry | None = None) -> dict:
    """Distill (or resume) and score on ``split`` (a test recorded through ``ledger``); a finished score is kept in
    the run folder and reused."""
    cached = run_dir / f"search_{split}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    out = _run_one(cfg, run_dir, split, ledger)
    io.write_json(cached, out)
    return out


def _run_one(cfg: RunConfig, run_dir: Path, split: str, ledger: LedgerEntry | None) -> dict:
    resume = (run_dir / RF.CONFIG).exists()
    d = distill(cfg, run_dir, resume=resume)
    ecfg = cfg.eval.__class__(**{**cfg.eval.__dict__, "split": split})
    d.cfg = cfg.replace(eval=ecfg)
    ev = d.evaluate(ledger=ledger)
    net = cfg.eval.nets[0]
    acc = ev["nets"][net]
    return {
        "mean": acc["mean"],
        "std": acc["std"],
        "per_seed": acc["per_seed"],
        "protocol": ev["protocol"],
        "storage": ev["storage"],
        "sec_per_iter": d.seconds_per_iteration(),
        "iterations": cfg.iterations,
        "max_abs_pixel": float(d.synset.materialize(pairing="all")[0].detach().abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.val_search", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--config", action="append", default=[])
    p.add_argument("--set", action="append", default=[], help="fixed overrides for every combination")
    p.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,... (repeatable: the product is run)")
    p.add_argument("--preset", action="append", default=[], help="NAME=FILE[,KEY=VALUE...]: one value of a preset axis")
    p.add_argument("--val-per-class", type=int, default=VAL_PER_CLASS)
    p.add_argument("--test", action="store_true", help="evaluate the best combination on the test set")
    p.add_argument("--retest-reason", help="why this search may be tested again (recorded in the test ledger)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "val_search"))
    a = p.parse_args(argv)
    out = Path(a.out)
    previous = out / f"{a.name}.json"
    if previous.exists():  # scores of an earlier, smaller grid: kept with their runs, not recomputed
        for row in json.loads(previous.read_text()).get("rows", []):
            run_dir = out / "runs" / a.name / tag(row["combination"])
            keep = {k: v for k, v in row.items() if k not in ("combination", "split", "wall_s")}
            if run_dir.is_dir() and not (run_dir / "search_val.json").exists():
                io.write_json(run_dir / "search_val.json", keep)
    rows, setup = [], {}
    for combo, files, overrides in candidates(a):
        cfg = resolve_config(files=files, overrides=overrides)
        setup[tag(combo)] = cfg
        t0 = time.time()
        res = run_one(cfg, out / "runs" / a.name / tag(combo), "val")
        rows.append({"combination": combo, "split": "val", **res, "wall_s": time.time() - t0})
        print(
            f"{tag(combo)}: val {100 * res['mean']:.2f} +- {100 * res['std']:.2f} "
            f"(max |pixel| {res['max_abs_pixel']:.3g})",
            flush=True,
        )
    require_one_protocol([r["protocol"] for r in rows], "the combinations of one search")
    best = max(rows, key=lambda r: r["mean"])
    result = {"name": a.name, **provenance("bench.val_search", argv), "rows": rows, "best": best["combination"]}
    if a.test:  # the chosen configuration, touched on the test set once (distilled without the holdout)
        chosen = tag(best["combination"])
        look = LedgerEntry(
            STUDIES_LEDGER,
            f"val_search/{a.name}/{chosen}",
            "search final test",
            config=setup[chosen].to_dict(),
            search=f"val_search/{a.name}",
            retest_reason=a.retest_reason,
        )
        try:
            result["test"] = run_one(setup[chosen], out / "runs" / a.name / chosen, "test", look)
        except RetestError as e:
            raise SystemExit(f"error: {e}") from e
    io.write_json(out / f"{a.name}.json", result)
    proto = rows[0]["protocol"]
    lines = [
        f"### Validation search `{a.name}`",
        "",
        f"Command: `{result['command']}` at `{result['git_commit'][:12]}`, protocol {proto['name']} ({proto['id']}) "
        f"on the validation split ({a.val_per_class} held-out training images per class).",
        "",
        "| combination | val accuracy % | stored floats | max abs pixel | s/iter |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        acc = f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f}"
        spi = r["sec_per_iter"] or 0.0
        lines.append(
            f"| {tag(r['combination'])} | {acc} | {r['storage']['floats_total']:,} "
            f"| {r['max_abs_pixel']:.3g} | {spi:.3f} |"
        )
    if "test" in result:
        t = result["test"]
        lines += [
            "",
            f"Chosen on validation: `{tag(best['combination'])}`; test accuracy "
            f"{100 * t['mean']:.2f} +- {100 * t['std']:.2f} ({len(t['per_seed'])} networks).",
        ]
    (out / f"{a.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
