"""Widget glue for the backend tutorial (``notebooks/02_*``): the DD objective and HaBa's adversarial contrastive
constraint as toggles, one run each into ``runs_dir`` through ``tutorial.distill_run`` (a finished run with the same
config is reused, so switching back shows it at once), with its losses, final grid and hallucination diversity. As in
the other tutorials, the button calls :meth:`MethodExplorer.run`, which headless runs (CI) call directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipywidgets as W
import pandas as pd
from IPython.display import clear_output

from workbench import grids
from workbench import runs as R
from workbench.tutorial import LiveLosses, distill_run, fmt_value, image_widget, set_diversity


@dataclass
class Result:
    """One finished explorer run: its folder, speed, final losses and the diversity of its hallucinations."""

    method: str
    constraint: bool
    path: Path
    records: list[dict] = field(default_factory=list)
    diversity: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


class MethodExplorer:
    """Toggles for the DD objective and for HaBa's adversarial contrastive constraint; "distill" runs the pair.

    Every run is resolved from ``overrides``, then ``method_overrides[method]``, then ``method.name`` and
    ``haba.enabled`` (dotted keys, as ``resolve_config``), into
    ``runs_dir/{prefix}_{method}_{on|off}``; results are kept, so switching back shows a finished run at once.
    ``unavailable`` maps a method to the reason it cannot run here (shown instead of running it).
    """

    def __init__(
        self,
        overrides: dict[str, Any],
        runs_dir: Path | str | None = None,
        methods: Iterable[str] = (),
        method_overrides: dict[str, dict] | None = None,
        unavailable: dict[str, str] | None = None,
        prefix: str = "tutorial2",
        live_every: int = 5,
        grid_class: int = 0,
    ):
        from haba_core.methods import list_methods

        self.overrides = dict(overrides)
        self.runs_dir = runs_dir
        self.methods = list(methods) or list_methods()
        self.method_overrides = dict(method_overrides or {})
        self.unavailable = dict(unavailable or {})
        self.prefix = prefix
        self.grid_class = grid_class
        self.results: dict[tuple[str, bool], Result] = {}
        self.method = W.ToggleButtons(options=[(m.upper(), m) for m in self.methods], style={"button_width": "80px"})
        self.constraint = W.ToggleButtons(options=[("on", True), ("off", False)], style={"button_width": "80px"})
        self.button = W.Button(description="distill", button_style="primary", icon="play")
        self.status = W.HTML()
        self.losses = W.Output()
        self.image = W.Image(format="png")
        self.caption = W.HTML()
        self.live = LiveLosses(every=live_every, output=self.losses)
        self.method.observe(lambda _: self.show(), names="value")
        self.constraint.observe(lambda _: self.show(), names="value")
        self.button.on_click(lambda _: self.run())
        label = W.Layout(width="230px")
        self.widget = W.VBox(
            [
                W.HBox([W.HTML("<b>DD objective</b>", layout=label), self.method]),
                W.HBox([W.HTML("<b>HaBa's adversarial constraint</b>", layout=label), self.constraint, self.button]),
                self.status,
                self.losses,
                self.image,
                self.caption,
            ]
        )
        self.show()

    def config(self, method: str, constraint: bool):
        from haba_core.config import resolve_config

        overrides = {
            **self.overrides,
            **self.method_overrides.get(method, {}),
            "method.name": method,
            "haba.enabled": bool(constraint),
        }
        return resolve_config(overrides=overrides)

    def run_name(self, method: str, constraint: bool) -> str:
        return f"{self.prefix}_{method}_{'on' if constraint else 'off'}"

    def run(self, method: str | None = None, constraint: bool | None = None) -> Result | None:
        """Distill (method, constraint) — the toggles' values when not given — and show it; returns the result."""
        method = self.method.value if method is None else method
        constraint = self.constraint.value if constraint is None else constraint
        self._select(method, constraint)
        if method in self.unavailable:
            self.status.value = f"<b>{method.upper()} is skipped here:</b> {self.unavailable[method]}"
            return None
        self.status.value = f"distilling {method.upper()} with the constraint {'on' if constraint else 'off'} ..."
        self.live.title = self.run_name(method, constraint)
        self.button.disabled = True
        try:
            path = distill_run(
                self.config(method, constraint), self.run_name(method, constraint), self.runs_dir, live=self.live
            )
        finally:
            self.button.disabled = False
        final = R.final_synset_path(path)
        res = Result(
            method, constraint, path, R.read_metrics(path), set_diversity(R.load_snapshot(final)) if final else {}
        )
        self.results[(method, constraint)] = res
        self.show()
        return res

    def _select(self, method: str, constraint: bool) -> None:
        if method not in self.methods:
            raise ValueError(f"unknown method {method!r}; this explorer has {', '.join(self.methods)}")
        self.method.value, self.constraint.value = method, constraint

    def show(self, method: str | None = None, constraint: bool | None = None) -> None:
        """Show (method, constraint): its losses, grid and diversity if it ran, else what to do."""
        if method is not None or constraint is not None:
            self._select(method or self.method.value, self.constraint.value if constraint is None else constraint)
        key = (self.method.value, self.constraint.value)
        res = self.results.get(key)
        if key[0] in self.unavailable:
            self.status.value = f"<b>{key[0].upper()} is skipped here:</b> {self.unavailable[key[0]]}"
        elif res is None:
            self.status.value = "not distilled yet: press <b>distill</b>"
        else:
            spi = [r["time_s"] for r in res.records if "time_s" in r]
            med = sorted(spi)[len(spi) // 2] if spi else float("nan")
            self.status.value = f"<b>{res.name}</b>: {len(res.records)} iterations, {med:.2f} s/iteration (median)"
        if res is None:
            with self.losses:
                clear_output()
            self.image.value = b""
            self.image.layout.display = "none"
            self.caption.value = ""
            return
        self.live.records = res.records
        self.live.title = res.name
        self.live.draw()
        final = R.final_synset_path(res.path)
        if final:
            synset = R.load_snapshot(final)
            image_widget(grids.grid_image(grids.class_grid(synset, self.grid_class), scale=3), self.image)
            self.image.layout.display = None
            d = res.diversity
            self.caption.value = (
                f"class {self.grid_class} of the final set. Mean over classes: hallucinations of one basis differ by "
                f"{fmt_value(d.get('pixel_within'))} RMS pixels and "
                f"{fmt_value(d.get('feature_within'))} feature distance; "
                f"different bases by {fmt_value(d.get('pixel_between'))} / {fmt_value(d.get('feature_between'))}."
            )
        else:
            self.image.layout.display = "none"
            self.caption.value = f"{res.name} has no final set ({R.read_run(res.path).state}); press distill to go on."

    def table(self) -> pd.DataFrame:
        """One row per finished run: speed, last losses and diversity."""
        rows = []
        for (method, on), res in self.results.items():
            last = res.records[-1] if res.records else {}
            times = sorted(r["time_s"] for r in res.records if "time_s" in r)
            rows.append(
                {
                    "method": method,
                    "constraint": "on" if on else "off",
                    "iterations": len(res.records),
                    "s/iteration": times[len(times) // 2] if times else None,
                    "loss (last)": last.get("loss"),
                    "haba_cos (last)": last.get("haba_cos"),
                    **{f"diversity {k.replace('_', ' ')}": v for k, v in res.diversity.items()},
                }
            )
        return pd.DataFrame(rows)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
