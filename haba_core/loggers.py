"""Optional logger sinks beside the run folder: TensorBoard event files and offline W&B runs.

``loggers=("tensorboard", "wandb")`` in a run's config (``haba distill --log tensorboard,wandb``, the New run page's
Loop tab) adds these engine callbacks after the run folder. Each logs what ``metrics.jsonl`` gets, at the same steps
(every named loss, ``time_s``, peak memory), the accuracies of in-run evaluations (``eval/<net>/mean`` and ``std``)
and the synthetic set at each snapshot, drawn as the Live run page draws it (``workbench.grids.overview_image``:
numpy and PIL, no UI package).

The run folder stays the source of truth: a sink that fails (its package missing, a full disk) says so once on
stderr, which is the run's ``log.txt``, and switches itself off; the run goes on. A sink the command names whose
package is missing is refused before the run starts (:func:`require`), saying what to install.

W&B runs offline only (``WANDB_MODE=offline``, no error reports or telemetry, under ``<run>/wandb/``): nothing is sent
anywhere; ``wandb sync`` uploads a run later if wanted.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from haba_core import runfolder as RF
from haba_core.callbacks import Callback
from haba_core.errors import ConfigError
from haba_core.registry import Registry

SINKS: Registry[type[Sink]] = Registry("logger")
REQUIREMENTS = "requirements-loggers.txt"
SNAPSHOT_TAG = "synset"  # the image of the set at each snapshot


class Sink(Callback):
    """A logger beside the run folder. Subclasses open, write scalars and images, and close; the hooks here choose
    what and when, and keep every failure away from the run (:meth:`_guard`)."""

    package = ""  # the pip package it needs
    label = ""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.failed = False

    # what a sink writes
    def open(self, d) -> None:
        """Start logging for the Distiller ``d`` (``d.step`` > 0 on resume)."""

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def image(self, step: int, tag: str, image) -> None:
        """``image``: (H, W, 3) uint8 numpy array."""

    def close(self, state: str) -> None: ...

    # the engine's hooks
    def on_start(self, d) -> None:
        self._guard(self.open, d)

    def on_step(self, d, step: int, logs: dict) -> None:
        if RF.logs_step(step, d.cfg.log_every, d.cfg.iterations):
            self._guard(self.scalars, step, step_scalars(logs))

    def on_eval(self, d, step: int, results: dict) -> None:
        self._guard(self.scalars, step, eval_scalars(results))

    def on_snapshot(self, d, step: int) -> None:
        self._guard(lambda: self.image(step, SNAPSHOT_TAG, snapshot_image(d.synset)))

    def on_end(self, d, state: str, error: str | None) -> None:
        self._guard(self.close, state)

    def _guard(self, write: Callable[..., None], *args: Any) -> None:
        """``write(*args)`` unless the sink has failed; its first failure is said once and switches it off."""
        if self.failed:
            return
        try:
            write(*args)
        except Exception as e:  # a sink never fails the run
            self.failed = True
            print(
                f"warning: {self.label} logging stopped ({type(e).__name__}: {e}); the run goes on, and its run folder "
                f"keeps every metric.{install_hint(self.package) if isinstance(e, ImportError) else ''}",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(Exception):
                self.close("failed")


def step_scalars(logs: dict) -> dict[str, float]:
    """A step's logs (``metrics.jsonl``'s line without ``step``) as named numbers."""
    return {
        k: float(v) for k, v in logs.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def eval_scalars(results: dict) -> dict[str, float]:
    """An in-run evaluation as ``eval/<net>/mean`` and ``eval/<net>/std`` accuracies in [0, 1]."""
    out = {}
    for net, r in results.get("nets", {}).items():
        out.update({f"eval/{net}/{k}": float(r[k]) for k in ("mean", "std") if r.get(k) is not None})
    return out


def snapshot_image(synset):
    """The set at a glance as (H, W, 3) uint8, as the Live run page shows it: one row per class."""
    import numpy as np

    from workbench.grids import overview_image  # numpy + PIL only; imported when a snapshot is drawn

    return np.asarray(overview_image(synset, max_per_class=15, scale=2).convert("RGB"))


def install_hint(package: str) -> str:
    return f" Install it with `pip install {package}` (every sink: `pip install -r {REQUIREMENTS}`)."


def missing_packages(names: Iterable[str]) -> list[str]:
    """For each sink in ``names`` whose package is not installed here, a sentence saying what to install."""
    sinks = [SINKS.get(name) for name in dict.fromkeys(names)]
    return [
        f"Logging to {s.label} needs the {s.package} package.{install_hint(s.package)}"
        for s in sinks
        if importlib.util.find_spec(s.package) is None
    ]


def require(names: Iterable[str]) -> None:
    """Refuse, before a run starts, sinks whose package is not installed here, saying what to install."""
    problems = missing_packages(names)
    if problems:
        raise ConfigError(" ".join(problems))


def create_sinks(names: Iterable[str], run_dir: str | Path) -> list[Sink]:
    """One sink per name (each once), writing under ``run_dir``."""
    return [SINKS.get(name)(run_dir) for name in dict.fromkeys(names)]


@SINKS.register("tensorboard", help="event files under <run>/tensorboard/; view with tensorboard --logdir runs")
class TensorBoardSink(Sink):
    package = "tensorboard"
    label = "TensorBoard"

    def open(self, d) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run (from the checkpoint at d.step): TensorBoard hides what the stopped process logged after it
        purge = d.step + 1 if d.step else None
        self.writer = SummaryWriter(str(self.run_dir / RF.TENSORBOARD), purge_step=purge, flush_secs=10)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, step: int, tag: str, image) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self, state: str) -> None:
        if getattr(self, "writer", None) is not None:
            self.writer.close()


@SINKS.register("wandb", help="an offline W&B run under <run>/wandb/; nothing is sent, wandb sync uploads it")
class WandbSink(Sink):
    package = "wandb"
    label = "W&B"

    def open(self, d) -> None:
        # offline whatever the environment says, and no error reports or telemetry either: nothing leaves the machine
        # (wandb's service process reads these too)
        os.environ.update(WANDB_MODE="offline", WANDB_ERROR_REPORTING="false")
        import wandb

        settings = wandb.Settings(mode="offline", console="off", silent=True, disable_git=True, save_code=False)
        self.run = wandb.init(
            mode="offline",  # never online, whatever WANDB_MODE says
            dir=str(self.run_dir),
            project="haba",
            name=self.run_dir.name,
            group=self.run_dir.name,  # a resumed run's processes, one W&B run each
            config=d.cfg.to_dict(),
            reinit="create_new",
            settings=settings,
        )

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def image(self, step: int, tag: str, image) -> None:
        import wandb

        self.run.log({tag: wandb.Image(image)}, step=step)

    def close(self, state: str) -> None:
        if getattr(self, "run", None) is not None:
            self.run.finish(exit_code=0 if state == "finished" else 1)
            self.run = None
