"""End to end: the real app in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Starts ``streamlit run app.py`` on a free localhost port with a temporary runs folder, launches a short run on
the toy dataset from the New-run page, watches the loss curve grow on the Live page, opens the explorer grid
and enlarges a cell by clicking it. Screenshots of every page go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench import jobs as J
from workbench import runs as R
from workbench import testing as T

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 120_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (make browser)"),
]


@pytest.fixture
def server(tmp_path):
    """The app served on 127.0.0.1:<free port>, with its runs in a temporary folder."""
    runs = tmp_path / "runs"
    env = {**os.environ, R.RUNS_ENV: str(runs), "PYTHONPATH": str(ROOT)}
    with T.served_app("app.py", ROOT, env, tmp_path / "server.log") as (url, _):
        try:
            yield url, runs
        finally:
            for run in R.list_runs(runs):
                if run.is_active:
                    J.cancel_run(run.name, runs)


def loss_points(page) -> int:
    """Points of the 'loss' curve in the Live page's first plotly chart (0 if there is none yet)."""
    return page.evaluate(
        """() => {
            const plot = document.querySelector('.js-plotly-plot');
            if (!plot || !plot.data) return 0;
            const t = plot.data.find(d => d.name === 'loss');
            return t ? t.x.length : 0;
        }"""
    )


def wait_until(page, predicate, timeout_s: float = 120, what: str = "condition"):
    end = time.time() + timeout_s
    while time.time() < end:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(500)
    raise AssertionError(f"timed out waiting for {what}")


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def goto_page(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=title if title != "Explorer" else "Hallucinator x basis explorer").wait_for(
        timeout=TIMEOUT_MS
    )


def test_launch_watch_and_explore_in_a_real_browser(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, runs = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1900})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            # New run: the defaults are ready to launch; switch to the toy data and tiny settings
            page.goto(url)
            page.get_by_text("Ready to launch").wait_for()
            shot(page, "1_new_run_defaults")
            page.get_by_role("combobox", name="Dataset").click()
            page.get_by_role("option", name="toy", exact=True).click()
            wait_until(page, lambda: page.get_by_role("combobox", name="Dataset").input_value() == "toy", what="toy")
            iterations = page.get_by_role("spinbutton", name="Iterations")
            iterations.fill("60")
            iterations.press("Enter")
            page.get_by_text("Advanced: every hyperparameter").click()
            page.get_by_role("tab", name="Overrides").click()
            box = page.locator("[data-testid='stTextArea'] textarea")
            box.fill("\n".join([*T.TINY_SET_LINES, "snapshot_every=1", "checkpoint_every=20"]))
            box.press("Control+Enter")
            name = page.get_by_role("textbox", name="Run name")
            name.fill("browser_run")
            name.press("Enter")
            page.wait_for_timeout(1500)
            page.get_by_text("Ready to launch").wait_for()
            shot(page, "2_new_run_toy")
            page.get_by_role("button", name="Launch").click()

            # Live: the loss curve grows while the run trains
            page.get_by_role("heading", name="Live run").wait_for()
            first = wait_until(page, lambda: loss_points(page), what="the first loss points")
            # it grows while the run trains; on an idle machine the 60 toy iterations (about 2 s) may all be done
            # before the page's first read, and then the whole curve is there at once
            wait_until(page, lambda: loss_points(page) > first or first == 60, what="the loss curve to grow")
            wait_until(page, lambda: loss_points(page) == 60, what="all 60 points of the finished run")
            page.locator("[data-testid='stImage'] img").first.wait_for()  # the first snapshot's images
            shot(page, "3_live")
            run = R.get_run("browser_run", runs)
            assert run is not None and run.dataset == "toy" and run.config["iterations"] == 60

            # Explorer: the hallucinator x basis grid; a click on a cell enlarges it
            goto_page(page, "Explorer")
            page.locator(".js-plotly-plot").first.wait_for()
            page.get_by_text("Pixel, within").wait_for()
            points = page.locator(".js-plotly-plot .scatterlayer .point")
            wait_until(page, lambda: points.count() >= 3, what="grid cells")
            box = points.nth(points.count() - 1).bounding_box()  # last row (a hallucinator), last basis
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.get_by_text("hallucinator 1", exact=False).last.wait_for()
            shot(page, "4_explorer")

            for title, name in (("Runs", "5_runs"), ("Evaluate", "6_evaluate"), ("Compare", "7_compare")):
                goto_page(page, title)
                page.wait_for_timeout(1000)
                shot(page, name)
            assert not page.locator("[data-testid='stException']").count()
        except Exception:
            shot(page, "failure")
            raise
        finally:
            browser.close()


def test_live_page_shows_each_new_step_within_seconds_and_stops_polling(server, tmp_path):
    """A running run's Live page shows each appended metrics line's values within a few seconds and draws it
    in the figure within about 10 s (it reads only what was appended), and stops polling once the run is no
    longer running."""
    import json
    import shutil
    import socket as sock

    sync_api = pytest.importorskip("playwright.sync_api")
    url, runs = server
    source = T.source_runs(tmp_path)
    run = runs / "watched"
    shutil.copytree(source / "tiny", run)
    lines = (run / "metrics.jsonl").read_text().splitlines()[:2]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    status = json.loads((run / "status.json").read_text())
    # a live process that looks like a run (the page checks the pid's command line names haba_core)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "haba_core"])
    status.update(state="running", pid=proc.pid, host=sock.gethostname(), step=2, sec_per_iter=0.5)
    (run / "status.json").write_text(json.dumps(status))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            page.goto(f"{url}/live")
            page.get_by_role("heading", name="Live run").wait_for()
            wait_until(page, lambda: loss_points(page) == 2, what="the first two points")
            delays = []
            for step, loss in ((3, 123.456), (4, 98.765), (5, 77.125)):
                record = {**json.loads(lines[-1]), "step": step, "loss": loss, "wall": time.time()}
                with open(run / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                t0 = time.time()
                wait_until(page, lambda loss=loss: f"loss {loss:.4g}" in page.content(), 10, f"step {step}")
                delays.append(time.time() - t0)
            assert max(delays) < 6, delays  # the newest values: polled every 3 s (one logged step, at least 3 s)
            t0 = time.time()  # the figure is redrawn every 10 s at most, to spare the run's CPU
            wait_until(page, lambda: loss_points(page) == 5, 15, "the figure's five points")
            assert time.time() - t0 < 12
            status.update(state="finished", step=5)
            (run / "status.json").write_text(json.dumps(status))
            wait_until(page, lambda: "finished" in page.content(), 10, "the finished state")
            shot(page, "8_live_polling")
            assert not page.locator("[data-testid='stException']").count()
        except Exception:
            shot(page, "failure_live_polling")
            raise
        finally:
            browser.close()
            proc.kill()
            proc.wait()


@pytest.fixture
def findings(tmp_path, monkeypatch):
    """Fabricated findings results for the server (request it before ``server``, which copies the environment)."""
    from workbench import findings as FD

    root = T.fake_findings(tmp_path / "findings")
    monkeypatch.setenv(FD.FINDINGS_ENV, str(root))
    return root


def test_findings_page_shows_every_question(findings, server):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, _ = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1900})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            page.goto(url)
            goto_page(page, "Findings")
            for heading in ("Frontier", "Diversity", "Cross-architecture", "Constraint"):
                page.get_by_role("heading", name=heading).wait_for()
            charts = page.locator(".js-plotly-plot")
            wait_until(page, lambda: charts.count() >= 6, what="the six charts")
            shot(page, "9_findings")
            assert not page.locator("[data-testid='stException']").count()
        except Exception:
            shot(page, "failure_findings")
            raise
        finally:
            browser.close()
