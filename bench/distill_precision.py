"""Does distilling in bf16 keep accuracy? Each cell of the ``cpu_bf16`` bench profile (the ``cpu`` profile's DM, DC,
DSA and MTT cells distilled under bf16 autocast) is compared with its float32 twin (``cpu_fp32``): same seed and
iterations, same experts, same evaluation protocol and network seeds. A cell passes when its mean accuracy lies
within one standard deviation (of the float32 networks) of the float32 mean (issue #14).

    .venv/bin/python -m bench.run --profile cpu_fp32      # the float32 twins
    .venv/bin/python -m bench.run --profile cpu_bf16      # the bf16 cells
    .venv/bin/python -m bench.distill_precision          # -> bench/results/distill_precision.{json,md}

(``cpu_fp32`` pins ``method.precision=fp32``: the ``cpu`` profile itself runs the defaults, and DM's default
resolves to bf16 on this CPU since it passed this check, so its DM cells are no float32 twins any more.)
The check refuses pairs whose evaluation protocols differ, whose run configs (when the run folders are
present) differ in anything but ``method.precision``, ``method.compile`` and the experts folder, or whose
distillations did not run in float32 and bf16 as recorded (``distill_precision`` in the cell record, else
the run's ``status.json``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.provenance import provenance, write_report
from haba_core import io
from haba_core.config import RunConfig, flatten
from haba_core.runfolder import CONFIG, STATUS

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"method.params.precision", "method.params.compile", "method.params.expert_dir"}


def config_difference(a: Path, b: Path) -> set[str]:
    """Dotted keys whose values differ between two run configs (empty if either is missing)."""
    if not (a.exists() and b.exists()):
        return set()
    fa, fb = (flatten(RunConfig.from_dict(io.read_json_strict(p)).to_dict()) for p in (a, b))  # any layout, resolved
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def distilled_in(results: Path, profile: str, cell: str, record: dict) -> str | None:
    """The precision a bench cell's distillation resolved to: its record's ``distill_precision``, else its
    run's ``status.json``; None when neither says (older records without their run folder)."""
    if record.get("distill_precision"):
        return record["distill_precision"]
    status = results / profile / "runs" / cell / "run" / STATUS
    return io.read_json_strict(status).get("precision") if status.exists() else None


def _first_of(results: Path, folders: list[str]) -> dict[str, tuple[str, Path]]:
    """Each finished cell name of the folders, from the first folder that has it: {name: (folder, record)}."""
    found: dict[str, tuple[str, Path]] = {}
    for folder in folders:
        for cell in sorted((results / folder / "cells").glob("*.json")):
            if not cell.name.endswith(".failed.json"):
                found.setdefault(cell.name, (folder, cell))
    return dict(sorted(found.items()))


def compare(results: Path, reference: str, fast: str, only: list[str] | None = None) -> list[dict]:
    """One row per finished bf16 cell (whose name contains one of ``only``, when given). ``reference`` and ``fast``
    name the float32 and bf16 cells' folders under ``results``, or several each, comma-separated: a cell comes from
    the first folder that has it (a rerun's folder first, the older ones after it)."""
    rows = []
    references = [r for r in reference.split(",") if r]
    for name, (side, cell) in _first_of(results, [f for f in fast.split(",") if f]).items():
        if only and not any(o in name for o in only):
            continue
        found = [r for r in references if (results / r / "cells" / cell.name).exists()]
        if not found:
            raise SystemExit(
                f"{cell.name}: no float32 twin in {', '.join(references)}: run `python -m bench.run "
                f"--profile cpu_fp32` first"
            )
        twin = found[0]
        ref_path = results / twin / "cells" / cell.name
        f, r = io.read_json_strict(cell), io.read_json_strict(ref_path)
        if f["protocol"]["id"] != r["protocol"]["id"]:
            raise SystemExit(f"{cell.stem}: evaluated under protocols {f['protocol']['id']} vs {r['protocol']['id']}")
        if len(f["accuracy_per_seed"]) != len(r["accuracy_per_seed"]):
            raise SystemExit(f"{cell.stem}: a different number of evaluation networks")
        for name, rec, want in ((twin, r, "fp32"), (side, f, "bf16")):
            got = distilled_in(results, name, cell.stem, rec)
            if got not in (None, want):
                raise SystemExit(
                    f"{cell.stem}: the `{name}` cell distilled in {got}, not {want}; the float32 twins "
                    "are `python -m bench.run --profile cpu_fp32` (`--reference cpu_fp32`)"
                )
        run = Path("runs", cell.stem, "run", CONFIG)
        extra = config_difference(results / twin / run, results / side / run) - ALLOWED
        if extra:
            raise SystemExit(f"{cell.stem}: the configs differ beyond precision: {sorted(extra)}")
        gap = f["accuracy_mean"] - r["accuracy_mean"]
        rows.append(
            {
                "cell": cell.stem,
                "fp32_mean": r["accuracy_mean"],
                "fp32_std": r["accuracy_std"],
                "bf16_mean": f["accuracy_mean"],
                "bf16_std": f["accuracy_std"],
                "gap": gap,
                "passes": abs(gap) <= r["accuracy_std"],
                "fp32_s_per_iter": r["sec_per_iter"],
                "bf16_s_per_iter": f["sec_per_iter"],
                "fp32_peak_rss_mb": r.get("peak_rss_mb"),
                "bf16_peak_rss_mb": f.get("peak_rss_mb"),
                "protocol": f["protocol"]["id"],
                "reference": twin,
                "fast": side,
            }
        )
    return rows


def markdown(res: dict) -> str:
    lines = [
        "### Distilling in bf16 vs float32 (same seeds, experts and evaluation protocol)",
        "",
        f"`{res['command']}` at commit `{res['git_commit'][:12]}`, {res['finished_at']}: the `{res['fast']}` bench "
        f"cells against their `{res['reference']}` twins. A cell passes when the bf16 mean lies within one std of "
        "the float32 mean. "
        + (
            "Seconds per iteration are each cell's own run (one thread, two cells at a time)."
            if res.get("speeds", True)
            else "No seconds per iteration: the two sides ran under different loads, so their timings do not compare."
        ),
        "",
        "| cell | float32 % | bf16 % | gap | within 1 std | s/iter fp32 -> bf16 | speedup | float32 twin | bf16 cell |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        ok = "yes" if r["passes"] else "**no**"
        a, b = r["fp32_s_per_iter"], r["bf16_s_per_iter"]
        speed = f"{a:.2f} -> {b:.2f} | {a / b:.2f}x" if res.get("speeds", True) else "- | -"
        lines.append(
            f"| {r['cell']} | {100 * r['fp32_mean']:.2f} +- {100 * r['fp32_std']:.2f} "
            f"| {100 * r['bf16_mean']:.2f} +- {100 * r['bf16_std']:.2f} | {100 * r['gap']:+.2f} | {ok} "
            f"| {speed} | `{r.get('reference', res['reference'])}` | `{r.get('fast', res['fast'])}` |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.distill_precision", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    p.add_argument(
        "--reference",
        default="cpu_fp32",
        help="the twins' folder(s) under --results, comma-separated: each cell's twin comes from the first that has it",
    )
    p.add_argument("--fast", default="cpu_bf16")
    p.add_argument("--only", action="append", help="compare only cells whose name contains this (repeatable)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "distill_precision"))
    p.add_argument(
        "--no-speeds",
        action="store_true",
        help="leave s/iter out of the table (the two sides ran under different loads)",
    )
    a = p.parse_args(argv)
    rows = compare(Path(a.results), a.reference, a.fast, a.only)
    if not rows:
        matching = f" matching {a.only}" if a.only else ""
        raise SystemExit(f"no finished cells in {Path(a.results) / a.fast / 'cells'}{matching}")
    res = {
        **provenance("bench.distill_precision", argv),
        "reference": a.reference,
        "fast": a.fast,
        "rows": rows,
        "all_pass": all(r["passes"] for r in rows),
        "speeds": not a.no_speeds,
    }
    write_report(Path(a.out), res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
