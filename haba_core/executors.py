"""Executors: run many independent tasks (evaluation cells, expert trajectories) here or on a Ray cluster.

One interface, three ways to run it::

    with make_executor("local", workers=2) as ex:        # "local", workers=1: in this process
        results = ex.map(fn, [Task("a", (1,)), Task("b", (2,))], retries=1, on_result=save)

- :class:`InlineExecutor` runs tasks one after another in the calling process (``local`` with one worker).
- :class:`LocalExecutor` runs them in ``workers`` spawned processes, each with ``cores // workers`` torch
  threads; a worker that dies (killed, out of memory) breaks the pool, which is rebuilt and the tasks that
  were in flight are retried.
- :class:`RayExecutor` fans them out over a Ray cluster (``address=None`` starts a local one); ``haba_core``
  travels with the tasks (``runtime_env.py_modules``), so cluster nodes need only torch and the data.

Tasks are plain data: ``fn`` must be a top-level (picklable) function and its arguments picklable; it
returns a picklable value. Nothing is written by the executor itself: the caller's ``on_result`` sees every
result in the driver process as soon as it arrives, which is where results are saved, so they land in the
same folder whichever executor (and machine) computed them. A task that raises (or whose worker dies) is
tried again up to ``retries`` times; after that its :class:`TaskResult` carries ``ok=False`` and the error,
and the other tasks go on.

Ray is an optional extra (``pip install -r requirements-ray.txt``); it is imported only by RayExecutor.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haba_core.errors import ConfigError, HabaError

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Task:
    """One unit of work: ``fn(*args, **kwargs)``; ``id`` names it in results, logs and errors (unique)."""

    id: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


@dataclass
class TaskResult:
    """What became of one task: its value, or (``ok=False``) the last error after ``attempts`` tries."""

    id: str
    ok: bool
    value: Any = None
    error: str | None = None
    attempts: int = 0
    seconds: float = 0.0  # wall time of the successful (or last) attempt, measured where it ran
    worker: str = ""  # host:pid that ran the successful (or last) attempt

    def to_dict(self) -> dict:
        return {"id": self.id, "ok": self.ok, "error": self.error, "attempts": self.attempts,
                "seconds": round(self.seconds, 3), "worker": self.worker}  # fmt: skip


OnResult = Callable[[TaskResult], None]
Log = Callable[[str], None]


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _format_error(e: BaseException) -> str:
    """One readable string: the exception line, then the innermost frames of its traceback."""
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    text = "".join(tb[-6:]).strip()
    return f"{type(e).__name__}: {e}\n{text}" if len(tb) > 1 else f"{type(e).__name__}: {e}"


def _call(fn: Callable, args: tuple, kwargs: dict, threads: int | None = None) -> tuple[Any, float, str]:
    """Run one task where it was sent; returns (value, seconds, worker). Exceptions propagate to the driver."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - t0, worker_name()


def _check_tasks(tasks: Iterable[Task]) -> list[Task]:
    tasks = list(tasks)
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"task ids must be unique; repeated: {', '.join(dup[:5])}")
    return tasks


class Executor:
    """Base class. Subclasses implement :meth:`map`; ``with`` closes what they started."""

    name = "base"

    def map(
        self,
        fn: Callable,
        tasks: Iterable[Task],
        *,
        retries: int = 0,
        on_result: OnResult | None = None,
        log: Log | None = None,
    ) -> list[TaskResult]:
        """Run ``fn`` on every task; results in task order. ``on_result`` is called in this process as each
        task finishes for good (succeeded, or failed ``retries + 1`` times)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """How tasks ran, for the records (kind, workers, threads, cluster address)."""
        return {"kind": self.name}

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Tracker:
    """Attempt bookkeeping shared by every executor: retry or finish, and report once."""

    def __init__(self, tasks: list[Task], retries: int, on_result: OnResult | None, log: Log | None):
        self.tasks = {t.id: t for t in tasks}
        self.retries = max(0, int(retries))
        self.on_result = on_result
        self.log = log
        self.attempts = {t.id: 0 for t in tasks}
        self.results: dict[str, TaskResult] = {}

    def started(self, task_id: str) -> None:
        self.attempts[task_id] += 1

    def success(self, task_id: str, value: Any, seconds: float, worker: str) -> None:
        self._finish(TaskResult(task_id, True, value, None, self.attempts[task_id], seconds, worker))

    def failure(self, task_id: str, error: str, worker: str = "", seconds: float = 0.0) -> bool:
        """Record a failed attempt; True when the task should be tried again."""
        n = self.attempts[task_id]
        if n <= self.retries:
            if self.log:
                first = error.splitlines()[0] if error else ""
                self.log(f"task {task_id} failed (attempt {n} of {self.retries + 1}), retrying: {first}")
            return True
        self._finish(TaskResult(task_id, False, None, error, n, seconds, worker))
        return False

    def _finish(self, r: TaskResult) -> None:
        self.results[r.id] = r
        if self.on_result:
            self.on_result(r)

    def ordered(self, tasks: list[Task]) -> list[TaskResult]:
        return [self.results[t.id] for t in tasks]


class InlineExecutor(Executor):
    """Tasks one after another in this process (no pickling, shares in-process caches). A task that kills
    the process cannot be retried here; use ``LocalExecutor`` (processes) for that."""

    name = "local"

    def map(self, fn, tasks, *, retries=0, on_result=None, log=None):
        tasks = _check_tasks(tasks)
        tr = _Tracker(tasks, retries, on_result, log)
        for t in tasks:
            while True:
                tr.started(t.id)
                t0 = time.perf_counter()
                try:
                    value, seconds, worker = _call(fn, t.args, t.kwargs)
                except Exception as e:  # noqa: BLE001 - reported in the task's result
                    if tr.failure(t.id, _format_error(e), worker_name(), time.perf_counter() - t0):
                        continue
                    break
                tr.success(t.id, value, seconds, worker)
                break
        return tr.ordered(tasks)

    def describe(self) -> dict:
        import torch

        return {"kind": "local", "workers": 1, "threads": torch.get_num_threads(), "processes": False}


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class LocalExecutor(Executor):
    """``workers`` spawned processes on this machine, ``threads`` torch threads each (default cores // workers).

    Uses the ``spawn`` start method (forking after OpenMP started is unsafe). A worker that dies breaks the
    whole pool (``BrokenProcessPool``): the pool is rebuilt and every task that was in flight counts one
    failed attempt, since which of them killed it cannot be known.
    """

    name = "local"

    def __init__(self, workers: int = 2, threads: int | None = None):
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self.workers = int(workers)
        self.threads = int(threads) if threads else max(1, available_cores() // self.workers)
        self._pool = None

    def _new_pool(self):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                   initargs=(self.threads,))  # fmt: skip

    def map(self, fn, tasks, *, retries=0, on_result=None, log=None):
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        tasks = _check_tasks(tasks)
        tr = _Tracker(tasks, retries, on_result, log)
        queue = list(tasks)  # waiting to be submitted, in order
        running: dict = {}  # future -> task
        if self._pool is None:
            self._pool = self._new_pool()
        while queue or running:
            while queue and len(running) < 2 * self.workers:  # a short queue keeps retries near the front
                t = queue.pop(0)
                tr.started(t.id)
                try:
                    running[self._pool.submit(_call, fn, t.args, t.kwargs)] = t
                except BrokenProcessPool:
                    queue.insert(0, t)
                    tr.attempts[t.id] -= 1
                    self._restart(log)
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                t = running.pop(fut)
                try:
                    value, seconds, worker = fut.result()
                except BrokenProcessPool as e:
                    broken = True
                    err = f"worker process died ({e or 'killed or out of memory'})"
                    if tr.failure(t.id, err):
                        queue.insert(0, t)
                except Exception as e:  # noqa: BLE001 - the task's own exception, re-raised from the worker
                    if tr.failure(t.id, _format_error(e)):
                        queue.insert(0, t)
                else:
                    tr.success(t.id, value, seconds, worker)
            if broken:
                # the futures still running are lost with the pool: each counts one failed attempt
                for fut, t in list(running.items()):
                    running.pop(fut)
                    if tr.failure(t.id, "worker process died while this task was in flight"):
                        queue.insert(0, t)
                self._restart(log)
        return tr.ordered(tasks)

    def _restart(self, log: Log | None) -> None:
        if log:
            log("a worker process died; starting a new process pool")
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    def describe(self) -> dict:
        return {"kind": "local", "workers": self.workers, "threads": self.threads, "processes": True}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _haba_core_dir() -> str:
    return str(Path(__file__).resolve().parent)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the address, when nothing listens at a ``host:port`` / ``ray://host:port`` cluster
    address (``ray.init`` would otherwise keep retrying for minutes). ``auto`` is left to Ray."""
    target = address.split("://", 1)[-1]
    if address == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"No Ray cluster answers at {address!r} ({e}). Start one (`ray start --head --node-ip-address "
            "127.0.0.1`) and use the address it prints, or clear the address to run on this machine."
        ) from e


class RayExecutor(Executor):
    """Tasks as Ray remote functions, ``cpus_per_task`` CPUs (and torch threads) each.

    ``address``: a running cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); ``None`` starts a
    local Ray with ``num_cpus`` CPUs (default: this machine's). When Ray is already initialized (a notebook,
    a test) it is used as it is and left running. ``haba_core`` is shipped to the workers with
    ``runtime_env={"py_modules": [...]}`` unless ``ship_code=False`` (then it must be importable there).
    Ray's own task retries are off: retries are counted here, the same way as for the local executors.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        cpus_per_task: int = 1,
        temp_dir: str | None = None,
        ship_code: bool = True,
        init_kwargs: dict | None = None,
    ):
        try:
            import ray
        except ImportError as e:
            raise HabaError(
                "The Ray executor needs Ray: pip install -r requirements-ray.txt (or use --executor local)."
            ) from e
        self.ray = ray
        self.address = address
        self.cpus_per_task = max(1, int(cpus_per_task))
        self._started = False
        runtime_env = {"py_modules": [_haba_core_dir()]} if ship_code else {}
        self._runtime_env = runtime_env
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, **(init_kwargs or {})}
            if address:
                _check_reachable(address)
                kw["address"] = address
            else:  # a local Ray instance: keep every socket on the loopback interface
                kw.setdefault("_node_ip_address", "127.0.0.1")
                if num_cpus:
                    kw["num_cpus"] = int(num_cpus)
            if temp_dir and not address:
                kw["_temp_dir"] = str(temp_dir)
            if runtime_env:
                kw["runtime_env"] = runtime_env
            # A local start on a busy machine can miss Ray's fixed 30 s node-startup deadline: try it twice.
            for attempt in range(1 if address else 2):
                try:
                    ray.init(**kw)
                    break
                except Exception as e:  # noqa: BLE001 - Ray raises many kinds; all mean the same to the user
                    ray.shutdown()
                    if attempt == 0 and not address:
                        continue
                    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                    raise HabaError(f"Could not connect to {where}: {e}") from e
            self._started = True
            self._runtime_env = {}  # set job-wide already

    def map(self, fn, tasks, *, retries=0, on_result=None, log=None):
        ray = self.ray
        tasks = _check_tasks(tasks)
        tr = _Tracker(tasks, retries, on_result, log)
        opts: dict[str, Any] = {"num_cpus": self.cpus_per_task, "max_retries": 0}
        if self._runtime_env:
            opts["runtime_env"] = self._runtime_env
        remote = ray.remote(_call).options(**opts)
        running: dict = {}  # ObjectRef -> task

        def submit(t: Task) -> None:
            tr.started(t.id)
            running[remote.remote(fn, t.args, t.kwargs, self.cpus_per_task)] = t

        for t in tasks:
            submit(t)
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                t = running.pop(ref)
                try:
                    value, seconds, worker = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the task raised; its traceback is in the message
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    msg = f"{type(cause).__name__}: {cause}" if cause is not e else str(e)
                    if tr.failure(t.id, msg):
                        submit(t)
                except ray.exceptions.RayError as e:  # worker or node died, object lost, ...
                    if tr.failure(t.id, f"{type(e).__name__}: {e}"):
                        submit(t)
                else:
                    tr.success(t.id, value, seconds, worker)
        return tr.ordered(tasks)

    def describe(self) -> dict:
        try:
            cpus = self.ray.cluster_resources().get("CPU")
            nodes = len([n for n in self.ray.nodes() if n.get("Alive")])
        except Exception:  # noqa: BLE001 - descriptive only
            cpus, nodes = None, None
        return {"kind": "ray", "address": self.address or "local", "cpus_per_task": self.cpus_per_task,
                "cluster_cpus": cpus, "nodes": nodes}  # fmt: skip

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False


def make_executor(
    kind: str = "local",
    workers: int = 1,
    address: str | None = None,
    threads: int | None = None,
    **ray_kwargs: Any,
) -> Executor:
    """``local`` with ``workers=1``: this process; ``local`` with more: a process pool; ``ray``: a Ray cluster
    (``address``; None starts a local one with ``workers`` CPUs when given)."""
    kind = str(kind).lower()
    if kind == "local":
        if address:
            raise ConfigError("--address is for --executor ray; the local executor runs on this machine.")
        return InlineExecutor() if int(workers) <= 1 else LocalExecutor(int(workers), threads)
    if kind == "ray":
        num_cpus = ray_kwargs.pop("num_cpus", None) or (int(workers) if int(workers) > 1 else None)
        return RayExecutor(address=address, num_cpus=num_cpus, cpus_per_task=threads or 1, **ray_kwargs)
    raise ConfigError(f"Unknown executor {kind!r}. Valid: {', '.join(EXECUTORS)}.")


def run_tasks(
    fn: Callable,
    tasks: Sequence[Task],
    executor: Executor | None = None,
    retries: int = 0,
    on_result: OnResult | None = None,
    log: Log | None = None,
) -> list[TaskResult]:
    """``executor.map`` with an :class:`InlineExecutor` when none is given."""
    return (executor or InlineExecutor()).map(fn, tasks, retries=retries, on_result=on_result, log=log)
