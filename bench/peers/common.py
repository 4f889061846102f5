"""What every peer needs to run here, and the one shape its measurement comes back in.

A peer is another project's training script (the official HaBa code, DatasetCondensation, mtt-distillation) run
from a checkout the user fetched. Nothing of it is copied into this repository: a peer module of this package
imports the checkout's own modules, applies the *runtime help* it lists (each item one line of the result, so the
table can print what was done to make the script run here), runs the script's ``__main__`` with ``runpy`` and
times its outer iterations from a hook the script already calls once per iteration. The help may set up data,
replace wandb, skip periodic evaluation and saving, and fix what today's torch refuses; it never changes the
arithmetic of the step being timed.

A peer module is run as ``python -m bench.peers.<module> --row ROW --checkout PATH --json OUT [...]`` (one process a
row, so each row starts from a fresh heap and its own thread count) and writes :func:`write_result`'s JSON.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import os
import runpy
import shutil
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def parse_args(description: str, rows: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--row", required=True, choices=rows)
    p.add_argument("--checkout", required=True, help="the peer's checkout (git clone of its repository)")
    p.add_argument("--json", required=True, help="where the measurement goes")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (match the row of ours)")
    p.add_argument("--warmup", type=int, default=2, help="outer iterations run before the timed ones")
    p.add_argument("--iterations", type=int, default=5, help="timed outer iterations")
    p.add_argument("--flops", action="store_true", help="count one more iteration's FLOPs (torch's counter)")
    p.add_argument("--workdir", help="scratch folder for the peer's data and outputs (default: a temporary one)")
    return p.parse_args()


class StepClock:
    """Marks taken at the start of every outer iteration; the differences are the iterations' wall seconds. With
    ``count_flops_at`` set, the iteration between that mark and the next runs under torch's FLOP counter (that
    iteration is not timed: the counter slows it)."""

    def __init__(self, count_flops_at: int | None = None) -> None:
        self.marks: list[float] = []
        self.count_flops_at = count_flops_at
        self.flops: int | None = None
        self._counter = None

    def mark(self) -> None:
        now = time.perf_counter()
        if self._counter is not None:  # the counted iteration ends here
            self._counter.__exit__(None, None, None)
            self.flops = int(self._counter.get_total_flops())
            self._counter = None
            now = time.perf_counter()
        self.marks.append(now)
        if self.count_flops_at is not None and len(self.marks) == self.count_flops_at + 1:
            from torch.utils.flop_counter import FlopCounterMode

            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
            self.marks.append(float("nan"))  # the counted iteration has no time

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


class StopPeer(Exception):
    """Raised from a hook to end the peer's script once the measured iterations are done."""


def hooked(fn: Callable, before: Callable[[], None]) -> Callable:
    """``fn`` with ``before()`` called first on every call."""

    def wrapper(*args, **kwargs):
        before()
        return fn(*args, **kwargs)

    wrapper.__wrapped__ = fn
    return wrapper


def fake_wandb(on_log: Callable[[dict], None] | None = None) -> types.ModuleType:
    """A ``wandb`` module that records nothing (runtime help: the peers log to wandb's servers). ``init(config=)``
    keeps the config as ``wandb.config._items``, which the peers read their arguments back from; ``on_log`` sees
    every ``wandb.log`` dict (the peers log ``{"Progress": it}`` at the start of each iteration)."""
    mod = types.ModuleType("wandb")

    class Config:
        def __init__(self) -> None:
            self._items: dict = {}

    mod.config = Config()
    mod.run = types.SimpleNamespace(name="peer")

    def init(*_, config=None, **__):
        mod.config._items = (
            dict(vars(config)) if config is not None and not isinstance(config, dict) else dict(config or {})
        )
        return mod.run

    def log(d, *_, **__):
        if on_log is not None:
            on_log(d)

    mod.init, mod.log, mod.finish = init, log, lambda *a, **k: None
    mod.Image = mod.Histogram = lambda *a, **k: None
    sys.modules["wandb"] = mod
    return mod


def fashion_mnist_root(dst: Path, source: Path = SYSTEM_FASHION_MNIST) -> Path:
    """``dst`` laid out as torchvision's ``FashionMNIST(dst, download=True)`` expects, from the system's files: real
    Fashion-MNIST, found by the peer's own loader, no download. The archives are unpacked into
    ``FashionMNIST/raw``: torchvision reads unpacked files when they exist; finding only archives, it checks them
    against the originals' md5 sums, which Debian's recompressed archives (the same images) fail, and downloads."""
    raw = dst / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        if not (source / name).is_file():
            raise SystemExit(f"{source / name} is missing: install Debian's dataset-fashion-mnist (make setup does)")
        target = raw / name.removesuffix(".gz")
        if not target.exists():
            with gzip.open(source / name, "rb") as src, open(target.with_suffix(".part"), "wb") as out:
                shutil.copyfileobj(src, out)
            target.with_suffix(".part").replace(target)
    return dst


def checkout_first(checkout: Path) -> None:
    """Put the checkout first on ``sys.path``, once: the peers' scripts import their own modules by bare name
    (``from utils import ...``), as they do when started from their folder. The one place this package (or any
    other) edits ``sys.path``."""
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))


def import_checkout_module(checkout: Path, name: str) -> types.ModuleType:
    """The checkout's module ``name``, imported the way their scripts import it (checkout first on ``sys.path``), so
    that the script's ``from utils import ...`` later finds this very module, with what was patched on it."""
    checkout_first(checkout)
    module = importlib.import_module(name)
    where = Path(module.__file__).resolve()
    if where.parent != checkout.resolve():  # another module of that name came first: the patches would miss the script
        raise SystemExit(f"`{name}` resolves to {where}, not the checkout's {name}.py")
    return module


def run_script(checkout: Path, script: str, argv: list[str], cwd: Path) -> None:
    """Run ``checkout/script`` as ``__main__`` with ``argv``, in ``cwd`` (where it writes its outputs), with the
    checkout first on ``sys.path``; a :class:`StopPeer` from a hook ends it quietly."""
    checkout_first(checkout)
    sys.argv = [script, *argv]
    old = Path.cwd()
    os.chdir(cwd)
    try:
        runpy.run_path(str(checkout / script), run_name="__main__")
    except StopPeer:
        pass
    finally:
        os.chdir(old)


def checkout_commit(checkout: Path) -> str:
    """The checkout's commit, ``+dirty`` when one of its tracked Python files differs from it (what runs is its
    code: a checkout whose pictures or docs failed to check out still runs that commit), or ``unknown``."""
    try:
        git = ["git", "-C", str(checkout)]
        sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        diff = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "*.py"], capture_output=True)
        return sha + ("+dirty" if diff.returncode != 0 else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_result(
    path: str | Path,
    *,
    peer: str,
    row: str,
    checkout: Path,
    script: str,
    argv: list[str],
    clock: StepClock,
    warmup: int,
    runtime_help: list[str],
    settings: dict,
    threads: int,
    extra: dict | None = None,
) -> dict:
    """The measurement: the timed iterations (after ``warmup``; the FLOP-counted one left out), their median, the
    FLOPs of one iteration when counted, and what was done to run the peer (``runtime_help``); ``extra`` adds or
    replaces keys (a row's own detail)."""
    steps = [s for s in clock.steps()[warmup:] if s == s]  # nan: the counted iteration
    result = {
        "peer": peer,
        "row": row,
        "checkout": str(checkout),
        "commit": checkout_commit(checkout),
        "script": script,
        "argv": argv,
        "threads": threads,
        "settings": settings,
        "runtime_help": runtime_help,
        "steps_s": [round(s, 4) for s in steps],
        "median_s": statistics.median(steps) if steps else None,
        "flops": clock.flops,
        **(extra or {}),
    }
    Path(path).write_text(json.dumps(result, indent=1))
    return result
