"""What one refresh of a Live-page element costs the machine: CPU seconds of the browser and of the server.

A probe behind the Live page's refresh cadence (``bench.watch_overhead`` measures the cost to a run). A small
Streamlit app (written to a temporary folder) redraws one element once a second in a fragment, as the Live page
does, while headless Chromium shows it; the CPU that Chromium and the Streamlit server use over ``--seconds`` is
divided by the number of refreshes. Elements:

- ``progress``: the progress line (a line of text and a progress bar), what the Live page refreshes most often;
- ``losses``: the loss figure of a DM + HaBa run (``workbench.figures.loss_figure``, six panels, ``--points``
  steps), as the Live page draws it.

    python -m bench.redraw_cost --out bench/results/redraw_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.provenance import provenance
from bench.watch_overhead import CHROMIUM, chromium_pids, cpu_seconds

ROOT = Path(__file__).resolve().parents[1]

LOSSES = ("loss", "dm", "haba_cos", "extractor_ce", "extractor_likelihood", "extractor_supcon")
APP = """
import math
import streamlit as st
import torch
from workbench import figures as F

torch.set_num_threads(1)
element = st.query_params.get("element", "progress")
st.session_state.setdefault("n", {points})


@st.fragment(run_every=1.0)
def refresh():
    st.session_state.n += 1
    n = st.session_state.n
    if element == "progress":
        st.markdown(f"running · step {{n}} / 1000 · 0.21 s/iteration · about 3 min left")
        st.progress(n / 1000)
    else:
        records = [{{"step": i, **{{k: 10 * math.exp(-i / 50) + (i * 7 + j) % 5 / 5 for j, k in enumerate({losses})}}}}
                   for i in range(1, n)]
        st.plotly_chart(F.loss_figure(records, list({losses})), key="losses", config={{"displaylogo": False}})


refresh()
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.redraw_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--elements", default="progress,losses")
    p.add_argument("--seconds", type=float, default=20.0, help="measured time per element (one refresh a second)")
    p.add_argument("--points", type=int, default=100, help="steps on the loss curves when the probe starts")
    p.add_argument("--out", help="JSON file for the results")
    a = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from workbench.testing import served_app

    tmp = Path(tempfile.mkdtemp(prefix="redraw_cost_"))
    (tmp / "app.py").write_text(APP.format(points=a.points, losses=LOSSES))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = []
    with served_app(tmp / "app.py", ROOT, env, tmp / "server.log") as (url, server), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1900})
        for element in a.elements.split(","):
            page.goto(f"{url}/?element={element}")
            page.wait_for_timeout(8000)  # loaded and refreshing
            c0, s0, t0 = cpu_seconds(chromium_pids()), cpu_seconds([server.pid]), time.time()
            page.wait_for_timeout(int(a.seconds * 1000))
            refreshes = time.time() - t0  # one a second
            row = {
                "element": element,
                "browser_cpu_s_per_refresh": (cpu_seconds(chromium_pids()) - c0) / refreshes,
                "server_cpu_s_per_refresh": (cpu_seconds([server.pid]) - s0) / refreshes,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        browser.close()
    summary = {**provenance("bench.redraw_cost", argv), "points": a.points, "seconds": a.seconds, "rows": rows}
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
