"""The findings studies' committed results as tables (the Findings page shows them, with the figures of
``workbench.findings_figures``; no Streamlit here).

``python -m bench.studies <study>`` writes ``bench/results/findings/<study>.json`` (``bench.study_report.report``): one
entry per arm with ``per_net[net] = {mean, std_seeds, std_nets, set_means, n_seeds, n_nets}``, accuracy in percent,
``mean`` the mean over distillation seeds of each set's mean, ``std_seeds`` the sample std across those seeds.
``bench/diversity_study.py`` writes ``diversity.json``: per set (arm x seed) its ConvNet accuracy and diversity
metrics, the same metrics of real images, and each metric's Spearman correlation with accuracy.

The folder is ``$HABA_FINDINGS_DIR`` or the repository's ``bench/results/findings``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from workbench.figures import accuracy_records
from workbench.runs import read_json

FINDINGS_ENV = "HABA_FINDINGS_DIR"
# study -> (section title, the question until the study has written its own), in the order of the questions
STUDIES = {
    "frontier": ("Frontier", "RQ1: accuracy against stored floats, every kind at equal storage"),
    "diversity": ("Diversity", "RQ2: how diverse the distilled sets are, and whether that predicts accuracy"),
    "cross_arch": ("Cross-architecture", "RQ3: the frontier's IPC-1 and IPC-10 sets trained on other architectures"),
    "constraint": ("Constraint", "RQ4: HaBa's contrastive constraint and its hallucinators, one factor at a time"),
}
REFERENCE_KIND = "pixels"  # what the cross-architecture gains are measured against
ARM_COLUMNS = ["arm", "line", "budget", "floats", "images/class", "seeds", "mean", "std_seeds", "std_nets", "shape"]


def findings_dir() -> Path:
    """The findings folder: ``$HABA_FINDINGS_DIR`` or ``bench/results/findings`` of this repository."""
    default = Path(__file__).resolve().parents[1] / "bench" / "results" / "findings"
    return Path(os.environ.get(FINDINGS_ENV) or default).expanduser().resolve()


def load_study(name: str, root: Path | None = None) -> tuple[dict | None, str | None]:
    """(the study's JSON, None), (None, None) when it has not been written, (None, problem) when unreadable."""
    data, problem = read_json((root or findings_dir()) / f"{name}.json")
    if data is not None and not isinstance(data, dict):
        return None, f"{name}.json is not a JSON object"
    return data, problem


# -- how far a study got ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """Arms and distillation seeds done of those expected; arms still waiting for their validation search."""

    arms_done: int
    arms_total: int
    seeds_done: int
    seeds_expected: int
    pending: tuple[str, ...] = ()

    @property
    def not_run(self) -> bool:
        return self.seeds_done == 0

    @property
    def complete(self) -> bool:
        return self.arms_total > 0 and self.arms_done == self.arms_total

    def text(self) -> str:
        if self.not_run:
            return "Not run yet: no arm has a finished seed."
        seeds = f"{self.seeds_done} of {self.seeds_expected} distillation seeds"
        if self.complete:
            return f"All {self.arms_total} arms done ({seeds})."
        out = f"{self.arms_done} of {self.arms_total} arms done ({seeds})"
        if self.pending:
            out += f"; {len(self.pending)} wait for their validation search (`--searches` runs it)"
        return out + "."


def progress(study: dict) -> Progress:
    arms = study.get("arms") or []
    return Progress(
        arms_done=sum(a.get("n_seeds", 0) >= a.get("expected_seeds", 1) for a in arms),
        arms_total=len(arms),
        seeds_done=sum(a.get("n_seeds", 0) for a in arms),
        seeds_expected=sum(a.get("expected_seeds", 0) for a in arms),
        pending=tuple(a["arm"] for a in arms if a.get("pending_search")),
    )


def protocol_text(study: dict) -> str:
    protos = study.get("protocols") or []
    return "; ".join(protos) if protos else "none yet (no finished cell)"


# -- arms as tables -----------------------------------------------------------------------------------------------
def _value(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:g}" if isinstance(v, float) else str(v)


def arm_label(arm: dict) -> str:
    """What an arm is plotted as: its ``kind`` tag (else its name), other tags but factor/value in brackets."""
    tags = arm.get("tags") or {}
    extra = ", ".join(f"{k} {_value(v)}" for k, v in tags.items() if k not in ("kind", "factor", "value"))
    base = str(tags.get("kind") or arm["arm"])
    return f"{base} ({extra})" if extra else base


def _cell(arm: dict, net: str) -> dict | None:
    cell = (arm.get("per_net") or {}).get(net)
    return cell if isinstance(cell, dict) and cell.get("mean") is not None else None


def arm_table(study: dict, net: str = "convnet") -> pd.DataFrame:
    """One row per arm: label, budget, stored floats, images/class, seeds done, accuracy on ``net`` (percent)."""
    rows = []
    for a in study.get("arms") or []:
        cell = _cell(a, net) or {}
        rows.append(
            {
                "arm": a["arm"],
                "line": arm_label(a),
                "budget": a.get("budget"),
                "floats": a.get("floats"),
                "images/class": a.get("images_per_class"),
                "seeds": f"{a.get('n_seeds', 0)}/{a.get('expected_seeds', '?')}",
                "mean": cell.get("mean"),
                "std_seeds": cell.get("std_seeds"),
                "std_nets": cell.get("std_nets"),
                "shape": a.get("setting") or "-",  # the study report's text for it
            }
        )
    return pd.DataFrame(rows, columns=ARM_COLUMNS)


def comparisons_table(study: dict) -> pd.DataFrame:
    """The study's reported differences (``comparisons``, if it has them): label, net, difference and its standard
    error in percentage points, seeds of both arms (or, where an arm has one, the seed whose sets it compares)."""
    rows = [
        {
            "comparison": c.get("label"),
            "net": c.get("net"),
            "difference": c.get("diff"),
            "se": c.get("se"),
            "seeds": (
                f"seed {', '.join(map(str, c['same_seeds']))}'s sets"
                if c.get("same_seeds")
                else " / ".join(str(n) for n in c.get("n") or [])
            ),
        }
        for c in study.get("comparisons") or []
    ]
    return pd.DataFrame(rows, columns=["comparison", "net", "difference", "se", "seeds"])


def frontier_points(study: dict, net: str = "convnet") -> pd.DataFrame:
    """The arms with a result and stored floats, sorted by line and floats (one line per :func:`arm_label`)."""
    df = arm_table(study, net)
    df = df[df["mean"].notna() & df["floats"].notna()]
    order = {line: i for i, line in enumerate(dict.fromkeys(df["line"]))}
    return df.sort_values(["line", "floats"], key=lambda s: s.map(order) if s.name == "line" else s)


def run_points(evaluations: dict[str, dict], net: str = "convnet") -> pd.DataFrame:
    """A user's evaluated runs as points (run, floats, mean and std over networks in percent, protocol)."""
    df = accuracy_records(evaluations)
    df = df[(df["source"] == "synset") & (df["net"] == net) & df["floats_total"].notna()]
    return pd.DataFrame(
        {
            "run": df["run"],
            "floats": df["floats_total"],
            "mean": 100 * df["mean"],
            "std": 100 * df["std"],
            "n": df["n"],
            "protocol": df["protocol"],
        }
    ).reset_index(drop=True)


def _row_labels(arms: list[dict]) -> list[str]:
    """Each arm's label, prefixed by its budget when the arms span several, or its name while labels still repeat."""
    labels = [arm_label(a) for a in arms]
    if len({a.get("budget") for a in arms}) > 1:
        labels = [f"IPC {float(a.get('budget') or 0):g}: {lb}" for a, lb in zip(arms, labels, strict=True)]
    return labels if len(set(labels)) == len(labels) else [a["arm"] for a in arms]


def cross_arch_matrix(study: dict) -> pd.DataFrame:
    """Mean accuracy (percent): rows arm labels (with their budget when there are several), columns the study's
    networks (NaN where not measured)."""
    nets, arms = list(study.get("nets") or []), study.get("arms") or []
    rows = {
        lb: {n: (_cell(a, n) or {}).get("mean", math.nan) for n in nets}
        for lb, a in zip(_row_labels(arms), arms, strict=True)
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=nets, dtype=float)


def with_nets_of(study: dict, other: dict | None) -> dict:
    """``study`` with the networks of ``other``, a study of the same arms on more networks (``cross_arch_resnet18``
    beside ``cross_arch``), as more columns: each arm takes the other's results of its name on the networks it lacks.
    The other study may have fewer seeds done; each cell keeps its own ``n_seeds``."""
    if not other:
        return study
    extra = {a.get("arm"): a.get("per_net") or {} for a in other.get("arms") or []}
    arms = [{**a, "per_net": {**extra.get(a["arm"], {}), **(a.get("per_net") or {})}} for a in study.get("arms") or []]
    nets = list(dict.fromkeys([*(study.get("nets") or []), *(other.get("nets") or [])]))
    return {**study, "nets": nets, "arms": arms}


def gain_over_reference(study: dict, reference: str = REFERENCE_KIND) -> pd.DataFrame:
    """Each arm minus the ``reference`` kind's arm of its budget, per network (percentage points); rows as in
    ``cross_arch_matrix``, only those with a result and a reference result beside them."""
    arms, matrix = study.get("arms") or [], cross_arch_matrix(study)
    rows = [(a.get("budget"), (a.get("tags") or {}).get("kind"), lb) for a, lb in zip(arms, matrix.index, strict=True)]
    ref = {budget: lb for budget, kind, lb in rows if kind == reference}
    gains = {lb: matrix.loc[lb] - matrix.loc[ref[b]] for b, _, lb in rows if b in ref and lb != ref[b]}
    out = pd.DataFrame.from_dict(gains, orient="index", columns=matrix.columns, dtype=float)
    return out.dropna(how="all")


def budgets(study: dict) -> list[float]:
    """The budgets the study's arms are at, smallest first."""
    return sorted({a["budget"] for a in study.get("arms") or [] if a.get("budget") is not None})


def constraint_bars(study: dict, budget: float, net: str = "convnet") -> tuple[pd.DataFrame, dict | None]:
    """(factor, value, mean, std_seeds, seeds) per finished ablation arm at ``budget``, and the ``chosen`` row's cell
    there (or None)."""
    rows, chosen = [], None
    for a in study.get("arms") or []:
        if a.get("budget") != budget:
            continue
        tags, cell = a.get("tags") or {}, _cell(a, net)
        if tags.get("factor") == "chosen":
            chosen = cell
        elif cell is not None:
            rows.append(
                {
                    "factor": str(tags.get("factor", a["arm"])),
                    "value": _value(tags.get("value", a["arm"])),
                    "mean": cell["mean"],
                    "std_seeds": cell.get("std_seeds"),
                    "seeds": cell.get("n_seeds"),
                }
            )
    return pd.DataFrame(rows, columns=["factor", "value", "mean", "std_seeds", "seeds"]), chosen


def diversity_points(div: dict, metric: str) -> pd.DataFrame:
    """One row per distilled set (arm x seed) with ``metric``: kind, arm, seed, budget, metric, accuracy."""
    rows = [
        {
            "kind": r.get("kind"),
            "arm": r.get("arm"),
            "seed": r.get("seed"),
            "budget": r.get("budget"),
            "metric": (r.get("metrics") or {}).get(metric),
            "accuracy": r.get("accuracy"),
        }
        for r in div.get("rows") or []
    ]
    df = pd.DataFrame(rows, columns=["kind", "arm", "seed", "budget", "metric", "accuracy"])
    return df[df["metric"].notna() & df["accuracy"].notna()].reset_index(drop=True)


def diversity_real(div: dict, metric: str) -> list[tuple[int, float]]:
    """(images per class, value) of ``metric`` on real images: the reference lines."""
    out = []
    for r in div.get("real") or []:
        v = (r.get("metrics") or {}).get(metric)
        if isinstance(v, (int, float)):
            out.append((int(r.get("n_per_class", 0)), float(v)))
    return out


def diversity_steps(div: dict, metric: str) -> pd.DataFrame:
    """``metric`` over distillation steps, averaged over seeds: arm, step, value."""
    rows = [
        {"arm": r.get("arm"), "step": r.get("step"), "value": (r.get("metrics") or {}).get(metric)}
        for r in div.get("over_steps") or []
    ]
    df = pd.DataFrame(rows, columns=["arm", "step", "value"]).dropna()
    return df.groupby(["arm", "step"], sort=False, as_index=False)["value"].mean()
