"""What a findings study is made of: validation searches that choose shapes, arms (one configuration each,
distilled with several seeds) and the study that evaluates them; ``bench.studies`` holds the studies themselves.

An arm's shape is never chosen by hand: it is the best validation combination of its search (and of that search's
follow-ups), read from ``bench/results/val_search/<search>.json``; until those have run the arm is pending.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field

from bench.cell import ROOT
from bench.profiles import CPU, Cell, Profile, _fmnist, precision_overrides

RESULTS = ROOT / "bench" / "results"
FINDINGS = RESULTS / "findings"
SEARCHES = RESULTS / "val_search"
DISTILL_SEEDS = (0, 1, 2)
EVAL_SEEDS = 3
DM = "configs/fmnist_cpu_dm.yaml"
PRESETS = {m: f"configs/fmnist_cpu_{m}.yaml" for m in ("dm", "dc", "dsa", "mtt")}
FAST = ("method.compile=true",)  # an execution choice (the real batches' pass compiled), not protocol
# the precision of the protocol every committed result ran under (plain-300ep-dsa-bf16), held fixed by the studies
# and their searches so that a machine without native bf16 cannot run another protocol by resolving "auto" to fp32
PRECISION = "bf16"
_COMPILED = ("dm", "dc", "dsa")  # the backends with a compiled real-batch pass (MTT has none)
_NOT_SHAPE = ("synset.kind", "synset.budget_ipc")  # what a search's arm sets itself


def fast(method: str | None) -> tuple[str, ...]:
    """The execution overrides a cell or search of ``method`` runs with (None: no distillation)."""
    return FAST if method in _COMPILED else ()


@dataclass(frozen=True)
class Search:
    """A validation search whose best combination sets an arm's shape."""

    name: str
    sets: tuple[str, ...]  # fixed overrides (kind, budget, ...)
    grid: tuple[str, ...]  # KEY=V1,V2,... axes
    config: str = DM
    # searches run later around this one's choice (e.g. the hallucinators' lr at the chosen shape, its fixed
    # settings in ``sets``): the arm takes the best combination over all of them
    follow_ups: tuple[Search, ...] = ()
    # a search whose choice this one holds fixed (MTT's image lr at the shape DM's search chose): this one waits
    # for it, and its rows carry that choice
    base: Search | None = None
    # MTT: the experts folder it needs (relative to the repository), trained without the held-out images
    experts: str = ""

    def fixed(self) -> tuple[str, ...] | None:
        """The overrides every combination holds: ``sets`` and the base search's choice; None until that has run."""
        if self.base is None:
            return self.sets
        chosen = self.base.choice()
        return None if chosen is None else (*self.sets, *chosen)

    def command(self) -> list[str]:
        fixed = self.fixed()
        if fixed is None:
            raise ValueError(f"search {self.name} holds the choice of {self.base.name}, which has not run yet")
        # the backend of its preset (a config that is not one runs without the compiled pass)
        method = next((m for m, preset in PRESETS.items() if preset == self.config), None)
        experts = [f"method.expert_dir={self.experts}"] if self.experts else []  # from the root, where it runs
        sets = [*fixed, "eval.compile=true", *fast(method), *experts, *precision_overrides(PRECISION, method)]
        return [
            sys.executable,
            "-m",
            "bench.val_search",
            "--name",
            self.name,
            "--config",
            self.config,
            *(a for s in sets for a in ("--set", s)),
            *(a for g in self.grid for a in ("--grid", g)),
        ]

    def best(self) -> list[str] | None:
        """This search's own best combination as overrides; None until the search has run."""
        path = SEARCHES / f"{self.name}.json"
        if not path.exists():
            return None
        best = json.loads(path.read_text())["best"]
        return [f"{k}={v}" for k, v in best.items() if k != "preset"]

    def rows(self) -> list[tuple[float, list[str], str]] | None:
        """(validation mean, overrides with the synset settings the search held fixed, protocol id) per
        combination; None until the search has run."""
        path, held = SEARCHES / f"{self.name}.json", self.fixed()
        if not path.exists() or held is None:
            return None
        data = json.loads(path.read_text())
        moved = [o for o in held[len(self.sets) :] if f"--set {o}" not in data.get("command", "")]
        if moved:  # the base search's choice changed after this one ran: its rows are of another shape
            raise ValueError(f"search {self.name} ran without {', '.join(moved)} ({self.base.name}'s choice): rerun it")
        fixed = [s for s in held if s.startswith("synset.") and s.split("=")[0] not in _NOT_SHAPE]
        return [
            (
                r["mean"],
                [*fixed, *(f"{k}={v}" for k, v in r["combination"].items() if k != "preset")],
                r["protocol"]["id"],
            )
            for r in data["rows"]
        ]

    def choice(self) -> list[str] | None:
        """The arm's overrides: the best validation combination over this search and its follow-ups; None until
        all have run. Rows of different protocols are not compared."""
        tables = [s.rows() for s in (self, *self.follow_ups)]
        if any(t is None for t in tables):
            return None
        rows = [r for t in tables for r in t]
        if len({r[2] for r in rows}) > 1:
            names = ", ".join(s.name for s in (self, *self.follow_ups))
            raise ValueError(f"searches {names} ran under different protocols: rerun the older ones")
        return max(rows, key=lambda r: r[0])[1]

    def at_edge(self, choice: list[str] | None) -> str | None:
        """Where ``choice`` (this search's ``choice()``) puts the basis size at the edge of the sizes this search
        and its follow-ups tried (the smallest, or the largest when full size was not tried), else None: a reader
        should know that the grid may not bracket the best size."""
        chosen, tried = None, set()
        for s in (self, *self.follow_ups):
            for axis in s.grid:
                key, _, values = axis.partition("=")
                if key == "synset.basis_size":
                    tried |= set(values.split(","))
        for o in choice or []:
            if o.startswith("synset.basis_size="):
                chosen = o.partition("=")[2]
        sizes = sorted(int(v) for v in tried if v.isdigit())
        if chosen is None or not chosen.isdigit() or len(tried) < 2:
            return None
        if int(chosen) == sizes[0]:
            return f"{chosen}x{chosen} is the smallest size searched"
        if int(chosen) == sizes[-1] and "full" not in tried:
            return f"{chosen}x{chosen} is the largest size searched"
        return None


@dataclass(frozen=True)
class Arm:
    """One configuration of a study: a synset kind at a budget with its overrides (and a search's shape)."""

    name: str
    budget: float
    kind: str  # a synset kind, or "random_real"
    overrides: tuple[str, ...] = ()
    search: Search | None = None
    tags: dict = field(default_factory=dict)  # what the study plots it by (factor, value, ...)
    source: str = ""  # cross_arch: the study whose kept set of the same cell name it evaluates
    borrowed_from: str = ""  # a row of another study (its cells, not run here): the chosen configuration
    method: str = "dm"  # the distillation backend (its CPU preset)
    seeds: tuple[int, ...] = ()  # its distillation seeds when fewer than the study's (a cut of the compute cap)

    def shape(self) -> list[str] | None:
        return [] if self.search is None else self.search.choice()

    def cells(self, seeds=DISTILL_SEEDS) -> list[Cell]:
        """One bench cell per distillation seed (none while the arm's search is pending)."""
        shape = self.shape()
        if shape is None:
            return []
        method = None if self.kind == "random_real" else self.method
        out = []
        for s in seeds:
            ov = (*fast(method), *shape, *self.overrides, f"seed={s}")
            out.append(
                Cell(
                    f"{self.name}__s{s}",
                    self.budget,
                    method,
                    "pixels" if method is None else self.kind,
                    PRESETS.get(method),
                    ov,
                    run_of=self.source,
                )
            )
        return out


@dataclass(frozen=True)
class Study:
    name: str
    question: str
    arms: tuple[Arm, ...]
    nets: tuple[str, ...] = ("convnet",)
    merge_from: str = ""  # another study whose cells of the same names add their networks' columns (ConvNet)
    comparisons: tuple[tuple[str, str, str], ...] = ()  # (label, arm, baseline arm): differences reported per net
    seeds: tuple[int, ...] = DISTILL_SEEDS  # the distillation seeds whose sets it runs (or evaluates)
    precision: str = PRECISION

    @property
    def columns(self) -> tuple[str, ...]:
        return ("convnet", *self.nets) if self.merge_from and "convnet" not in self.nets else self.nets

    def profile(self) -> Profile:
        cells = tuple(c for a in self.arms if not a.borrowed_from for c in a.cells(self.seeds_of(a)))
        p = _fmnist(
            self.name,
            self.question,
            EVAL_SEEDS,
            cells,
            experts=CPU.experts,
            keep_sets=True,
            runner="bench.studies",
            precision=self.precision,
        )
        return dataclasses.replace(
            p, eval_nets=self.nets, common=(*p.common[:1], f"eval.nets={','.join(self.nets)}", *p.common[2:])
        )

    def seeds_of(self, arm: Arm) -> tuple[int, ...]:
        """The distillation seeds whose sets the arm runs (or evaluates) here."""
        return arm.seeds or self.seeds

    def pending(self) -> list[Arm]:
        return [a for a in self.arms if a.shape() is None]

    def searches(self) -> list[Search]:
        """Every search the arms' shapes wait for, each after the search whose choice it holds fixed."""
        found = [s for a in self.arms if a.search is not None for s in (a.search, *a.search.follow_ups)]
        return list({s.name: s for f in found for s in (*([f.base] if f.base else []), f)}.values())
