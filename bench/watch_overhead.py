"""What watching a run costs the run: the same distillation alone and watched on the Live page, alternating.

Starts the app (``streamlit run app.py`` from ``--app-root``) on a free localhost port with its own runs folder,
then, ``--rounds`` times: runs the distillation alone, then again while headless Chromium (Playwright) shows
its Live page from the first step to the last. Each run's cost is its **mean** seconds per iteration (from the
run's ``metrics.jsonl``, skipping warm-up steps): the mean is what a user waits for, and it counts the stalls a
median hides. Each run also reports its wall time per iteration (process start to exit, over all iterations), its
slowest step and how many steps took over twice the median (stalls). The summary takes the median over rounds of
each mode's mean, their ratio, and the CPU the Streamlit server and Chromium used while watching (share of one
core, from /proc). Results go to ``--out`` as JSON.

    python -m bench.watch_overhead --label after --out bench/results/watch_overhead_after.json
    python -m bench.watch_overhead --app-root /path/to/old/checkout --label before ...

The distillation is the New run page's default (Fashion-MNIST, DM + HaBa at IPC 1, the CPU preset) with a
fixed iteration count; ``--dataset toy`` for a quick check of the harness.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.provenance import provenance
from haba_core import runfolder as RF

CHROMIUM = "/usr/bin/chromium"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (and their waited-for children), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return total / TICKS


def chromium_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "chrom"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def distill_cmd(a, run_dir: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "haba_core",
        "distill",
        "--config",
        "configs/fmnist_cpu_dm.yaml",
        "--synset",
        "haba",
        "--budget-ipc",
        "1",
        "--basis-size",
        "14",
        "--iterations",
        str(a.iterations),
        "--run-dir",
        str(run_dir),
        "--quiet",
    ]
    if a.dataset != "fashion_mnist":
        cmd += ["--set", f"data.name={a.dataset}"]
    return cmd


def step_times(run_dir: Path, skip: int) -> dict:
    """Mean, median and slowest step of a finished run, and its stalls (steps over twice the median)."""
    rows = RF.read_jsonl(run_dir / RF.METRICS)
    times = [r["time_s"] for r in rows if r.get("step", 0) > skip and "time_s" in r]
    median = statistics.median(times)
    return {
        "sec_per_iter": statistics.fmean(times),
        "median_sec_per_iter": median,
        "max_step_s": max(times),
        "stalls": sum(t > 2 * median for t in times),
    }


def one_run(a, env, runs: Path, name: str, page=None, url: str = "", server_pid: int = 0) -> dict:
    run_dir = runs / name
    proc = subprocess.Popen(
        distill_cmd(a, run_dir), cwd=a.app_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    watched = page is not None
    started = time.time()
    cpu0 = wall0 = None
    if watched:
        while not (run_dir / RF.STATUS).exists() and proc.poll() is None:
            time.sleep(0.1)
        page.goto(f"{url}/live")
        page.get_by_role("heading", name="Live run").wait_for()
        cpu0 = (cpu_seconds([server_pid]), cpu_seconds(chromium_pids()))
        wall0 = time.time()
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"distill failed:\n{err}")
    out = {"mode": "watched" if watched else "alone", **step_times(run_dir, a.skip)}
    out["wall_sec_per_iter"] = (time.time() - started) / a.iterations
    if watched:
        wall = time.time() - wall0
        out["server_cpu_share"] = (cpu_seconds([server_pid]) - cpu0[0]) / wall
        out["chromium_cpu_share"] = (cpu_seconds(chromium_pids()) - cpu0[1]) / wall
        out["watched_s"] = wall
        # what the page shows at the end: the last step must be on it within a few seconds
        deadline = time.time() + 15
        last = f"step {a.iterations} / {a.iterations}"
        while time.time() < deadline and last not in page.content():
            page.wait_for_timeout(250)
        out["page_caught_up_s"] = round(time.time() - (deadline - 15), 2)
        out["page_shows_last_step"] = last in page.content()
    print(json.dumps({"run": name, **out}), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.watch_overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--app-root", default=str(Path(__file__).resolve().parent.parent))
    p.add_argument("--iterations", type=int, default=120)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--skip", type=int, default=5, help="warm-up steps left out of each run's mean")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--label", default="")
    p.add_argument("--out", help="JSON file for the results")
    a = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from workbench.testing import served_app

    tmp = Path(tempfile.mkdtemp(prefix="watch_overhead_"))
    runs = tmp / "runs"
    # PYTHONPATH: measure the checkout at --app-root, not the installed one
    env = {**os.environ, "HABA_RUNS_DIR": str(runs), "PYTHONPATH": a.app_root}
    results = []
    with served_app("app.py", a.app_root, env, tmp / "server.log") as (url, server), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1900})
        page.set_default_timeout(120_000)
        page.goto(url)  # the app is warm before the first measurement
        page.get_by_text("Ready to launch").wait_for()
        for r in range(a.rounds):
            page.goto("about:blank")  # nothing of the app is open while the run is alone
            results.append(one_run(a, env, runs, f"alone_{r}"))
            results.append(one_run(a, env, runs, f"watched_{r}", page, url, server.pid))
        browser.close()
    alone_runs = [r for r in results if r["mode"] == "alone"]
    watched = [r for r in results if r["mode"] == "watched"]
    alone = statistics.median(r["sec_per_iter"] for r in alone_runs)
    summary = {
        **provenance("bench.watch_overhead", argv),
        "label": a.label,
        "app_root": a.app_root,
        "iterations": a.iterations,
        "rounds": a.rounds,
        "dataset": a.dataset,
        "alone_sec_per_iter": alone,
        "watched_sec_per_iter": statistics.median(r["sec_per_iter"] for r in watched),
        "alone_wall_sec_per_iter": statistics.median(r["wall_sec_per_iter"] for r in alone_runs),
        "watched_wall_sec_per_iter": statistics.median(r["wall_sec_per_iter"] for r in watched),
        "alone_stalls": sum(r["stalls"] for r in alone_runs),
        "watched_stalls": sum(r["stalls"] for r in watched),
        "server_cpu_share": statistics.median(r["server_cpu_share"] for r in watched),
        "chromium_cpu_share": statistics.median(r["chromium_cpu_share"] for r in watched),
        "runs": results,
    }
    summary["slowdown"] = summary["watched_sec_per_iter"] / alone
    summary["wall_slowdown"] = summary["watched_wall_sec_per_iter"] / summary["alone_wall_sec_per_iter"]
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
