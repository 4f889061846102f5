"""Tiny real run folders for tests, demos and screenshots, made by the engine itself (seconds on a CPU).

``make_run`` distills the generated ``toy`` dataset for a few iterations into a run folder; ``make_failed_run``
makes the engine fail mid-run (so the folder records a genuine failure); ``add_evaluation`` runs
``python -m haba_core evaluate`` in-process for one short epoch; ``bench_tree`` lays copies of a run where the bench,
its demo and the studies put theirs; ``fake_findings`` writes made-up results of the findings studies for the Findings
page.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
    from haba_core import runfolder as RF
    from haba_core.cli import main

    args = ["evaluate", "--run", str(path), "--nets", nets, "--seeds", "1", "--epochs", "1"]
    if baseline:
        args += ["--baseline", "random"]
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    if code != 0:
        raise RuntimeError(f"evaluate exited with {code}")
    return hio.read_json_strict(Path(path) / RF.EVALUATION)


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


def bench_tree(repo: Path, run: Path) -> Path:
    """Copies of the run folder ``run`` in a repository-like folder ``repo``, where the bench, its demo and the studies
    put theirs (``workbench.catalog``): ``runs/demo/runs/ipc1_dm_haba/run``,
    ``bench/results/cpu/runs/ipc10_dm_haba/run`` and ``bench/results/findings/frontier/runs/ipc1_haba__s0/run``; of
    the frontier's ``ipc1_haba__s1`` only its kept set and its record (``sets/``, ``cells/``), as on a machine that did
    not distill it. Returns ``repo``."""
    import json
    import shutil

    from haba_core import runfolder as RF

    repo = Path(repo)
    results = repo / "bench" / "results"
    cells = {
        repo / "runs" / "demo": "ipc1_dm_haba",
        results / "cpu": "ipc10_dm_haba",
        results / "findings" / "frontier": "ipc1_haba__s0",
    }
    for out, cell in cells.items():
        (out / "cells").mkdir(parents=True, exist_ok=True)  # what bench.run makes first
        shutil.copytree(run, out / "runs" / cell / "run")
    frontier = results / "findings" / "frontier"
    (frontier / "sets").mkdir()
    shutil.copyfile(RF.synset_path(run), frontier / "sets" / "ipc1_haba__s1.safetensors")
    config, storage = (json.loads((Path(run) / f).read_text()) for f in (RF.CONFIG, RF.STORAGE))
    record = {"config": config, "storage": storage, "iterations": config["iterations"], "sec_per_iter": 0.01}
    (frontier / "cells" / "ipc1_haba__s1.json").write_text(json.dumps(record))
    return repo


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served_app(app: Path | str, cwd: Path | str, env: dict, log_path: Path) -> Iterator[tuple[str, object]]:
    """``streamlit run APP`` headless on 127.0.0.1 at a free port, its output in ``log_path``: yields its URL and
    process once it answers its health check, and stops it on leaving (browser tests and the bench's measurements
    of the app)."""
    import subprocess
    import sys

    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port)]
    command += ["--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_healthy(url, proc, log_path)
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_until_healthy(url: str, proc, log_path: Path, timeout: float = 60.0) -> None:
    """Wait for a ``streamlit run`` server at ``url`` to answer its health check; raise with its log if it
    exits or stays silent for ``timeout`` seconds."""
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


def _fake_arm(name: str, budget: float, tags: dict, means: dict[str, float] | None, floats: int = 0) -> dict:
    """One arm as ``bench.study_report.report`` writes it; ``means`` None: no finished seed (its search pending)."""
    arm = {"arm": name, "budget": budget, "kind": "haba", "tags": tags, "overrides": [], "search": None}
    arm.update(shape=[] if means else None, n_seeds=3 if means else 0, seeds=[0, 1, 2] if means else [], per_net={})
    arm.update(pending_search=not means, setting="-" if means else "pending search", expected_seeds=3, borrowed_from="")
    if means:
        arm.update(floats=floats, ipc_equivalent=floats / 7840, images_per_class=int(budget), protocol={"id": "fake"})
        for net, m in means.items():
            sets = [m - 0.5, m, m + 0.5]
            arm["per_net"][net] = dict(mean=m, std_seeds=0.5, std_nets=0.8, set_means=sets, n_seeds=3, n_nets=3)
    return arm


def fake_findings(root: Path) -> Path:
    """Fabricated findings (made-up numbers, not measurements) in the schemas of ``bench.study_report.report`` and the
    diversity study, for the Findings page's tests and screenshots: the frontier with one arm still pending, the
    cross-architecture, constraint and diversity studies complete."""
    import json

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    head = {"git_commit": "0123456789abcdef", "cell_commits": ["0123456789ab"], "machine": {"cpu": "fake"}}
    head.update(protocols=["plain-300ep-dsa-bf16 (fake)"], distill_seeds=[0, 1, 2], eval_seeds=3, searches={})

    def study(name: str, arms: list[dict], nets: list[str]) -> dict:
        complete = all(a["n_seeds"] == 3 for a in arms)
        out = {
            "study": name,
            "question": f"{name}: a fabricated question",
            "command": f"python -m bench.studies {name}",
        }
        return {**out, **head, "nets": nets, "arms": arms, "complete": complete}

    kinds = {"random_real": ("random real", 60.0), "pixels": ("pixels", 65.0), "haba": ("HaBa", 70.0)}
    frontier = [
        _fake_arm(f"ipc{b}_{k}", b, {"kind": tag}, {"convnet": acc + 5 * b}, 7840 * b)
        for b in (1, 2)
        for k, (tag, acc) in kinds.items()
    ]
    frontier.append(_fake_arm("ipc2_fred", 2, {"kind": "FreD"}, None))
    nets = ["convnet", "resnet18", "vgg11", "alexnet", "lenet", "mlp"]
    per_net = {k: {n: acc - 3 * i for i, n in enumerate(nets)} for k, (_, acc) in kinds.items()}
    cross = [
        _fake_arm(f"ipc1_{k}", 1, {"kind": tag}, {n: v for n, v in per_net[k].items() if n != "resnet18"}, 7840)
        for k, (tag, _) in kinds.items()
    ]
    resnet18 = [  # its own study, as in bench.studies: the IPC-1 sets on ResNet18 (convnet merged from the frontier)
        _fake_arm(f"ipc1_{k}", 1, {"kind": tag}, {n: per_net[k][n] for n in nets[:2]}, 7840)
        for k, (tag, _) in kinds.items()
        if k != "haba"
    ]
    comparison = {"label": "HaBa - pixels", "arm": "ipc1_haba", "baseline": "ipc1_pixels", "net": "mlp", "diff": 5.0}
    comparison.update(se=0.41, n=[3, 3])
    constraint = [
        _fake_arm("ipc1_haba", 1, {"factor": "chosen", "value": "chosen"}, {"convnet": 70.0}, 7840),
        _fake_arm("ipc1_lambda0", 1, {"factor": "constraint weight", "value": 0.0}, {"convnet": 68.0}, 7840),
        _fake_arm("ipc1_k2", 1, {"factor": "hallucinators", "value": 2}, {"convnet": 69.0}, 7840),
        _fake_arm("ipc1_frozen", 1, {"factor": "hallucinators learned", "value": False}, {"convnet": 66.0}, 7840),
        _fake_arm("ipc10_haba", 10, {"factor": "chosen", "value": "chosen"}, {"convnet": 80.0}, 78400),
        _fake_arm("ipc10_lambda0", 10, {"factor": "constraint weight", "value": 0.0}, {"convnet": 79.0}, 78400),
    ]
    rows = [
        {"study": "frontier", "arm": f"ipc1_{k}", "seed": s, "kind": tag, "budget": 1.0, "accuracy": acc + s}
        | {"metrics": {"pixel_within": 0.1 * (i + 1) + 0.01 * s}}
        for i, (k, (tag, acc)) in enumerate(kinds.items())
        for s in (0, 1, 2)
    ]
    steps = [{"study": "frontier", "arm": "ipc1_haba", "seed": 0, "step": t} for t in (0, 100, 200)]
    diversity = {
        "study": "diversity",
        "question": "diversity: a fabricated question",
        "command": "python -m bench.studies diversity",
        "git_commit": "0123456789abcdef",
        "metrics": {"pixel_within": "RMS pixel distance between the images of one class"},
        "rows": rows,
        "real": [{"n_per_class": 10, "metrics": {"pixel_within": 0.5}}],
        "over_steps": [{**r, "metrics": {"pixel_within": r["step"] / 1000}} for r in steps],
        "correlation": {
            "pixel_within": {"spearman": 0.9, "n": len(rows), "by_budget": {"1": {"spearman": -0.5, "n": len(rows)}}}
        },
    }
    for name, data in (
        ("frontier", study("frontier", frontier, ["convnet"])),
        ("cross_arch", study("cross_arch", cross, nets[:1] + nets[2:]) | {"comparisons": [comparison]}),
        ("cross_arch_resnet18", study("cross_arch_resnet18", resnet18, nets[:2])),
        ("constraint", study("constraint", constraint, ["convnet"])),
        ("diversity", diversity),
    ):
        (root / f"{name}.json").write_text(json.dumps(data, indent=1))
    return root
