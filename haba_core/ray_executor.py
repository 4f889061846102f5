"""The Ray executor: a :class:`~haba_core.tasks.Executor` whose tasks are Ray remote functions on a cluster
(``address=None`` starts a local one). ``haba_core`` travels with the tasks (``runtime_env.py_modules``), so cluster
nodes need only torch and the data. ``make_executor("ray", ...)`` (``haba_core.executors``) builds it; Ray is an
optional extra (``pip install -r requirements-ray.txt``), imported when one is made."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from haba_core.errors import ConfigError, HabaError
from haba_core.tasks import Executor, Task, Tracker, call_task, check_tasks


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
                except Exception as e:  # Ray raises many kinds; all mean the same to the user
                    ray.shutdown()
                    if attempt == 0 and not address:
                        continue
                    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                    raise HabaError(f"Could not connect to {where}: {e}") from e
            self._started = True
            self._runtime_env = {}  # set job-wide already

    def map(self, fn, tasks, *, retries=0, on_result=None, log=None):
        ray = self.ray
        tasks = check_tasks(tasks)
        tr = Tracker(tasks, retries, on_result, log)
        opts: dict[str, Any] = {"num_cpus": self.cpus_per_task, "max_retries": 0}
        if self._runtime_env:
            opts["runtime_env"] = self._runtime_env
        remote = ray.remote(call_task).options(**opts)
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
        except Exception:  # descriptive only
            cpus, nodes = None, None
        return {
            "kind": "ray",
            "address": self.address or "local",
            "cpus_per_task": self.cpus_per_task,
            "cluster_cpus": cpus,
            "nodes": nodes,
        }

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False
