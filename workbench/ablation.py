"""Widget glue for the ablation tutorial (``notebooks/04_*``): arms one factor at a time around one configuration.

An arm is a name and its dotted overrides (``haba.lambda_cos=0``), applied on top of a shared base (config files,
then the base overrides, then the arm's, as ``resolve_config`` layers them). :class:`Ablation` distills every
chosen arm into ``runs_dir/{prefix}_{arm}`` with ``tutorial.distill_run`` (a finished run with the same config is
reused), evaluates its final set with ``haba_core.evaluate.evaluate_run`` under one ``EvalConfig`` (finished
cells are reused too) and measures the diversity of its hallucinations with ``tutorial.set_diversity``.
:meth:`Ablation.table` is one row per arm; ``figures.ablation_figure`` plots it. As in the other tutorials,
the button calls :meth:`Ablation.run`, which headless runs (CI) call directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipywidgets as W
import pandas as pd
from IPython.display import clear_output, display

from haba_core import io
from haba_core import runfolder as RF
from haba_core.config import EvalConfig, resolve_config
from workbench import figures, tutorial
from workbench import runs as R


@dataclass
class ArmResult:
    """One finished arm: its run folder, per-step metrics, storage, evaluation and hallucination diversity."""

    arm: str
    path: Path
    records: list[dict] = field(default_factory=list)
    storage: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    diversity: dict = field(default_factory=dict)


class Ablation:
    """Checkboxes for the arms, an iteration count and a button that distills, evaluates and measures them.

    ``arms`` maps an arm's name to its overrides (``"key=value"`` strings; an empty sequence is the base
    configuration itself); ``base`` holds the dotted overrides every arm shares, on top of ``files``. ``chosen``
    are the arms ticked at the start (default: all). Each run is ``runs_dir/{prefix}_{arm}``; ``ecfg`` is the
    evaluation of every arm (its ``split`` says where accuracy is measured), with network seeds from ``seed``.
    """

    def __init__(
        self,
        arms: Mapping[str, Sequence[str]],
        base: Mapping[str, Any],
        ecfg: EvalConfig,
        iterations: int,
        files: Iterable[str | Path] = (),
        chosen: Iterable[str] | None = None,
        runs_dir: Path | str | None = None,
        prefix: str = "tutorial4",
        seed: int = 0,
        live_every: int = 10,
    ):
        self.arms = {name: tuple(overrides) for name, overrides in arms.items()}
        self.base = dict(base)
        self.ecfg = ecfg
        self.files = [str(f) for f in files]
        self.runs_dir = runs_dir
        self.prefix = prefix
        self.seed = seed
        self.results: dict[str, ArmResult] = {}
        chosen = set(self.arms if chosen is None else chosen)
        unknown = chosen - set(self.arms)
        if unknown:
            raise ValueError(f"unknown arm(s) {', '.join(sorted(unknown))}; this ablation has {', '.join(self.arms)}")
        self.boxes = {
            name: W.Checkbox(name in chosen, description=self.label(name), indent=False, layout=W.Layout(width="340px"))
            for name in self.arms
        }
        self.iterations = W.BoundedIntText(value=iterations, min=1, max=100_000, description="iterations")
        self.button = W.Button(description="distill + evaluate", button_style="primary", icon="play")
        self.button.on_click(lambda _: self.run())
        self.status = W.HTML()
        self.losses = W.Output()
        self.live = tutorial.LiveLosses(every=live_every, output=self.losses)
        self.table_out = W.Output()
        self.figure_out = W.Output()
        self.widget = W.VBox(
            [
                W.HTML("<b>arms</b> (one factor changed from the base configuration)"),
                W.GridBox(list(self.boxes.values()), layout=W.Layout(grid_template_columns="repeat(2, 340px)")),
                W.HBox([self.iterations, self.button]),
                self.status,
                self.losses,
                self.table_out,
                self.figure_out,
            ]
        )
        self.show()

    def label(self, arm: str) -> str:
        return f"{arm}: {' '.join(self.arms[arm]) or 'the base configuration'}"

    @property
    def chosen(self) -> list[str]:
        return [name for name, box in self.boxes.items() if box.value]

    def config(self, arm: str, iterations: int | None = None):
        """The arm's RunConfig: ``files``, then ``base``, then the arm's overrides (parsed as on the command
        line), at ``iterations``."""
        n = int(self.iterations.value if iterations is None else iterations)
        shared = resolve_config(files=self.files, overrides=self.base).to_dict()
        overrides = [*self.arms[arm], f"iterations={n}", f"snapshot_every={n}", f"checkpoint_every={n}"]
        return resolve_config(base=shared, overrides=overrides)

    def run_name(self, arm: str) -> str:
        return f"{self.prefix}_{arm}"

    def run(self, arms: Iterable[str] | None = None, iterations: int | None = None) -> pd.DataFrame:
        """Distill, evaluate and measure ``arms`` (default: the ticked ones) at ``iterations`` (default: the
        box's value), ticking the boxes to match; returns :meth:`table`."""
        if arms is not None:
            arms = list(arms)
            for name in arms:
                if name not in self.arms:
                    raise ValueError(f"unknown arm {name!r}; this ablation has {', '.join(self.arms)}")
            for name, box in self.boxes.items():
                box.value = name in arms
        if iterations is not None:
            self.iterations.value = int(iterations)
        todo = self.chosen
        self.button.disabled = True
        try:
            for i, arm in enumerate(todo, 1):
                self.status.value = f"arm {i}/{len(todo)}: <b>{self.label(arm)}</b>: distilling ..."
                self.live.title = self.run_name(arm)
                path = tutorial.distill_run(self.config(arm), self.run_name(arm), self.runs_dir, live=self.live)
                self.status.value = f"arm {i}/{len(todo)}: <b>{self.label(arm)}</b>: evaluating, measuring ..."
                self.results[arm] = self.measure(arm, path)
        finally:
            self.button.disabled = False
        self.show()
        return self.table()

    def measure(self, arm: str, path: Path) -> ArmResult:
        """Evaluate a finished arm's final set (``ecfg``) and measure the diversity of its hallucinations."""
        from haba_core.evaluate import evaluate_run

        final = R.final_synset_path(path)
        if final is None:
            raise RuntimeError(f"{path} has no final set ({R.read_run(path).state}); run the arm again.")
        cfg = resolve_config(base=io.read_json_strict(path / RF.CONFIG))
        evaluation = evaluate_run(path, cfg, self.ecfg, final, seed=self.seed, log=None)
        records = R.read_metrics(path)
        synset = R.load_snapshot(final)
        return ArmResult(arm, path, records, R.read_run(path).storage, evaluation, tutorial.set_diversity(synset))

    def table(self) -> pd.DataFrame:
        """One row per finished arm (in the order of ``arms``): shape, speed, accuracy (%) per network, diversity."""
        rows = []
        for arm in (a for a in self.arms if a in self.results):
            res = self.results[arm]
            times = sorted(r["time_s"] for r in res.records if "time_s" in r)
            row = {
                "arm": arm,
                "overrides": " ".join(self.arms[arm]) or "(base)",
                "hallucinators": res.storage.get("n_hallucinators"),
                "bases": res.storage.get("n_bases"),
                "stored floats": res.storage.get("floats_total"),
                "iterations": len(res.records),
                "s/iteration": times[len(times) // 2] if times else None,
            }
            for net, acc in (res.evaluation.get("synset", {}).get("nets") or {}).items():
                row[f"{net} acc %"] = 100 * acc["mean"]
                row[f"{net} std"] = 100 * acc["std"]
            row.update({k.replace("_", " "): v for k, v in res.diversity.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def figure(self):
        """``figures.ablation_figure`` of :meth:`table`, accuracy on the evaluation's first network."""
        split = "validation" if self.ecfg.split == "val" else self.ecfg.split
        return figures.ablation_figure(self.table(), self.ecfg.nets[0], f"{split} accuracy (%)")

    def show(self) -> None:
        """Redraw the table and the figure from the finished arms (or say what to do)."""
        done = [a for a in self.arms if a in self.results]
        if not self.button.disabled:
            self.status.value = (
                f"{len(done)} arm(s) finished: {', '.join(done)}" if done else "nothing run yet: press the button"
            )
        with self.table_out:
            clear_output(wait=True)
            if done:
                display(self.table().round(3))
        with self.figure_out:
            clear_output(wait=True)
            if done:
                display(self.figure())

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
