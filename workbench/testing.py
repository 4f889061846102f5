"""Tiny real run folders for tests, demos and screenshots, made by the engine itself (seconds on a CPU).

``make_run`` distills the generated ``toy`` dataset for a few iterations into a run folder; ``make_failed_run``
makes the engine fail mid-run (so the folder records a genuine failure); ``add_evaluation`` runs
``python -m haba_core evaluate`` in-process for one short epoch.
"""

from __future__ import annotations

from pathlib import Path

# The one set of tiny settings: the test suite (tests/conftest.py), the app's tests and demos all use it.
TINY = (
    "data.name=toy",
    "net.width=16",
    "method.batch_real=16",
    "haba.extractor_width=16",
    "haba.batch=32",
    "iterations=4",
    "snapshot_every=2",
    "checkpoint_every=2",
    "synset.budget_ipc=2",
    "synset.n_hallucinators=2",
    "eval.epochs=1",
    "eval.seeds=1",
    "eval.test_batch=200",
)
# the same as command-line overrides (what a user would type into the New-run page's override box)
TINY_SET_LINES = [t for t in TINY if not t.startswith(("data.name", "iterations", "eval."))]


def tiny_config(*overrides: str):
    from haba_core.config import resolve_config

    return resolve_config(overrides=list(TINY) + list(overrides))


def make_run(path: Path, *overrides: str) -> Path:
    """Distill a tiny toy run into ``path`` (finished, with snapshots, checkpoints and metrics)."""
    from haba_core.engine import distill

    distill(tiny_config(*overrides), path)
    return Path(path)


class _Boom:
    """A callback that breaks the run at ``step`` (a real failure recorded by the engine)."""

    def __init__(self, step: int, message: str):
        self.step, self.message = step, message

    def __getattr__(self, name):
        return lambda *a, **k: None

    def on_step(self, d, step, logs):
        if step >= self.step:
            raise RuntimeError(self.message)


def make_failed_run(path: Path, step: int = 2, message: str = "simulated failure for the test") -> Path:
    """A run the engine marks ``failed`` at ``step`` with ``message`` and its traceback."""
    from haba_core.engine import distill

    try:
        distill(tiny_config("iterations=6"), path, callbacks=[_Boom(step, message)])
    except RuntimeError:
        pass
    return Path(path)


def add_evaluation(path: Path, nets: str = "convnet", baseline: bool = True) -> dict:
    """Evaluate a run in-process (``python -m haba_core evaluate``, one seed, one epoch); returns evaluation.json."""
    import contextlib
    import io

    from haba_core import io as hio
    from haba_core.cli import main

    args = ["evaluate", "--run", str(path), "--nets", nets, "--seeds", "1", "--epochs", "1"]
    if baseline:
        args += ["--baseline", "random"]
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    if code != 0:
        raise RuntimeError(f"evaluate exited with {code}")
    return hio.read_json(Path(path) / "evaluation.json")


def source_runs(base: Path) -> Path:
    """``base/wb_source_runs`` holding ``tiny`` (finished, evaluated) and ``failed``, made once per test session.

    Test modules copy it into their own runs folder (``shutil.copytree``) so that each test may change it.
    """
    root = Path(base) / "wb_source_runs"
    done = root / ".complete"
    if not done.exists():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        make_run(root / "tiny")
        add_evaluation(root / "tiny")
        make_failed_run(root / "failed", step=1)
        done.touch()
    return root


def wait_until_healthy(url: str, proc, log_path: Path, timeout: float = 60.0) -> None:
    """Wait for a ``streamlit run`` server at ``url`` to answer its health check; raise with its log if it
    exits or stays silent for ``timeout`` seconds (browser tests and scripts/watch_overhead.py)."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the app did not start:\n{Path(log_path).read_text()}") from None
            time.sleep(0.3)
