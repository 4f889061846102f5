"""The findings: the HaBa paper's questions as studies on Fashion-MNIST, each rerun with one command.

    python -m bench.studies frontier     # RQ1: accuracy against stored floats for every kind at every budget
    python -m bench.studies constraint   # RQ4: the contrastive constraint, the hallucinator count, freezing
    python -m bench.studies cross_arch   # RQ3: the frontier's IPC-1 sets on VGG11, AlexNet, LeNet and an MLP
    python -m bench.studies cross_arch_resnet18   # RQ3: and on ResNet18 (the IPC-1 sets)
    python -m bench.diversity_study      # RQ2: how diverse the sets are, and whether that predicts accuracy

A study is a list of *arms* (one configuration each), every arm distilled with ``DISTILL_SEEDS`` seeds and every
distilled set evaluated by ``EVAL_SEEDS`` networks, under one protocol (the CPU bench's: 300 epochs, DSA, bf16).
Each arm x seed is a bench cell (``bench.cell``, scheduled by ``bench.run``): its own process, one JSON file in
``bench/results/findings/<study>/cells/`` when done, skipped by a rerun. An arm reports the mean over seeds of each
set's mean accuracy, the sample std (ddof 1) across the seeds and, beside it, the mean network std within a set.

Shapes are never chosen here: an arm that needs one (HaBa's bases and hallucinators, FreD's coefficients, the
reduced-resolution pixels) takes the best combination of a validation search (``python -m bench.val_search``, on the
held-out split of the training set), read from ``bench/results/val_search/<search>.json``. An arm whose search has
not run is *pending*; ``--searches`` runs the missing searches (without touching the test set) first.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import subprocess
import sys
from pathlib import Path

from bench.cell import ROOT
from bench.study_design import (  # noqa: F401 (the study vocabulary, importable from here)
    DISTILL_SEEDS,
    DM,
    EVAL_SEEDS,
    FINDINGS,
    PRESETS,
    RESULTS,
    SEARCHES,
    Arm,
    Search,
    Study,
)

VAL_EXPERTS = SEARCHES / "experts" / "fashion_mnist"  # MTT's experts for validation searches (no held-out image)


def _shape_search(kind: str, budget: float, grid: tuple[str, ...], suffix: str = "") -> Search:
    return Search(
        f"dm_{kind}_ipc{budget:g}_shape{suffix}", (f"synset.kind={kind}", f"synset.budget_ipc={budget:g}"), grid
    )


# The shapes each kind is searched over, per budget (Fashion-MNIST 1x28x28; "full" is 28x28).
SHAPES = {
    1: {
        "haba": _shape_search("haba", 1, ("synset.basis_size=14,10", "synset.n_hallucinators=2,5"), "_pairfix"),
        "fred": Search(
            "dm_fred_ipc1_basis_size", ("synset.kind=fred", "synset.budget_ipc=1"), ("synset.basis_size=14,10,7",)
        ),
        "pixels_lowres": Search(
            "dm_pixels_ipc1_basis_size",
            ("synset.kind=pixels", "synset.budget_ipc=1"),
            ("synset.basis_size=full,14,10,7",),
        ),
    },
}
# per budget, the basis sizes the pixel and HaBa searches start from (IPC 5's include the smaller sizes IPC 2 needed)
_START = {2: ("full,20,14", "full,20"), 5: ("full,20,14,10", "full,20,14"), 10: ("full,20,14", "full,20")}
for _b, (_pixels, _haba) in _START.items():
    SHAPES[_b] = {
        "haba": _shape_search("haba", _b, (f"synset.basis_size={_haba}", "synset.n_hallucinators=2,5"), "_pairfix"),
        "fred": _shape_search("fred", _b, ("synset.basis_size=14,10,7",)),
        "pixels_lowres": _shape_search("pixels", _b, (f"synset.basis_size={_pixels}",)),
    }
# IPC 2's pixel and HaBa searches chose their smallest candidate (14x14 pixels, 20x20 bases), so each grid goes on
# to smaller sizes before an arm takes it
SHAPES[2]["pixels_lowres"] = dataclasses.replace(
    SHAPES[2]["pixels_lowres"], follow_ups=(_shape_search("pixels", 2, ("synset.basis_size=10,7",), "_small"),)
)
SHAPES[2]["haba"] = dataclasses.replace(
    SHAPES[2]["haba"],
    follow_ups=(_shape_search("haba", 2, ("synset.basis_size=14,10", "synset.n_hallucinators=2,5"), "_small"),),
)


def _lr_search(name: str, n_hallucinators: int, lrs: str) -> Search:
    fixed = ("synset.basis_size=20", f"synset.n_hallucinators={n_hallucinators}")
    return Search(name, ("synset.kind=haba", "synset.budget_ipc=10", *fixed), (f"synset.lr_hallucinators={lrs}",))


# IPC 10's two best shapes (20x20 bases with 2 or 5 hallucinators) tied at the IPC-1 lr; the hallucinators' lr is
# then searched at both, up to where accuracy turns (DM's arms take the best of all; MTT's take the shape only)
SHAPES[10]["haba"] = dataclasses.replace(
    SHAPES[10]["haba"],
    follow_ups=(
        _lr_search("dm_haba_ipc10_lr_hallucinators_pairfix", 5, "5e-5,2e-4,5e-4"),
        _lr_search("dm_haba_ipc10_lr_hallucinators_pairfix_hi", 5, "1e-3,2e-3"),
        _lr_search("dm_haba_ipc10_h2_lr_hallucinators", 2, "2e-4,5e-4,1e-3,2e-3"),
    ),
)

# Choices at the edge of the sizes searched (``Search.at_edge``) get one size further: at IPC 1 HaBa's 14x14 was the
# largest tried, at IPC 10 the reduced-resolution pixels' 14x14 and HaBa's 20x20 the smallest (HaBa's at the lr its
# follow-ups chose), at IPC 5 and 10 FreD's 14x14 the largest.
_EDGES = (
    (1, "haba", _shape_search("haba", 1, ("synset.basis_size=20", "synset.n_hallucinators=2,5"), "_large")),
    (10, "pixels_lowres", _shape_search("pixels", 10, ("synset.basis_size=10",), "_small")),
    (
        10,
        "haba",
        dataclasses.replace(
            _shape_search("haba", 10, ("synset.basis_size=14", "synset.n_hallucinators=2,5"), "_small"),
            sets=("synset.kind=haba", "synset.budget_ipc=10", "synset.lr_hallucinators=5e-4"),
        ),
    ),
    (5, "fred", _shape_search("fred", 5, ("synset.basis_size=20",), "_large")),
    (10, "fred", _shape_search("fred", 10, ("synset.basis_size=20",), "_large")),
)
for _b, _kind, _further in _EDGES:
    SHAPES[_b][_kind] = dataclasses.replace(SHAPES[_b][_kind], follow_ups=(*SHAPES[_b][_kind].follow_ups, _further))


def _shape_only(search: Search) -> Search:
    """The search with only its follow-ups over shapes at the preset's lrs: what MTT's arms take from DM's (an lr
    DM's searches chose is not MTT's)."""
    return dataclasses.replace(
        search, follow_ups=tuple(f for f in search.follow_ups if not any("lr_" in o for o in (*f.sets, *f.grid)))
    )


def _mtt_lr_search(name: str, budget: float, dm: Search, lrs: str) -> Search:
    """MTT's pixel lr searched at the size ``dm`` chose (held fixed), with experts that never saw the held-out
    images."""
    kb = ("synset.kind=pixels", f"synset.budget_ipc={budget:g}")
    return Search(
        name, kb, (f"method.lr_img={lrs}",), PRESETS["mtt"], base=dm, experts=str(VAL_EXPERTS.relative_to(ROOT))
    )


def frontier_arms(budgets=(1, 2, 5, 10)) -> tuple[Arm, ...]:
    arms = []
    for b in budgets:
        s = SHAPES[b]
        arms += [
            Arm(f"ipc{b}_random_real", b, "random_real", tags={"kind": "random real"}),
            Arm(f"ipc{b}_pixels", b, "pixels", ("synset.basis_size=full",), tags={"kind": "pixels"}),
            # the reviewer's control: plain pixels at the resolution validation chose (more, smaller images)
            Arm(f"ipc{b}_pixels_lowres", b, "pixels", search=s["pixels_lowres"], tags={"kind": "pixels, reduced"}),
            Arm(f"ipc{b}_haba", b, "haba", search=s["haba"], tags={"kind": "HaBa"}),
            Arm(f"ipc{b}_fred", b, "fred", search=s["fred"], tags={"kind": "FreD"}),
            Arm(
                f"ipc{b}_fred_lowpass",
                b,
                "fred",
                ("synset.selection=lowpass",),
                search=s["fred"],
                tags={"kind": "FreD, low-pass"},
            ),
        ]
    # MTT at IPC 1 and 10 with DM's chosen shapes (MTT's own shape searches are the first cut of the compute cap)
    for b in sorted({1, 10} & set(budgets)):
        s = SHAPES[b]
        if b == 1:  # the resolution control: DM's chosen size, at an image lr of MTT's own (searched, cheap at IPC 1)
            arms.append(
                Arm(
                    f"ipc{b}_mtt_pixels_lowres",
                    b,
                    "pixels",
                    search=dataclasses.replace(
                        _mtt_lr_search(f"mtt_pixels_lowres_ipc{b}_lr_img", b, s["pixels_lowres"], "30,100,300,1000"),
                        # 1000 won, the largest tried: one step further
                        follow_ups=(
                            _mtt_lr_search(f"mtt_pixels_lowres_ipc{b}_lr_img_hi", b, s["pixels_lowres"], "3000"),
                        ),
                    ),
                    method="mtt",
                    tags={"kind": "pixels, reduced", "method": "mtt"},
                )
            )
        arms += [
            Arm(
                f"ipc{b}_mtt_pixels",
                b,
                "pixels",
                ("synset.basis_size=full", "method.lr_img=300"),
                method="mtt",
                tags={"kind": "pixels", "method": "mtt"},
            ),
            Arm(
                f"ipc{b}_mtt_haba",
                b,
                "haba",
                search=_shape_only(s["haba"]),
                method="mtt",
                tags={"kind": "HaBa", "method": "mtt"},
            ),
        ]
    if 10 in budgets:  # the ranking can change with length: every distilled kind again, 4x the preset's 200
        arms += [
            dataclasses.replace(
                a, name=f"{a.name}_long", overrides=(*a.overrides, "iterations=800"), tags={**a.tags, "iterations": 800}
            )
            for a in arms
            if a.budget == 10 and a.kind != "random_real" and a.method == "dm"
        ]
    return tuple(arms)


def constraint_arms(budget: float = 1) -> tuple[Arm, ...]:
    """One factor at a time around the chosen HaBa configuration (the frontier's ``ipc<b>_haba`` arm, with all its
    seeds). At IPC 10 each factor runs distillation seed 0 only, the compute cap's cut (as for RQ3 at IPC 10): the
    headline cells are IPC 1's, and an IPC-10 HaBa cell took 6 to 10 minutes on 2 cores with native bf16
    (26 to 40 where bf16 is emulated)."""
    chosen = SHAPES[budget]["haba"]
    b = f"ipc{budget:g}"
    seeds = (0,) if budget == 10 else ()

    def arm(name, overrides, factor, value):
        return Arm(f"{b}_{name}", budget, "haba", overrides, chosen, {"factor": factor, "value": value}, seeds=seeds)

    return (
        Arm(
            f"{b}_haba",
            budget,
            "haba",
            search=chosen,
            tags={"factor": "chosen", "value": "chosen"},
            borrowed_from="frontier",
        ),
        arm("lambda0", ("haba.lambda_cos=0",), "constraint weight", 0.0),
        arm("lambda1", ("haba.lambda_cos=1",), "constraint weight", 1.0),
        arm("off", ("haba.enabled=false",), "constraint weight", "off (no extractor)"),
        arm("k2", ("synset.n_hallucinators=2",), "hallucinators", 2),
        arm("k10", ("synset.n_hallucinators=10",), "hallucinators", 10),
        arm("k1", ("synset.n_hallucinators=1",), "hallucinators", 1),
        arm("frozen", ("synset.freeze_hallucinators=true",), "hallucinators learned", False),
    )


def cross_arch_arms(budgets=(1, 10)) -> tuple[Arm, ...]:
    """The frontier's DM arms (at the preset length) whose kept sets other networks train on (random real draws its
    own subsets); IPC 10 only on the sets of distillation seed 0, the compute cap's cut for it."""
    return tuple(
        dataclasses.replace(
            a, source="" if a.kind == "random_real" else "frontier", seeds=(0,) if a.budget == 10 else ()
        )
        for a in frontier_arms(budgets)
        if a.tags["kind"] in ("random real", "pixels", "pixels, reduced", "HaBa", "FreD")
        and a.method == "dm"
        and "iterations" not in a.tags
    )


def cross_arch_comparisons(budgets) -> tuple[tuple[str, str, str], ...]:
    """Each kind against full-size pixels per network, and RQ1's split of HaBa's gain (the resolution trade, then
    the hallucinators) per network."""
    return tuple(
        c
        for b in budgets
        for c in (
            *((f"IPC {b}: {k} - pixels", f"ipc{b}_{k}", f"ipc{b}_pixels") for k in ("haba", "fred", "random_real")),
            (f"IPC {b}: reduced-resolution pixels - pixels", f"ipc{b}_pixels_lowres", f"ipc{b}_pixels"),
            (f"IPC {b}: haba - reduced-resolution pixels", f"ipc{b}_haba", f"ipc{b}_pixels_lowres"),
        )
    )


STUDIES = {
    s.name: s
    for s in (
        Study(
            "frontier",
            "RQ1: accuracy against stored floats, every kind at equal storage (DM, Fashion-MNIST)",
            frontier_arms(),
            comparisons=tuple(
                c
                for b in (1, 2, 5, 10)
                for c in (
                    (f"IPC {b}: HaBa - pixels", f"ipc{b}_haba", f"ipc{b}_pixels"),
                    (
                        f"IPC {b}: the resolution trade (reduced-resolution pixels - pixels)",
                        f"ipc{b}_pixels_lowres",
                        f"ipc{b}_pixels",
                    ),
                    (
                        f"IPC {b}: the hallucinators (HaBa - reduced-resolution pixels)",
                        f"ipc{b}_haba",
                        f"ipc{b}_pixels_lowres",
                    ),
                    (f"IPC {b}: FreD - pixels", f"ipc{b}_fred", f"ipc{b}_pixels"),
                )
            )
            + tuple((f"IPC {b}, MTT: HaBa - pixels", f"ipc{b}_mtt_haba", f"ipc{b}_mtt_pixels") for b in (1, 10))
            + (
                ("IPC 1, MTT: the resolution trade", "ipc1_mtt_pixels_lowres", "ipc1_mtt_pixels"),
                ("IPC 1, MTT: the hallucinators", "ipc1_mtt_haba", "ipc1_mtt_pixels_lowres"),
            )
            + tuple(  # the same questions at 4x the preset length, where the ranking may change
                (f"IPC 10, 800 iterations: {label}", f"ipc10_{arm}_long", f"ipc10_{base}_long")
                for label, arm, base in (
                    ("HaBa - pixels", "haba", "pixels"),
                    ("the hallucinators (HaBa - reduced-resolution pixels)", "haba", "pixels_lowres"),
                    ("FreD - pixels", "fred", "pixels"),
                )
            ),
        ),
        Study(
            "constraint",
            "RQ4: HaBa's adversarial contrastive constraint and its hallucinators, one factor at a "
            "time around the chosen configuration (DM, Fashion-MNIST IPC 1 and 10)",
            constraint_arms(1) + constraint_arms(10),
            comparisons=tuple(
                (f"IPC {b}: {a.name.split('_', 1)[1]} - chosen", a.name, f"ipc{b}_haba")
                for b in (1, 10)
                for a in constraint_arms(b)[1:]
            ),
        ),
        Study(
            "cross_arch",
            "RQ3: the frontier's sets trained on VGG11, AlexNet, LeNet and an MLP beside the ConvNet (DM, "
            "Fashion-MNIST; IPC 1 with every distillation seed, IPC 10 with seed 0)",
            cross_arch_arms(),
            nets=("vgg11", "alexnet", "lenet", "mlp"),
            merge_from="frontier",
            comparisons=cross_arch_comparisons((1, 10)),  # IPC 10: seed 0's sets only, so no standard error
        ),
        Study(
            "cross_arch_resnet18",
            "RQ3, ResNet18: the frontier's IPC-1 sets of every distillation seed (ResNet18 trains about 10 minutes a "
            "network on one CPU core at these sizes)",
            cross_arch_arms((1,)),
            nets=("resnet18",),
            merge_from="frontier",
            comparisons=cross_arch_comparisons((1,)),
        ),
    )
}


def run_searches(study: Study, log=print) -> None:
    from bench.run import precision_note

    missing = [s for s in study.searches() if s.best() is None]
    if missing and (note := precision_note(study.profile())):
        log(f"note: {note}")
    for s in missing:
        if s.experts:  # MTT's, trained like the study's (CPU.experts) but never on the held-out images
            from bench.profiles import CPU
            from bench.run import experts_command
            from bench.val_search import VAL_PER_CLASS

            folder = ROOT / s.experts  # named after its dataset, as a profile's experts folders are
            cmd = [*experts_command(CPU, folder, folder.name), "--set", f"data.val_per_class={VAL_PER_CLASS}"]
            log("$ " + shlex.join(cmd))
            subprocess.run(cmd, cwd=ROOT, check=True)
        log("$ " + shlex.join(s.command()))
        subprocess.run(s.command(), cwd=ROOT, check=True)


def main(argv: list[str] | None = None) -> int:
    from bench.run import run_profile
    from bench.study_report import markdown, report

    p = argparse.ArgumentParser(prog="python -m bench.studies", description=__doc__.split("\n\n")[0])
    p.add_argument("study", choices=sorted(STUDIES))
    p.add_argument("--only", action="append", help="run only cells whose name contains this (repeatable)")
    p.add_argument(
        "--jobs",
        type=int,
        help="cells at once (default 2, one thread each on 2 cores); an RQ3 cell given more threads trains that "
        "many networks at once",
    )
    p.add_argument("--searches", action="store_true", help="first run the validation searches not run yet")
    p.add_argument("--report", action="store_true", help="only rewrite <study>.json and .md from finished cells")
    p.add_argument("--out", default=str(FINDINGS))
    p.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell in this process
    a = p.parse_args(argv)
    study, out = STUDIES[a.study], Path(a.out)
    if a.cell:
        from bench.cell import child

        return child(study.profile(), a.cell, out)
    if a.searches:
        run_searches(study)
    if not a.report:
        for arm in study.pending():
            print(f"[pending] {arm.name}: its shape waits for search {arm.search.name} (--searches runs it)")
        run_profile(study.profile(), out, a.only, jobs=a.jobs, report=lambda *_: None)
    r = report(study, out)
    print(markdown(r))
    return 0 if r["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
