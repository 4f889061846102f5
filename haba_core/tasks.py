"""The task protocol every executor shares (``haba_core.executors``, ``haba_core.ray_executor``): a
:class:`Task`, its :class:`TaskResult`, the :class:`Executor` interface, and the attempt bookkeeping that
retries a failed task or finishes it and reports it once (:class:`Tracker`)."""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


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
        return {
            "id": self.id,
            "ok": self.ok,
            "error": self.error,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
            "worker": self.worker,
        }


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


def format_error(e: BaseException) -> str:
    """One readable string: the exception line, then the innermost frames of its traceback."""
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    text = "".join(tb[-6:]).strip()
    return f"{type(e).__name__}: {e}\n{text}" if len(tb) > 1 else f"{type(e).__name__}: {e}"


def call_task(fn: Callable, args: tuple, kwargs: dict, threads: int | None = None) -> tuple[Any, float, str]:
    """Run one task where it was sent; returns (value, seconds, worker). Exceptions propagate to the driver."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - t0, worker_name()


def check_tasks(tasks: Iterable[Task]) -> list[Task]:
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


class Tracker:
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
