"""What a run will cost on this machine, measured before it starts: seconds per iteration, the whole run's time and
its peak memory, from a short probe of the real :class:`~haba_core.engine.Distiller`.

The probe runs in a child process (``python -m haba_core.cost``, under the allocator ``haba distill`` runs under):
it builds the Distiller for the config (loading the data once; the synthetic set, the networks and, for MTT, the
experts), runs a few outer iterations as the engine's loop does (2 warm-up, then 3 timed; fewer when one iteration
is long) and reports the median time of the timed ones and the process's peak resident memory (``VmHWM``; CUDA's
peak allocation on a GPU). The Distiller gets no callbacks, so nothing is written (no run folder), and its random
draws end with the child, so a run launched afterwards is exactly the run it would have been. The parent compares
that peak with what a new process may take (:func:`haba_core.devices.memory_available`, preflight's reading).

Not measured: evaluations (in-run or at the end), which the estimate names as not included, and snapshot and
checkpoint writes (small next to an iteration at the presets' settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from haba_core import io
from haba_core.config import RunConfig
from haba_core.devices import memory_available
from haba_core.errors import HabaError

PROBE_WARMUP = 2  # untimed iterations first: allocator growth, lazy initialisation, compilation
PROBE_TIMED = 3
PROBE_SECONDS = 30.0  # after the first iteration, no more iterations than fit in this (at least 1 warm-up + 1 timed)
MB = 2**20
CONFIG, RESULT, LOG = "config.json", "probe.json", "log.txt"  # the probe's temporary folder


@dataclass(frozen=True)
class Probe:
    """What the probe measured in its own process."""

    step_times: tuple[float, ...]  # seconds of each timed iteration
    warmup: int  # iterations run before them, untimed
    start_s: float  # the process's start: the interpreter, torch and haba_core imported
    build_s: float  # building the Distiller: the data, the synthetic set, the networks (MTT: the experts)
    base_mb: float  # resident memory before building (the interpreter, torch, haba_core)
    peak_mb: float  # peak resident memory of the process, building and iterations
    step_peak_mb: float  # peak resident memory during the iterations (what metrics.jsonl's peak_rss_mb shows)
    device: str
    allocator: str  # "jemalloc" | "system"
    largest_part: str  # preflight's largest part of the run's memory, with the setting that sets it
    notes: tuple[str, ...] = ()  # preflight's notes (a real batch clamped to a class, ...)
    peak_cuda_mb: float | None = None  # CUDA's peak allocation during the iterations
    cuda_free_mb: float | None = None  # the GPU's free memory before building
    cuda_where: str = ""

    @property
    def sec_per_iter(self) -> float:
        return statistics.median(self.step_times)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Probe:
        return cls(**{**d, "step_times": tuple(d["step_times"]), "notes": tuple(d.get("notes", ()))})


@dataclass(frozen=True)
class Estimate:
    """A probe read against the whole run and the memory this machine has now."""

    probe: Probe
    iterations: int
    available_mb: float | None  # memory a new process may take now; None when it cannot be told
    available_where: str  # where that figure comes from, as a sentence
    not_included: tuple[str, ...] = ()  # what the total leaves out (evaluations)
    problems: tuple[str, ...] = ()  # the peak exceeds what is available: each as a sentence saying what to do

    @property
    def sec_per_iter(self) -> float:
        return self.probe.sec_per_iter

    @property
    def startup_s(self) -> float:
        """The probe's process start (imports) and its build of the Distiller: what a run spends before step 1."""
        return self.probe.start_s + self.probe.build_s

    @property
    def total_s(self) -> float:
        """Startup plus iterations x seconds per iteration."""
        return self.startup_s + self.iterations * self.sec_per_iter

    @property
    def peak_mb(self) -> float:
        return self.probe.peak_mb

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def measured_note(self) -> str:
        p = self.probe
        return (
            f"measured on this machine: {len(p.step_times)} probe iterations (after {p.warmup} warm-up; "
            f"{p.device}, {p.allocator} allocator)"
        )

    def describe(self) -> str:
        """The estimate as aligned lines, like the storage breakdown (what ``haba distill --dry-run`` prints)."""
        p = self.probe
        times = f"timed {min(p.step_times):.3g}-{max(p.step_times):.3g} s" if len(p.step_times) > 1 else "one timed"
        lines = [
            f"s/iteration          {self.sec_per_iter:.3g} s  (median; {times})",
            f"startup              {format_seconds(self.startup_s)}  (imports {p.start_s:.1f} s, then the data, the "
            "synthetic set, the networks)",
            f"total time           {format_seconds(self.total_s)}  "
            f"(startup + {self.iterations:,} iterations x {self.sec_per_iter:.3g} s)",
        ]
        lines += [f"not included         {what}" for what in self.not_included]
        lines.append(
            f"peak memory          {p.peak_mb:,.0f} MB resident  "
            f"({p.peak_mb - p.base_mb:,.0f} MB above the {p.base_mb:,.0f} MB of the interpreter and torch)"
        )
        if p.peak_cuda_mb is not None:
            lines.append(f"peak GPU memory      {p.peak_cuda_mb:,.0f} MB allocated  ({p.cuda_where})")
        verdict = "the peak fits" if self.fits else "the peak does NOT fit (see the warning)"
        lines.append(f"available memory     {self.available_where}: {verdict}")
        lines.append(f"probe                {self.measured_note}; other processes share it, so times vary")
        return "\n".join(lines)


def format_seconds(s: float) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``2 h 03 min``."""
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


# -- the probe (in the child process) ---------------------------------------------------------------------------
def probe(
    cfg: RunConfig, warmup: int = PROBE_WARMUP, timed: int = PROBE_TIMED, max_seconds: float = PROBE_SECONDS
) -> Probe:
    """Build the Distiller for ``cfg`` in this process and time ``warmup`` + ``timed`` outer iterations (fewer, but
    at least one warm-up and one timed, when the first iteration shows they would take over ``max_seconds``).
    Seeds torch's global RNG as a run does: call it in a process of its own (:func:`start_probe`)."""
    from haba_core.devices import peak_memory_mb, reset_peak_memory, resident_memory_mb, resolve_device
    from haba_core.engine import Distiller
    from haba_core.memory import active_allocator
    from haba_core.preflight import memory_parts

    if warmup < 0 or timed < 1:
        raise HabaError(f"The probe needs warmup >= 0 and timed >= 1 iterations, got {warmup} and {timed}.")
    device = resolve_device(cfg.device)
    cuda_free, cuda_where = memory_available(device) if device.type == "cuda" else (None, "")
    base, start_s = resident_memory_mb() or 0.0, process_age()
    t0 = time.perf_counter()
    # no callbacks (nothing written), no evaluation (the run's own, on the test split, needs its run folder)
    d = Distiller(cfg.replace(eval_every=0, eval_at_end=False))
    build_s = time.perf_counter() - t0
    build_peak = peak_memory_mb(d.device).get("peak_rss_mb", 0.0)  # since the process started: data loading too
    synset, passes = memory_parts(d.cfg, d.dataset, d.plan)
    planned, times = warmup + timed, []
    reset_peak_memory(d.device)
    while len(times) < planned:
        t = time.perf_counter()
        d.synset.train()
        d.iterate()  # one outer iteration, as Distiller.run times it
        if d.device.type == "cuda":
            torch.cuda.synchronize(d.device)
        times.append(time.perf_counter() - t)
        if len(times) == 1:  # an expensive setting: fewer iterations
            planned = max(min(warmup, 1) + 1, min(planned, int(max_seconds // times[0])))
    step = peak_memory_mb(d.device)
    skip = min(warmup, planned - 1)
    return Probe(
        step_times=tuple(times[skip:]),
        warmup=skip,
        start_s=start_s,
        build_s=build_s,
        base_mb=base,
        peak_mb=max(build_peak, step.get("peak_rss_mb", 0.0)),
        step_peak_mb=step.get("peak_rss_mb", 0.0),
        device=str(d.device),
        allocator=active_allocator(),
        largest_part=max([synset, *passes[:1]])[1],
        notes=tuple(d.notes),
        peak_cuda_mb=step.get("peak_cuda_mb"),
        cuda_free_mb=None if cuda_free is None else cuda_free / MB,
        cuda_where=cuda_where,
    )


def process_age() -> float:
    """Seconds since this process started (``/proc/self/stat``); 0.0 where that cannot be read."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])  # field 22: starttime
        return max(0.0, float(Path("/proc/uptime").read_text().split()[0]) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def main(argv: list[str] | None = None) -> int:
    """``python -m haba_core.cost FOLDER``: probe ``FOLDER/config.json``, write ``FOLDER/probe.json``."""
    parser = argparse.ArgumentParser(prog="python -m haba_core.cost", description="Probe a run's cost (internal).")
    parser.add_argument("folder", help="holds config.json; probe.json is written there")
    parser.add_argument("--warmup", type=int, default=PROBE_WARMUP)
    parser.add_argument("--timed", type=int, default=PROBE_TIMED)
    parser.add_argument("--max-seconds", type=float, default=PROBE_SECONDS)
    a = parser.parse_args(argv)
    folder = Path(a.folder)
    try:
        cfg = RunConfig.from_dict(io.read_json_strict(folder / CONFIG))
        out, code = {"probe": probe(cfg, a.warmup, a.timed, a.max_seconds).to_dict()}, 0
    except HabaError as e:  # bad settings, missing experts, memory preflight refuses: the parent says so
        out, code = {"error": str(e)}, 2
    io.write_json(folder / RESULT, out)
    return code


# -- the parent's side ------------------------------------------------------------------------------------------
@dataclass
class ProbeJob:
    """A probe running in a child process; its files are in ``folder`` (temporary: :meth:`close` removes it)."""

    folder: Path
    proc: subprocess.Popen

    def done(self) -> bool:
        return self.proc.poll() is not None

    def result(self) -> Probe:
        """The finished probe's measurements; HabaError when it could not run the settings (the reason)."""
        try:
            out = io.read_json_strict(self.folder / RESULT)
        except (OSError, ValueError):
            tail = _tail(self.folder / LOG)
            raise HabaError(
                f"The cost probe stopped (exit code {self.proc.poll()}) without a result: killed for memory, or a "
                f"bug. Its output ends with:\n{tail}"
            ) from None
        if "error" in out:
            raise HabaError(f"Cannot estimate these settings: {out['error']}")
        return Probe.from_dict(out["probe"])

    def wait(self) -> Probe:
        try:
            self.proc.wait()
        except BaseException:  # Ctrl-C: stop the child too
            self.stop()
            raise
        return self.result()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        """Stop the child if it still runs and remove the temporary folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(no output)"
    except OSError:
        return "(no output)"


def start_probe(
    cfg: RunConfig, warmup: int = PROBE_WARMUP, timed: int = PROBE_TIMED, max_seconds: float | None = None
) -> ProbeJob:
    """Start :func:`probe` of ``cfg`` in a child process (jemalloc when ``haba distill`` would use it);
    ``max_seconds`` defaults to ``PROBE_SECONDS`` as it is when called."""
    from haba_core.memory import allocator_env

    max_seconds = PROBE_SECONDS if max_seconds is None else max_seconds

    folder = Path(tempfile.mkdtemp(prefix="haba-probe-"))
    io.write_json(folder / CONFIG, cfg.to_dict())
    args = [sys.executable, "-m", "haba_core.cost", str(folder), "--warmup", str(warmup), "--timed", str(timed)]
    args += ["--max-seconds", str(max_seconds)]
    env = {**allocator_env(), "PYTHONUNBUFFERED": "1"}
    with open(folder / LOG, "w") as log:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    return ProbeJob(folder, proc)


def judge(cfg: RunConfig, p: Probe) -> Estimate:
    """``p`` read against ``cfg``'s iterations and evaluations and the memory a new process may take now."""
    avail, where = memory_available(torch.device("cpu"))
    problems = []
    lower = f"The largest part is {p.largest_part}: lower it, free memory, or use a machine with more."
    if avail is not None and p.peak_mb * MB > avail:
        problems.append(
            f"A process with these settings peaked at {p.peak_mb:,.0f} MB resident in the probe, but {where}. {lower}"
        )
    if p.peak_cuda_mb is not None and p.cuda_free_mb is not None and p.peak_cuda_mb > p.cuda_free_mb:
        problems.append(
            f"These settings peaked at {p.peak_cuda_mb:,.0f} MB of GPU memory in the probe, but {p.cuda_where}. {lower}"
        )
    e = cfg.eval
    nets = f"{e.seeds} seed(s) x {len(e.nets)} network(s) x {e.epochs} epochs"
    skipped = []
    if cfg.eval_every:
        skipped.append(f"the evaluations every {cfg.eval_every} iterations ({nets} each)")
    if cfg.eval_at_end:
        skipped.append(f"the evaluation at the end ({nets}; `haba evaluate` prints its wall time)")
    return Estimate(
        probe=p,
        iterations=cfg.iterations,
        available_mb=None if avail is None else avail / MB,
        available_where=where,
        not_included=tuple(skipped),
        problems=tuple(problems),
    )


def estimate(cfg: RunConfig, **limits) -> Estimate:
    """Probe ``cfg`` in a child process (``limits``: :func:`start_probe`'s) and judge it; HabaError when the probe
    cannot run the settings (e.g. MTT without its experts)."""
    job = start_probe(cfg, **limits)
    try:
        return judge(cfg, job.wait())
    finally:
        job.close()


def print_estimate(cfg: RunConfig, out=sys.stdout) -> Estimate:
    """:func:`estimate` as the command line shows it: the figures to ``out``, notes and warnings to stderr."""
    print("measuring: building the run and timing a few iterations in a separate process ...", file=sys.stderr)
    est = estimate(cfg)
    for note in est.probe.notes:
        print(f"note: {note}", file=sys.stderr)
    print(est.describe(), file=out)
    for problem in est.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return est


if __name__ == "__main__":
    sys.exit(main())
