"""Executors: in-process, process pool and Ray; retries, failures, dead workers, and an evaluation over Ray."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from haba_core import io
from haba_core.errors import ConfigError
from haba_core.executors import InlineExecutor, LocalExecutor, Task, make_executor, run_tasks

# -- task functions: top level, so process pools (spawn) and Ray can import or pickle them --------------------


def square(x: int) -> int:
    return x * x


def fail_always(x: int) -> int:
    raise ValueError(f"bad input {x}")


def fail_once(marker: str, x: int) -> int:
    """Raises on the first call (any process), succeeds afterwards: a marker file remembers."""
    p = Path(marker)
    if not p.exists():
        p.write_text("failed once")
        raise RuntimeError("transient failure")
    return x + 100


def die_once(marker: str, x: int) -> int:
    """Kills its worker process on the first call, as the OOM killer would."""
    p = Path(marker)
    if not p.exists():
        p.write_text("died once")
        os._exit(7)
    return x + 1000


def die_always(x: int) -> int:
    os._exit(9)


def write_pid_and_wait(pidfile: str) -> None:
    Path(pidfile).write_text(str(os.getpid()))
    time.sleep(120)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# -- in process ----------------------------------------------------------------------------------------------


def test_inline_executor_results_retries_and_failures(tmp_path):
    seen = []
    tasks = [Task("a", (2,)), Task("flaky", (str(tmp_path / "m"), 1)), Task("b", (3,))]
    ex = InlineExecutor()
    out = ex.map(square, [tasks[0], tasks[2]], on_result=seen.append)
    assert [r.value for r in out] == [4, 9] and [r.id for r in seen] == ["a", "b"]
    assert all(r.ok and r.attempts == 1 and r.worker for r in out)

    logs = []
    (r,) = ex.map(fail_once, [tasks[1]], retries=1, log=logs.append)
    assert r.ok and r.value == 101 and r.attempts == 2 and "retrying" in logs[0]

    out = run_tasks(fail_always, [Task("x", (1,)), Task("y", (2,))], retries=2)
    assert [(r.ok, r.attempts) for r in out] == [(False, 3), (False, 3)]
    assert "ValueError: bad input 1" in out[0].error
    assert out[0].to_dict()["error"] == out[0].error

    with pytest.raises(ValueError, match="unique"):
        ex.map(square, [Task("a", (1,)), Task("a", (2,))])


def test_make_executor_choices():
    assert isinstance(make_executor("local", workers=1), InlineExecutor)
    ex = make_executor("local", workers=2, threads=1)
    assert isinstance(ex, LocalExecutor) and ex.describe() == {
        "kind": "local",
        "workers": 2,
        "threads": 1,
        "processes": True,
    }
    ex.close()
    with pytest.raises(ConfigError, match="Unknown executor"):
        make_executor("slurm")
    with pytest.raises(ConfigError, match="--address"):
        make_executor("local", address="auto")


# -- process pool --------------------------------------------------------------------------------------------


def test_local_pool_survives_dead_workers(tmp_path):
    """Two processes: a task error is retried, a worker killed mid-task breaks the pool, which is rebuilt and
    the task retried; a task that always kills its worker is reported, and the others still finish."""
    tasks = [Task(f"sq{i}", (i,)) for i in range(4)]
    with LocalExecutor(workers=2, threads=1) as ex:
        out = ex.map(square, tasks)
        assert [r.value for r in out] == [0, 1, 4, 9]
        assert len({r.worker for r in out}) >= 1 and all(":" in r.worker for r in out)
        (th,) = ex.map(torch_threads, [Task("t")])
        assert th.value == 1

        logs: list[str] = []
        out = ex.map(die_once, [Task("die", (str(tmp_path / "d"), 1))], retries=1, log=logs.append)
        assert out[0].ok and out[0].value == 1001 and out[0].attempts == 2
        assert any("process pool" in m for m in logs)

        out = ex.map(fail_once, [Task("f", (str(tmp_path / "f"), 2))], retries=1)
        assert out[0].ok and out[0].value == 102

        seen = []
        out = ex.map(die_always, [Task("doomed", (0,))], retries=1, on_result=seen.append)
        assert not out[0].ok and out[0].attempts == 2 and "died" in out[0].error and seen == out
        out = ex.map(square, [Task("after", (5,))])  # the pool works again afterwards
        assert out[0].value == 25


def _gone(pid: int, within: float = 15.0) -> bool:
    """Whether process ``pid`` has ended (or is a zombie) within ``within`` seconds."""
    t0 = time.time()
    while time.time() - t0 < within:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.2)
    return False


def _start_and_kill(script: str, pidfile: Path) -> int:
    """Run ``script`` in a Python process, wait for ``pidfile`` (written by a process it starts), kill the script's
    process with SIGKILL (no handler can run) and return the pid in ``pidfile``."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=root)
    try:
        t0 = time.time()
        while not (pidfile.exists() and pidfile.read_text()) and time.time() - t0 < 60 and parent.poll() is None:
            time.sleep(0.2)
        assert pidfile.exists(), f"the script's worker never started (rc {parent.poll()})"
    finally:
        parent.kill()
        parent.wait()
    return int(pidfile.read_text())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_pool_worker_ends_with_the_process_that_started_it(tmp_path):
    """A process pool whose driver is killed outright does not leave its workers training on."""
    pidfile = tmp_path / "worker.pid"
    script = (
        "from haba_core.executors import LocalExecutor, Task\n"
        "from test_executors import write_pid_and_wait\n"
        "with LocalExecutor(workers=1, threads=1) as ex:\n"
        f"    ex.map(write_pid_and_wait, [Task('w', ({str(pidfile)!r},))])\n"
    )
    worker = _start_and_kill(script, pidfile)
    assert _gone(worker), "the pool's worker outlived its driver"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_bench_cell_process_ends_with_the_run_that_started_it(tmp_path):
    """bench.run starts each cell with its own pid in the environment; a cell asks to end with that process
    (``bench.cell.child``), so a study killed outright takes its cells along."""
    pidfile = tmp_path / "cell.pid"
    cell = (
        "import os, time\n"
        "from bench.cell import PARENT_ENV\n"
        "from haba_core.executors import die_with_parent\n"
        "die_with_parent(int(os.environ[PARENT_ENV]))\n"
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from bench.run import _Job\n"
        f"_Job('c', [sys.executable, '-c', {cell!r}], Path({str(tmp_path / 'c.log')!r}), 1)\n"
        "time.sleep(120)\n"
    )
    cell_pid = _start_and_kill(script, pidfile)
    assert _gone(cell_pid), "the cell outlived the run that started it"


def test_a_process_whose_parent_is_already_gone_ends_at_once():
    code = "from haba_core.executors import die_with_parent\ndie_with_parent(1)\nimport time; time.sleep(30)"
    rc = subprocess.run([sys.executable, "-c", code], timeout=60).returncode  # its parent is not pid 1
    assert rc == (-signal.SIGTERM if sys.platform.startswith("linux") else 0)


# -- Ray -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_executor():
    """A local Ray on 2 CPUs with its files in a short temporary folder (Ray's socket paths are length-limited)."""
    pytest.importorskip("ray")
    from ray import cloudpickle

    from haba_core.ray_executor import RayExecutor

    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this test module is not importable there
    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    ex = RayExecutor(num_cpus=2, temp_dir=tmp)
    try:
        yield ex
    finally:
        ex.close()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        if old is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old
        shutil.rmtree(tmp, ignore_errors=True)


def test_ray_executor_retries_and_reports(ray_executor, tmp_path):
    ex = ray_executor
    assert ex.describe()["kind"] == "ray" and ex.describe()["cluster_cpus"] == 2
    tasks = [
        Task("sq3", (3,)),
        Task("flaky", (str(tmp_path / "f"), 1)),
        Task("dies", (str(tmp_path / "d"), 2)),
        Task("bad", (7,)),
    ]
    fns = {"sq3": square, "flaky": fail_once, "dies": die_once, "bad": fail_always}
    seen = []
    out = ex.map(_dispatch, [Task(t.id, (fns[t.id], *t.args)) for t in tasks], retries=1, on_result=seen.append)
    by_id = {r.id: r for r in out}
    assert by_id["sq3"].value == 9 and by_id["sq3"].attempts == 1
    assert by_id["flaky"].ok and by_id["flaky"].value == 101 and by_id["flaky"].attempts == 2
    assert by_id["dies"].ok and by_id["dies"].value == 1002 and by_id["dies"].attempts == 2
    assert not by_id["bad"].ok and by_id["bad"].attempts == 2 and "bad input 7" in by_id["bad"].error
    assert sorted(r.id for r in seen) == sorted(by_id)


def _dispatch(fn, *args):
    return fn(*args)


def test_evaluation_over_ray_lands_in_the_run_folder(ray_executor, tmp_path, monkeypatch):
    """The same cells and evaluation.json as a local evaluation, computed by Ray workers, and every task's test
    evaluation in the ledger (written by the driver, where the results land)."""
    from haba_core.config import RunConfig
    from haba_core.evaluate import evaluate_run
    from haba_core.ledger import LEDGER_ENV
    from tests.test_evaluate import make_run

    monkeypatch.setenv(LEDGER_ENV, str(tmp_path / "ledger.jsonl"))
    run = make_run(tmp_path / "run")
    cfg = RunConfig.from_dict(io.read_json_strict(run / "config.json"))
    ecfg = RunConfig.from_dict({**cfg.to_dict(), "eval": {"nets": ["mlp", "lenet"], "seeds": 2, "epochs": 1}}).eval
    ev = evaluate_run(run, cfg, ecfg, run / "synset.safetensors", baseline="random", executor=ray_executor, log=None)
    assert ev["complete"] and ev["executor"]["kind"] == "ray"
    for source in ("synset", "random_real"):
        assert set(ev[source]["nets"]) == {"mlp", "lenet"} and ev[source]["nets"]["mlp"]["n"] == 2
        cells = list((run / ev[source]["cells"]).glob("*_s*.json"))
        assert len(cells) == 4
        assert all(io.read_json_strict(c)["worker"].split(":")[1] != str(os.getpid()) for c in cells)  # ran elsewhere
    assert (run / "evaluation.json").exists() and (run / "eval" / "matrix.csv").exists()
    recorded = io.read_jsonl_strict(tmp_path / "ledger.jsonl")
    assert sum(r["networks"] for r in recorded) == 8 and {r["kind"] for r in recorded} == {"haba", "random_real"}


def test_experts_over_ray_land_in_the_expert_folder(ray_executor, tmp_path):
    """MTT expert trajectories fanned out over Ray; identical to experts trained here (same seeds)."""
    import torch

    from haba_core.methods.expert_set import ExpertSet
    from haba_core.methods.experts import resolve_expert_config, train_experts

    cfg = resolve_expert_config(
        ["net.width=8", "train_limit=100", "test_limit=50", "data_options.im_size=12"],
        dataset="toy",
        epochs=2,
        batch=64,
    )
    paths = train_experts(cfg, tmp_path / "ray", 2, log=None, executor=ray_executor)
    assert all(p.exists() for p in paths) and len(ExpertSet(tmp_path / "ray")) == 2
    train_experts(cfg, tmp_path / "here", 1, log=None)
    # same seed, same batches; only the thread count differs (Ray tasks run one thread each)
    torch.testing.assert_close(
        ExpertSet(tmp_path / "ray").trajectory(0), ExpertSet(tmp_path / "here").trajectory(0), rtol=1e-4, atol=1e-5
    )


def test_expert_task_returns_the_file_when_the_folder_is_elsewhere(tmp_path):
    """A worker on another machine (it cannot see the expert folder) sends the finished file back."""
    from haba_core.methods.experts import _expert_task, expert_path, resolve_expert_config

    cfg = resolve_expert_config(
        ["net.width=8", "train_limit=100", "test_limit=50", "data_options.im_size=12"],
        dataset="toy",
        epochs=1,
        batch=64,
    )
    out = _expert_task(cfg.to_dict(), 0, str(tmp_path / "not_here"))
    assert out["index"] == 0 and out["data"][:8] and not expert_path(tmp_path / "not_here", 0).exists()
    path = tmp_path / "expert_0000.safetensors"
    path.write_bytes(out["data"])
    assert io.load_tensors(path)[1]["complete"] is True
