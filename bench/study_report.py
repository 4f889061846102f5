"""The findings studies' report: each arm summarized over its distillation seeds, the comparisons between arms,
``<study>.json`` and ``<study>.md`` (``python -m bench.studies <study> --report`` rewrites them from the cells).

Functions take the ``Study`` and ``Arm`` objects of ``bench.studies`` (which imports this module for its command)."""

from __future__ import annotations

import json
import math
import shlex
import statistics
from pathlib import Path

from bench.cell import sample_std
from bench.provenance import provenance


def setting_text(shape: list[str] | None, overrides, edge: str | None) -> str:
    """What a cell of the arm runs with, as tables show it: the searched shape and the arm's overrides (an override
    of the same key wins, as in a run), and where the shape lies at its grid's edge."""
    if shape is None:
        return "pending search"
    settings = {o.split("=")[0]: o for o in [*shape, *overrides]}
    return (" ".join(settings.values()) or "-") + (f" ({edge})" if edge else "")


def arm_summary(arm, records: list[dict], nets: tuple[str, ...]) -> dict:
    """Mean over distillation seeds of each set's mean, the sample std across seeds, the network spread."""
    shape = arm.shape()  # None: its search has not run
    edge = arm.search.at_edge(shape) if arm.search else None
    out = {
        "arm": arm.name,
        "budget": arm.budget,
        "kind": arm.kind,
        "tags": arm.tags,
        "overrides": list(arm.overrides),
        "shape": shape,
        "search": arm.search.name if arm.search else None,
        "pending_search": shape is None,
        "at_edge": edge,
        "setting": setting_text(shape, arm.overrides, edge),
        "n_seeds": len(records),
        "seeds": [r["seeds"]["distill"] for r in records],
        "per_net": {},
    }
    if records:
        st = records[0]["storage"]
        out.update(
            floats=st["floats_total"],
            ipc_equivalent=st["ipc_equivalent"],
            images_per_class=st["images_per_class"],
            protocol=records[0]["protocol"],
        )
    for net in nets:
        done = [(r["seeds"]["distill"], r["accuracy_by_net"].get(net)) for r in records]
        done = [(seed, s) for seed, s in done if s and s["per_seed"]]
        if not done:
            continue
        sets = [s for _, s in done]
        means = [100 * statistics.fmean(s["per_seed"]) for s in sets]
        out["per_net"][net] = {
            "mean": statistics.fmean(means),
            "std_seeds": sample_std(means),  # across distillation seeds (ddof 1)
            "std_nets": statistics.fmean(100 * sample_std(s["per_seed"]) for s in sets),  # within a set, averaged
            "set_means": means,
            "set_seeds": [seed for seed, _ in done],  # the distillation seed of each of set_means
            "n_seeds": len(sets),
            "n_nets": len(sets[0]["per_seed"]),
        }
    return out


def differences(study, arms: list[dict]) -> list[dict]:
    """Each comparison per network: the difference of the two arms' means and its standard error over the
    distillation seeds (unpaired: sqrt(s_a^2 / n_a + s_b^2 / n_b)) where both arms have two seeds or more; where
    one has a single seed (a cut of the compute cap), the difference between the sets of the seeds both have
    (``same_seeds``), with no standard error (``se`` None)."""
    by_name = {a["arm"]: a for a in arms}
    out = []
    for label, arm, base in study.comparisons:
        a, b = by_name.get(arm, {}).get("per_net", {}), by_name.get(base, {}).get("per_net", {})
        for net in study.columns:
            x, y = a.get(net), b.get(net)
            if not x or not y:
                continue
            row = {"label": label, "arm": arm, "baseline": base, "net": net, "n": [x["n_seeds"], y["n_seeds"]]}
            if min(x["n_seeds"], y["n_seeds"]) >= 2:
                se = math.sqrt(x["std_seeds"] ** 2 / x["n_seeds"] + y["std_seeds"] ** 2 / y["n_seeds"])
                out.append({**row, "diff": x["mean"] - y["mean"], "se": se})
                continue
            same = sorted(set(x["set_seeds"]) & set(y["set_seeds"]))
            if same:
                diff = _mean_of_seeds(x, same) - _mean_of_seeds(y, same)
                out.append({**row, "diff": diff, "se": None, "same_seeds": same})
    return out


def _mean_of_seeds(per_net: dict, seeds: list[int]) -> float:
    return statistics.fmean(m for s, m in zip(per_net["set_seeds"], per_net["set_means"], strict=True) if s in seeds)


def difference_text(c: dict) -> str:
    if c["se"] is None:
        seeds = ", ".join(map(str, c["same_seeds"]))
        return f"{c['diff']:+.2f} (the sets of seed {seeds} only: no standard error)"
    return f"{c['diff']:+.2f} +- {c['se']:.2f} (n = {c['n'][0]}, {c['n'][1]})"


def report(study, out_root: Path) -> dict:
    from haba_core import io
    from haba_core.protocol import distinct_protocols

    arms, records_all, profile = [], [], study.profile()
    for arm in study.arms:
        records, stale = [], []
        for c in arm.cells(study.seeds_of(arm)):
            p = out_root / (arm.borrowed_from or study.name) / "cells" / f"{c.name}.json"
            if not p.exists():
                continue
            rec = json.loads(p.read_text())
            changes = profile.changes_since(c, rec)
            if changes:  # e.g. a follow-up search changed the arm's shape: rerun, not counted
                stale.append(f"{c.name}: {'; '.join(changes)}")
                continue
            other = out_root / study.merge_from / "cells" / p.name
            if study.merge_from and other.exists():  # the same set's columns measured by the other study
                rec["accuracy_by_net"] = {**json.loads(other.read_text())["accuracy_by_net"], **rec["accuracy_by_net"]}
            records.append(rec)
        records_all += records
        arms.append(
            {
                **arm_summary(arm, records, study.columns),
                "expected_seeds": len(study.seeds_of(arm)),
                "stale": stale,
                "borrowed_from": arm.borrowed_from,
            }
        )
    result = {
        "study": study.name,
        "question": study.question,
        **provenance("bench.studies", [study.name]),  # the command that reruns it (not --report's)
        "cell_commits": sorted({r["git_commit"][:12] for r in records_all}),
        # cells that ran where bf16 is emulated (haba_core.bf16); records before the field ran on native bf16
        "bf16_emulated": sorted(
            r["cell"]["name"] for r in records_all if r.get("machine", {}).get("bf16") == "emulated"
        ),
        "cells_done": len(records_all),
        "protocols": distinct_protocols(r.get("protocol") for r in records_all),
        "distill_seeds": list(study.seeds),
        "eval_seeds": study.profile().eval_seeds,
        "nets": list(study.columns),
        "arms": arms,
        "searches": {s.name: {"command": shlex.join(s.command()[1:]), "best": s.best()} for s in study.searches()},
        "comparisons": differences(study, arms),
        "complete": all(a["n_seeds"] == a["expected_seeds"] for a in arms),
    }
    io.write_json(out_root / f"{study.name}.json", result)
    (out_root / f"{study.name}.md").write_text(markdown(result))
    return result


def _fmt(cell: dict | None) -> str:
    if not cell:
        return ""
    if cell.get("n_seeds", 2) < 2:  # no spread across seeds from one set: say so rather than print +- 0.00
        return f"{cell['mean']:.2f} (one seed; nets {cell['std_nets']:.2f})"
    return f"{cell['mean']:.2f} +- {cell['std_seeds']:.2f} (nets {cell['std_nets']:.2f})"


def markdown(r: dict) -> str:
    protos = r["protocols"]
    lines = [
        f"### Study `{r['study']}`: {r['question']}",
        "",
        f"Command: `{r['command']}`; cells ran at {', '.join(f'`{c}`' for c in r['cell_commits']) or '-'}; "
        f"{r['machine']['cpu']}, torch {r['machine']['torch']}.",
        "",
        *(
            [
                "bf16 emulated (float32 arithmetic rounded to bf16, `haba_core.bf16`) in cells "
                + ", ".join(f"`{c}`" for c in r["bf16_emulated"])
                + ("; the others ran on native bf16." if r.get("cells_done", 0) > len(r["bf16_emulated"]) else "."),
                "",
            ]
            if r.get("bf16_emulated")
            else []
        ),
        f"Protocol: {'; '.join(protos) if protos else '-'}"
        + (" **(several: compare only rows that share one)**" if len(protos) > 1 else "")
        + ".",
        "",
        f"Accuracy %: the mean over distillation seeds {r['distill_seeds']} of each distilled set's mean over "
        f"{r['eval_seeds']} evaluation networks, +- the sample std (ddof 1) across the seeds; in brackets the "
        "mean std across networks within one set. n = seeds done of the arm's (an arm may run fewer than the "
        "study's, a cut of the compute cap; with one, no std across seeds).",
        "",
    ]
    nets = r["nets"]
    lines += [
        "| arm | budget | stored floats | images/class | shape | n | " + " | ".join(nets) + " |",
        "|---" * (6 + len(nets)) + "|",
    ]
    for a in r["arms"]:
        floats = f"{a['floats']:,}" if "floats" in a else ""
        lines.append(
            f"| {a['arm']} | {a['budget']:g} | {floats} | {a.get('images_per_class', '')} | {a['setting']} "
            f"| {a['n_seeds']}/{a['expected_seeds']} | " + " | ".join(_fmt(a["per_net"].get(n)) for n in nets) + " |"
        )
    if r.get("comparisons"):
        lines += ["", "Differences (percentage points, +- the standard error over distillation seeds):", ""]
        lines += [f"- {c['label']} ({c['net']}): {difference_text(c)}" for c in r["comparisons"]]
    lines += [
        "",
        "Each search's own best on the validation split (an arm whose search has follow-ups takes the best row over "
        "all of them, with the settings each held fixed: the shape column above):",
        "",
    ]
    for name, s in r["searches"].items():
        lines.append(f"- `{name}`: {' '.join(s['best']) if s['best'] else 'not run yet'} (`python {s['command']}`)")
    stale = [c for a in r["arms"] for c in a.get("stale", [])]
    if stale:
        lines += ["", "Results left out because their cell has changed since they ran (the rerun redoes them):", ""]
        lines += [f"- {c}" for c in stale]
    if not r["complete"]:
        lines += ["", "_Incomplete: rerun the command to finish the missing cells (finished ones are kept)._"]
    return "\n".join(lines) + "\n"
