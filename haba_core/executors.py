"""Executors: run many independent tasks (evaluation cells, expert trajectories) here or on a Ray cluster.

One interface, three ways to run it::

    with make_executor("local", workers=2) as ex:        # "local", workers=1: in this process
        results = ex.map(fn, [Task("a", (1,)), Task("b", (2,))], retries=1, on_result=save)

- :class:`InlineExecutor` runs tasks one after another in the calling process (``local`` with one worker).
- :class:`LocalExecutor` runs them in ``workers`` spawned processes, each with ``cores // workers`` torch
  threads; a worker that dies (killed, out of memory) breaks the pool, which is rebuilt and the tasks that
  were in flight are retried.
- :class:`~haba_core.ray_executor.RayExecutor` fans them out over a Ray cluster (``address=None`` starts a
  local one); ``haba_core`` travels with the tasks (``runtime_env.py_modules``), so cluster nodes need only torch
  and the data.

Tasks are plain data: ``fn`` must be a top-level (picklable) function and its arguments picklable; it
returns a picklable value. Nothing is written by the executor itself: the caller's ``on_result`` sees every
result in the driver process as soon as it arrives, which is where results are saved, so they land in the
same folder whichever executor (and machine) computed them. A task that raises (or whose worker dies) is
tried again up to ``retries`` times; after that its :class:`TaskResult` carries ``ok=False`` and the error,
and the other tasks go on.

Ray is an optional extra (``pip install -r requirements-ray.txt``); it is imported only by RayExecutor
(``haba_core/ray_executor.py``). Tasks, results and the retry bookkeeping are ``haba_core/tasks.py``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from haba_core.errors import ConfigError
from haba_core.tasks import (
    Executor,
    Log,
    OnResult,
    Task,
    TaskResult,
    Tracker,
    available_cores,
    call_task,
    check_tasks,
    format_error,
    worker_name,
)

EXECUTORS = ("local", "ray")


class InlineExecutor(Executor):
    """Tasks one after another in this process (no pickling, shares in-process caches). A task that kills
    the process cannot be retried here; use ``LocalExecutor`` (processes) for that."""

    name = "local"

    def map(self, fn, tasks, *, retries=0, on_result=None, log=None):
        tasks = check_tasks(tasks)
        tr = Tracker(tasks, retries, on_result, log)
        for t in tasks:
            while True:
                tr.started(t.id)
                t0 = time.perf_counter()
                try:
                    value, seconds, worker = call_task(fn, t.args, t.kwargs)
                except Exception as e:  # reported in the task's result
                    if tr.failure(t.id, format_error(e), worker_name(), time.perf_counter() - t0):
                        continue
                    break
                tr.success(t.id, value, seconds, worker)
                break
        return tr.ordered(tasks)

    def describe(self) -> dict:
        import torch

        return {"kind": "local", "workers": 1, "threads": torch.get_num_threads(), "processes": False}


def die_with_parent(parent: int) -> None:
    """Have Linux end this process (SIGTERM) when ``parent``, the process that started it, ends: a study or an
    evaluation stopped with ``kill`` then takes its cells and workers with it instead of leaving them training on
    and writing results. A parent already gone ends this process now. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it ended before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _init_worker(threads: int, parent: int) -> None:
    import torch

    die_with_parent(parent)
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

        return ProcessPoolExecutor(
            self.workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.threads, os.getpid()),
        )

    def map(self, fn, tasks, *, retries=0, on_result=None, log=None):
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        tasks = check_tasks(tasks)
        tr = Tracker(tasks, retries, on_result, log)
        queue = list(tasks)  # waiting to be submitted, in order
        running: dict = {}  # future -> task
        if self._pool is None:
            self._pool = self._new_pool()
        while queue or running:
            while queue and len(running) < 2 * self.workers:  # a short queue keeps retries near the front
                t = queue.pop(0)
                tr.started(t.id)
                try:
                    running[self._pool.submit(call_task, fn, t.args, t.kwargs)] = t
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
                except Exception as e:  # the task's own exception, re-raised from the worker
                    if tr.failure(t.id, format_error(e)):
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
        from haba_core.ray_executor import RayExecutor

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
