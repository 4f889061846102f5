"""Widget glue for the step-through tutorials in ``notebooks/`` (ipywidgets 8).

The tutorials call ``haba_core`` (config, distill, budget, evaluate) and ``workbench`` (runs, grids, diversity,
figures) directly. What is here only connects those to widgets and to a notebook's output, so that cells stay
short and hold no copied logic:

- :func:`distill_run`: ``haba_core.distill`` into a named run folder, with a live loss plot, a snapshot of the
  initial set (step 0), reuse of a finished run with the same config and resume of a cancelled one;
- :class:`LiveLosses`: an engine callback that redraws ``figures.loss_figure`` in an ``Output`` widget;
- :class:`SnapshotBrowser`: class x snapshot step x hallucinator sliders over a run folder's snapshots, drawn
  with ``grids`` and measured with ``diversity``;
- small helpers (:func:`set_diversity`, :func:`real_images`, :func:`final_grid`, :func:`side_by_side`).

Notebook 2's toggles (the DD objective and HaBa's adversarial constraint, one cached run each) are in
``workbench.method_explorer``, notebook 4's ablation (arms distilled, evaluated and measured side by side) in
``workbench.ablation``.

Every widget callback is an ordinary method (``show``, ``run``), so headless runs (CI) call the same code paths
that clicks and slider moves do in JupyterLab.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import ipywidgets as W
import torch
from IPython.display import clear_output, display
from PIL import Image

from haba_core import runfolder as RF
from haba_core.callbacks import Callback
from workbench import diversity, figures, grids
from workbench import runs as R

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO_ROOT / "data"


_displayed: set[int] = set()  # ids of Output widgets already placed in the notebook (never shown twice)


def default_runs_dir() -> Path:
    """Where tutorial runs go: ``$HABA_RUNS_DIR`` or the repository's ``runs/`` (the workbench app lists them)."""
    return Path(os.environ.get(R.RUNS_ENV) or REPO_ROOT / "runs").expanduser().resolve()


# -- running ------------------------------------------------------------------------------------------------
class LiveLosses(Callback):
    """Redraws the run's loss curves (``figures.loss_figure``) in an ``Output`` widget every ``every`` steps.

    A caller that passes ``output`` places it in its own widget; :func:`distill_run` displays only one made here.
    """

    def __init__(self, every: int = 10, title: str = "", output: W.Output | None = None):
        self.every = max(1, int(every))
        self.title = title
        self.output = output if output is not None else W.Output()
        if output is not None:
            _displayed.add(id(output))
        self.records: list[dict] = []

    def draw(self) -> None:
        fig = figures.loss_figure(self.records, R.loss_names(self.records))
        if self.title:
            fig.update_layout(title=self.title, margin=dict(t=70))
        with self.output:
            clear_output(wait=True)
            display(fig)

    def on_start(self, d) -> None:
        self.records = []

    def on_step(self, d, step: int, logs: dict) -> None:
        self.records.append(dict(logs))
        if step % self.every == 0:
            self.draw()

    def on_end(self, d, state: str, error: str | None) -> None:
        if self.records:
            self.draw()


def _same_config(run_dir: Path, cfg) -> bool:
    saved, _ = R.read_json(run_dir / RF.CONFIG)
    return json.dumps(saved, sort_keys=True) == json.dumps(json.loads(json.dumps(cfg.to_dict())), sort_keys=True)


def distill_run(
    cfg, name: str, runs_dir: Path | str | None = None, live: LiveLosses | bool = True, reuse: bool = True, dataset=None
) -> Path:
    """Distill ``cfg`` into ``runs_dir/name`` and return the folder.

    A finished run with the same config is reused, a cancelled one resumed from its last checkpoint (pass
    ``reuse=False`` to start again); any other run folder of that name is replaced. ``live``: a
    :class:`LiveLosses` (or True for a new one, displayed here) draws the losses while it runs. Interrupting
    the kernel stops the run after the current iteration, checkpoints it and marks it ``cancelled``.
    """
    from haba_core.engine import distill

    root = Path(runs_dir).expanduser().resolve() if runs_dir else default_runs_dir()
    path = R.run_path(name, root)
    resume = False
    if path.exists():
        run = R.read_run(path)
        if run.is_active:
            raise RuntimeError(
                f"{path} is {run.state} in another process; wait for it, cancel it or choose another name."
            )
        same = reuse and _same_config(path, cfg)
        if same and run.state == "finished" and R.final_synset_path(path):
            print(f"Reusing the finished run {path} (same config); delete it or pass reuse=False to run it again.")
            return path
        if same and run.can_resume:
            print(f"Resuming the {run.state} run {path} from step {run.step}.")
            resume = True
        elif not ((path / RF.CONFIG).exists() or (path / RF.STATUS).exists()):
            raise FileExistsError(f"{path} exists and is not a run folder; choose another name.")
        else:
            shutil.rmtree(path)
    callbacks: list[Callback] = [RF.InitialSnapshot(path)]
    if live is True:
        live = LiveLosses(title=name)
    if live:
        if id(live.output) not in _displayed:
            display(live.output)
            _displayed.add(id(live.output))
        callbacks.append(live)
    t0 = time.perf_counter()
    d = distill(cfg, path, resume=resume, callbacks=callbacks, dataset=dataset, handle_signals=True)
    state = R.read_run(path).state
    spi = d.seconds_per_iteration()
    speed = f" ({spi:.2f} s/iteration, median)" if spi else ""
    print(f"{name}: {state} after {d.step} iterations in {time.perf_counter() - t0:.1f} s{speed}; run folder {path}")
    return path


# -- measuring ----------------------------------------------------------------------------------------------
@torch.no_grad()
def set_diversity(synset, seed: int = 0) -> dict:
    """``diversity.hallucination_diversity`` averaged over classes: within-basis and between-basis distances."""
    info = synset.info
    net = diversity.feature_net(info, seed)
    per_class = [
        diversity.hallucination_diversity(grids.class_grid(synset, c).images, info, net=net)
        for c in range(info.num_classes)
    ]
    out = {}
    for key in ("pixel_within", "pixel_between", "feature_within", "feature_between"):
        values = [d[key] for d in per_class if d.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out


def real_images(dataset, per_class: int = 8, seed: int = 0, scale: int = 2) -> Image.Image:
    """A few real training images per class (one row each), drawn like the synthetic grids."""
    g = torch.Generator().manual_seed(seed)
    info = dataset.info
    rows = [list(grids.to_uint8(dataset.sample_class(c, per_class, g).cpu(), info)) for c in range(info.num_classes)]
    return grids.compose(rows, [str(n)[:14] for n in info.class_names], [""] * per_class, scale, gap=2)


def final_grid(run_dir: Path | str, c: int = 0, scale: int = 3) -> Image.Image:
    """The hallucinator x basis grid of class ``c`` in a run's final set."""
    path = R.final_synset_path(Path(run_dir))
    if path is None:
        raise FileNotFoundError(f"{run_dir} has no final synset.safetensors (did the run finish?)")
    return grids.grid_image(grids.class_grid(R.load_snapshot(path), c), scale=scale)


def image_widget(img: Image.Image, widget: W.Image | None = None) -> W.Image:
    """Show ``img`` in an Image widget at its own pixel size (JupyterLab would otherwise stretch it to the cell)."""
    widget = widget if widget is not None else W.Image(format="png")
    widget.value = grids.png_bytes(img)
    widget.width = str(img.width)
    return widget


def side_by_side(images: dict[str, Image.Image]) -> W.HBox:
    """Images next to each other, each under its label (e.g. one class with the constraint on and off)."""
    return W.HBox([W.VBox([W.HTML(f"<b>{label}</b>"), image_widget(img)]) for label, img in images.items()])


# -- browsing a run -----------------------------------------------------------------------------------------
class SnapshotBrowser:
    """Sliders for class, snapshot step and hallucinator over one run folder's snapshots.

    ``hallucinator`` -1 shows the whole grid (bare bases on top, one row per hallucinator, one column per
    basis); j >= 0 shows the bases and hallucinator j's output on them, larger. The caption measures how far
    apart the hallucinations of one basis are (``workbench.diversity``) at that step.
    """

    def __init__(self, run_dir: Path | str, scale: int = 4):
        self.run_dir = Path(run_dir)
        self.scale = scale
        self.paths = R.snapshots(self.run_dir)
        if not self.paths:
            raise FileNotFoundError(f"{self.run_dir} has no snapshots yet.")
        self._cache: dict[int, Any] = {}
        steps = list(self.paths)
        first = self.synset(steps[-1])
        info = first.info
        k = first.n_variants
        self.class_slider = W.IntSlider(0, 0, info.num_classes - 1, description="class", continuous_update=False)
        self.class_name = W.Label(str(info.class_names[0]))
        self.step_slider = W.SelectionSlider(
            options=steps, value=steps[-1], description="step", continuous_update=False
        )
        options = [("all", -1)] + [(f"{first.variant_name[0]}{j}", j) for j in range(k)] if k > 1 else [("all", -1)]
        self.halluc_slider = W.SelectionSlider(
            options=options, value=-1, description="hallucinator", continuous_update=False
        )
        self.image = W.Image(format="png")
        self.caption = W.HTML()
        self._quiet = False
        for s in (self.class_slider, self.step_slider, self.halluc_slider):
            s.observe(self._changed, names="value")
        self.widget = W.VBox(
            [
                W.HBox([self.class_slider, self.class_name]),
                self.step_slider,
                self.halluc_slider,
                self.image,
                self.caption,
            ]
        )
        self.show()

    @property
    def steps(self) -> list[int]:
        return list(self.paths)

    def synset(self, step: int):
        if step not in self._cache:
            self._cache[step] = R.load_snapshot(self.paths[step])
        return self._cache[step]

    def frame(self, c: int, step: int, hallucinator: int = -1) -> tuple[Image.Image, dict]:
        """The image and the diversity numbers the widget shows for (class, step, hallucinator)."""
        synset = self.synset(step)
        g = grids.class_grid(synset, c)
        if hallucinator < 0:
            img = grids.grid_image(g, scale=self.scale)
        else:
            cols = [f"b{i}" for i in range(g.n_bases)]
            title = f"class {c}: {g.class_name}, hallucinator {hallucinator}"
            rows = [list(g.bases), list(g.cells[hallucinator])]
            img = grids.compose(rows, ["basis", f"h{hallucinator}"], cols, self.scale * 2, title=title)
        div = diversity.hallucination_diversity(g.images, synset.info)
        return img, div

    def show(self, c: int | None = None, step: int | None = None, hallucinator: int | None = None) -> Image.Image:
        """Move the sliders (None keeps a slider where it is) and redraw once; returns the drawn image."""
        self._quiet = True
        try:
            if c is not None:
                self.class_slider.value = c
            if step is not None:
                self.step_slider.value = step
            if hallucinator is not None:
                self.halluc_slider.value = hallucinator
        finally:
            self._quiet = False
        c, step, j = self.class_slider.value, self.step_slider.value, self.halluc_slider.value
        synset = self.synset(step)
        self.class_name.value = str(synset.info.class_names[c])
        img, div = self.frame(c, step, j)
        image_widget(img, self.image)
        self.caption.value = _diversity_html(div, synset, step)
        return img

    def _changed(self, _change) -> None:
        if not self._quiet:
            self.show()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def fmt_value(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _diversity_html(div: dict, synset, step: int) -> str:
    note = grids.health_note(synset)
    parts = [f"step {step} &middot; {synset.n_bases} bases/class &middot; {synset.n_variants} hallucinator(s)"]
    if div.get("pixel_within") is not None:
        parts.append(
            "hallucinations of one basis differ by "
            f"{fmt_value(div['pixel_within'])} RMS pixels, "
            f"{fmt_value(div['feature_within'])} feature distance (1 - cos); "
            f"different bases: {fmt_value(div['pixel_between'])} / {fmt_value(div['feature_between'])}"
        )
    parts.append(f"<i>{grids.display_note(synset.info)}</i>")
    if note:
        parts.append(f"<b>{note}</b>")
    return "<br>".join(parts)
