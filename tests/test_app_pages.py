"""Every page of the Streamlit app under ``streamlit.testing``, against real tiny run folders made by the engine.

Error states covered: no runs yet, a failed run, a run whose process died, a run with no snapshot yet and a
corrupted snapshot file. ``AppTest`` does not fire ``st.fragment(run_every=...)``; calling ``run()`` again is
the poll.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from workbench import catalog as C
from workbench import jobs as J
from workbench import runs as R
from workbench import testing as T
from workbench.pages import ordered_pages

ROOT = Path(__file__).resolve().parents[1]
PAGES = tuple(page.path.stem for page in ordered_pages())  # every registered page (test_extension pins the order)


@pytest.fixture
def empty_runs(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "runs"
    monkeypatch.setenv(R.RUNS_ENV, str(root))
    return root


@pytest.fixture
def runs_root(source_runs, empty_runs) -> Path:
    shutil.copytree(source_runs, empty_runs, ignore=shutil.ignore_patterns(".complete"))
    return empty_runs


def open_page(page: str, run: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    if run:
        at.session_state["wb.run"] = run
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    if page != "new_run":
        at.switch_page(f"workbench/app_pages/{page}.py")
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def plotly_charts(at: AppTest) -> list:
    return at.get("plotly_chart")


def wait_for(predicate, timeout: float = 120.0):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def set_status(path: Path, **fields) -> None:
    status = json.loads((path / "status.json").read_text())
    status.update(fields)
    (path / "status.json").write_text(json.dumps(status))


# -- no runs yet --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", [p for p in PAGES if p not in ("new_run", "findings")])  # findings: no runs needed
def test_pages_without_runs(page, empty_runs):
    at = open_page(page)
    assert "No runs yet" in texts(at.info)
    assert not at.error


# -- New run ------------------------------------------------------------------------------------------------------
def test_new_run_defaults_are_launchable(empty_runs):
    at = open_page("new_run")
    assert at.selectbox(key="new.v.data.name").value == "fashion_mnist"
    assert at.selectbox(key="new.v.method.name").value == "dm"
    assert at.radio(key="new.v.synset.kind").value == "haba"
    assert at.number_input(key="new.v.synset.budget_ipc").value == 1.0
    assert not at.error and "Ready to launch" in texts(at.success)
    assert "14x14" in texts(at.info)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images per class"] == "15"
    assert not at.button(key="new.launch").disabled
    # every hyperparameter is on the page with its default
    assert at.number_input(key="new.v.method.params.lr_img").value == 1.0
    assert at.number_input(key="new.v.haba.lambda_cos").value == 0.1
    assert at.number_input(key="new.v.net.params.width").value == 64


def test_a_newly_registered_backend_appears_on_new_run_and_is_launchable(empty_runs):
    """Registering a backend in the engine is all it takes: no workbench list to edit."""
    from haba_core.methods import METHODS
    from haba_core.methods.dm import DM

    @METHODS.register("dm_copy")
    class DMCopy(DM):
        label = "DM copy"
        help = "DM under another name, registered by a test"

    try:
        at = open_page("new_run")
        backend = at.selectbox(key="new.v.method.name")
        assert "dm_copy" in backend.options or "DM copy" in backend.options
        backend.set_value("dm_copy").run()
        assert not at.exception and not at.error, texts(at.error)
        assert "Ready to launch" in texts(at.success)
        assert not at.button(key="new.launch").disabled
    finally:
        METHODS.unregister("dm_copy")


def test_every_registered_synset_kind_is_offered(empty_runs):
    from haba_core.synsets import SYNSETS

    at = open_page("new_run")
    kinds = at.radio(key="new.v.synset.kind")
    assert len(kinds.options) == len(SYNSETS.list())
    for kind in SYNSETS.list():
        kinds.set_value(kind).run()
        assert not at.exception and "Ready to launch" in texts(at.success), (kind, texts(at.error))


def test_new_run_explains_invalid_choices(empty_runs):
    at = open_page("new_run")
    at.selectbox(key="new.v.synset.basis_size").set_value(28).run()
    assert "cannot hold one basis per class" in texts(at.error)
    assert at.button(key="new.launch").disabled
    at.selectbox(key="new.v.synset.basis_size").set_value("auto").run()
    at.text_area(key="new.set_lines").input("method.lr_imgg=3").run()
    assert "lr_imgg" in texts(at.error) and at.button(key="new.launch").disabled
    at.text_area(key="new.set_lines").input("").run()
    at.selectbox(key="new.v.method.name").set_value("mtt").run()
    assert not at.exception
    assert "expert" in texts(at.error).lower() or "not available" in texts(at.error)
    assert at.button(key="new.launch").disabled


def test_new_run_launches_a_toy_run(empty_runs):
    at = open_page("new_run")
    at.selectbox(key="new.v.data.name").set_value("toy").run()
    at.number_input(key="new.v.iterations").set_value(2000).run()
    at.text_area(key="new.set_lines").input("\n".join(T.TINY_SET_LINES)).run()
    at.text_input(key="new.name").input("from_the_form").run()
    assert not at.error, texts(at.error)
    at.button(key="new.launch").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["wb.run"] == "from_the_form"
    run = R.get_run("from_the_form")
    try:
        assert run is not None and run.state in ("queued", "running")
        cfg = run.config
        assert cfg["data"]["name"] == "toy" and cfg["iterations"] == 2000 and cfg["net"]["params"]["width"] == 16
        assert cfg["synset"]["params"]["n_hallucinators"] == 2 and cfg["method"]["name"] == "dm"
        assert "Live run" in texts(at.title)  # the app moved on to the Live page
    finally:
        J.cancel_run("from_the_form")
        wait_for(lambda: not R.get_run("from_the_form").is_active)


def test_new_run_offers_the_logger_sinks(empty_runs, monkeypatch):
    """Advanced > Loop: TensorBoard and W&B beside the run folder; a sink without its package here is explained."""
    from haba_core.loggers import TensorBoardSink

    at = open_page("new_run")
    sinks = at.multiselect(key="new.v.loggers")
    assert sinks.options == ["tensorboard", "wandb"] and sinks.value == []
    sinks.set_value(["tensorboard", "wandb"]).run()
    assert not at.error and not at.button(key="new.launch").disabled, texts(at.error)
    monkeypatch.setattr(TensorBoardSink, "package", "haba_no_such_package")
    at.run()
    assert "pip install haba_no_such_package" in texts(at.error) and at.button(key="new.launch").disabled


def test_new_run_estimates_the_cost(empty_runs):
    at = open_page("new_run")
    at.selectbox(key="new.v.data.name").set_value("toy").run()
    at.number_input(key="new.v.iterations").set_value(300).run()
    at.text_area(key="new.set_lines").input("\n".join(T.TINY_SET_LINES)).run()
    assert not at.error, texts(at.error)
    at.button(key="new.estimate").click().run()
    assert not at.exception, [e.value for e in at.exception]

    def measured():
        at.run()  # the poll
        return "measured on this machine" in texts(at.caption)

    wait_for(measured)
    assert not at.exception and not at.error, texts(at.error)
    assert "probe iterations" in texts(at.caption)
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Seconds / iteration"]) > 0
    assert metrics["Total time"] and metrics["Peak memory"].endswith(" MB")
    assert not empty_runs.exists() or not any(empty_runs.iterdir())  # no run folder
    at.number_input(key="new.v.iterations").set_value(400).run()  # other settings: the figures are not theirs
    assert "press **Estimate cost** again" in texts(at.caption)
    assert "Seconds / iteration" not in {m.label for m in at.metric}


# -- Runs -----------------------------------------------------------------------------------------------------------
def test_runs_lists_states_and_shows_a_failure(runs_root):
    at = open_page("runs", run="failed")
    df = at.dataframe[0].value
    assert set(df["run"]) == {"tiny", "failed"}
    assert dict(zip(df["run"], df["state"], strict=True)) == {"tiny": "finished", "failed": "failed"}
    assert "simulated failure for the test" in texts(at.error)
    assert not at.button(key="runs.resume").disabled and at.button(key="runs.cancel").disabled
    at.run()  # the poll
    assert not at.exception


def test_runs_shows_a_dead_process_and_deletes_with_confirmation(runs_root):
    set_status(runs_root / "tiny", state="running", pid=dead_pid())
    at = open_page("runs", run="tiny")
    assert R.DIED in set(at.dataframe[0].value["state"])
    assert "process" in texts(at.error).lower()
    assert not at.button(key="runs.resume").disabled
    assert at.button(key="runs.delete").disabled  # not confirmed yet
    at.text_input(key="runs.confirm").input("tiny").run()
    at.button(key="runs.delete").click().run()
    assert not (runs_root / "tiny").exists()
    assert not at.exception


# -- Live -------------------------------------------------------------------------------------------------------------
def test_live_shows_losses_and_snapshots(runs_root):
    at = open_page("live", run="tiny")
    charts = plotly_charts(at)
    assert charts, "no loss chart"
    spec = json.loads(charts[0].proto.spec)
    assert {t["name"] for t in spec["data"]} >= {"loss", "dm", "haba_cos"}
    assert at.image, "no synthetic images"
    at.toggle(key="live.log_y").set_value(True).run()
    at.slider(key="live.smoothing").set_value(0.5).run()
    at.toggle(key="live.follow").set_value(False).run()
    at.select_slider(key="live.step").set_value("step 2").run()
    assert not at.exception and "step 2" in texts(at.caption)
    at.run()  # the poll
    assert not at.exception


def loss_points(at: AppTest, name: str = "loss") -> int:
    spec = json.loads(plotly_charts(at)[0].proto.spec)
    return len(next(t for t in spec["data"] if t["name"] == name)["x"])


def test_live_grows_with_the_metrics_file(runs_root):
    at = open_page("live", run="tiny")
    n = loss_points(at)
    with open(runs_root / "tiny" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "loss": 1.0, "dm": 1.0, "time_s": 0.1}) + "\n")
    at.run()  # what the fragment's poll does
    assert loss_points(at) == n + 1


def test_live_failed_run_and_missing_snapshots(runs_root):
    at = open_page("live", run="failed")
    assert "simulated failure for the test" in texts(at.error)
    shutil.rmtree(runs_root / "tiny" / "snapshots")
    (runs_root / "tiny" / "synset.safetensors").unlink()
    at = open_page("live", run="tiny")
    assert "No snapshot yet" in texts(at.info)


def test_live_corrupted_snapshot_is_an_error_not_a_crash(runs_root):
    (runs_root / "tiny" / "synset.safetensors").write_bytes(b"not a safetensors file")
    at = open_page("live", run="tiny")
    assert "Cannot show snapshot" in texts(at.error)


# -- Explorer -------------------------------------------------------------------------------------------------------
def test_explorer_grid_diversity_and_downloads(runs_root):
    at = open_page("explorer", run="tiny")
    charts = plotly_charts(at)
    assert charts, "no grid"
    labels = {m.label for m in at.metric}
    assert {"Pixel, within", "Pixel, between", "Feature 1-cos, within", "Feature 1-cos, between"} <= labels
    downloads = at.get("download_button")
    assert len(downloads) == 2
    at.selectbox(key="explorer.class").set_value(7).run()
    at.selectbox(key="explorer.cell_row").set_value(-1).run()
    assert at.get("image")[0].proto.imgs[0].caption == "class 7, basis 0, bare basis"
    at.select_slider(key="explorer.step").set_value("step 2").run()
    assert not at.exception and not at.error


def test_explorer_without_snapshots_and_with_a_broken_one(runs_root):
    for name in ("tiny", "failed"):
        shutil.rmtree(runs_root / name / "snapshots", ignore_errors=True)
        (runs_root / name / "synset.safetensors").unlink(missing_ok=True)
    at = open_page("explorer")
    assert "No run has a snapshot yet" in texts(at.info)
    T.make_run(runs_root / "fresh", "iterations=1", "snapshot_every=1")
    (runs_root / "fresh" / "synset.safetensors").unlink()
    (runs_root / "fresh" / "snapshots" / "step_0000001.safetensors").write_bytes(b"\0" * 64)
    at = open_page("explorer", run="fresh")
    assert "Cannot open snapshot" in texts(at.error)


# -- Evaluate ---------------------------------------------------------------------------------------------------------
def test_evaluate_shows_results_and_launches_a_job(runs_root):
    at = open_page("evaluate", run="tiny")
    assert plotly_charts(at), "no heatmap"
    table = at.dataframe[0].value
    assert "±" in table.loc["tiny", "convnet"]
    assert at.get("download_button")
    at.multiselect(key="eval.runs").set_value(["tiny"])
    at.multiselect(key="eval.nets").set_value(["convnet", "mlp"])
    at.number_input(key="eval.seeds").set_value(1)
    at.number_input(key="eval.epochs").set_value(1)
    at.checkbox(key="eval.baseline").uncheck().run()
    at.button(key="eval.launch").click().run()
    assert not at.exception and not at.error, texts(at.error)
    job = wait_for(lambda: (j := J.eval_job(runs_root / "tiny")) and j.state != "running" and j, timeout=180)
    assert job.state == "finished", job.log
    at.run()  # the poll picks up the new results
    assert set(at.dataframe[0].value.columns) >= {"convnet", "mlp"}


def test_evaluate_failed_job_shows_its_log(runs_root):
    (runs_root / "tiny" / J.EVAL_JOB).write_text(
        json.dumps({"state": "running", "pid": dead_pid(), "started_at": time.time() + 5, "nets": ["vgg11"]})
    )
    (runs_root / "tiny" / J.EVAL_LOG).write_text("error: something went wrong\n")
    at = open_page("evaluate")
    assert "failed" in texts(at.error) and "something went wrong" in texts(at.code)


def test_evaluate_with_failed_cells_says_so_and_how_to_retry(runs_root):
    """The page shows what the evaluate process recorded (exit code and reason), and that the matrix below is the
    earlier evaluation."""
    why = "1 evaluation task(s) failed after 2 attempt(s) each (synset/mlp/s0). Evaluate again to compute the rest."
    earlier = json.loads((runs_root / "tiny" / "evaluation.json").read_text())["started_at"]
    # the failed job started after the evaluation on record (which the session fixture may have made seconds ago)
    job = {"state": "failed", "exit_code": 4, "error": why, "pid": dead_pid(), "started_at": earlier + 60}
    (runs_root / "tiny" / J.EVAL_JOB).write_text(json.dumps({**job, "nets": ["mlp"]}))
    at = open_page("evaluate")
    assert "(exit code 4): 1 evaluation task(s) failed" in texts(at.error) and "Evaluate again" in texts(at.error)
    assert "shows tiny's earlier evaluation" in texts(at.caption)


def test_evaluate_without_sets_or_results(runs_root):
    for name in ("tiny", "failed"):
        shutil.rmtree(runs_root / name / "snapshots", ignore_errors=True)
        for f in ("synset.safetensors", "evaluation.json"):
            (runs_root / name / f).unlink(missing_ok=True)
    at = open_page("evaluate")
    assert "No run has a synthetic set yet" in texts(at.info) and "No evaluation results yet" in texts(at.info)


# -- Compare ----------------------------------------------------------------------------------------------------------
def test_compare_overlays_runs_and_plots_accuracy_against_storage(runs_root):
    at = open_page("compare")
    at.multiselect(key="compare.runs").set_value(["tiny", "failed"]).run()
    charts = plotly_charts(at)
    assert len(charts) == 2
    curves = json.loads(charts[0].proto.spec)
    assert {t["name"] for t in curves["data"]} == {"tiny", "failed"}
    at.radio(key="compare.x").set_value("time").run()
    at.toggle(key="compare.log_y").set_value(True).run()
    assert not at.exception
    at.multiselect(key="compare.runs").set_value(["failed"]).run()
    assert "None of these runs has been evaluated yet" in texts(at.info)


def test_results_under_different_protocols_are_flagged_on_evaluate_and_compare(runs_root):
    """Two runs evaluated under different protocols are never silently side by side."""
    at = open_page("evaluate")
    assert not any("different protocols" in str(w.value) for w in at.warning)
    ev = json.loads((runs_root / "tiny" / "evaluation.json").read_text())
    assert at.dataframe[0].value.loc["tiny", "protocol"].endswith(f"({ev['synset']['protocol']['id']})")
    other = runs_root / "tiny_legacy"
    shutil.copytree(runs_root / "tiny", other)
    for source in ("synset", "random_real"):  # as written before protocols had ids (standardized HaBa only)
        proto = ev[source]["protocol"]
        ev[source]["protocol"] = {k: v for k, v in proto.items() if k not in ("id", "name", "order", "version")}
    (other / "evaluation.json").write_text(json.dumps(ev))
    at = open_page("evaluate")
    assert "2 different protocols" in texts(at.warning) and "legacy" in texts(at.warning)
    at = open_page("compare")
    at.multiselect(key="compare.runs").set_value(["tiny", "tiny_legacy"]).run()
    assert "2 different protocols" in texts(at.warning)


def test_evaluate_sends_its_tasks_to_the_ray_cluster_in_the_sidebar(runs_root, monkeypatch):
    """With a cluster address (sidebar, prefilled from $RAY_ADDRESS) the job runs `evaluate --executor ray`."""
    monkeypatch.setenv(J.RAY_ENV, "127.0.0.1:1")  # nothing listens there: the job must fail, visibly
    at = open_page("evaluate", run="tiny")
    assert at.sidebar.text_input(key="wb.ray_address_input").value == "127.0.0.1:1"
    assert "Ray cluster at `127.0.0.1:1`" in texts(at.caption)
    at.multiselect(key="eval.nets").set_value(["mlp"])
    at.number_input(key="eval.seeds").set_value(1)
    at.number_input(key="eval.epochs").set_value(1)
    at.button(key="eval.launch").click().run()
    job = J.eval_job(runs_root / "tiny")
    assert job.info["executor"] == "ray" and job.info["address"] == "127.0.0.1:1"
    assert job.info["command"][-4:] == ["--executor", "ray", "--address", "127.0.0.1:1"]
    job = wait_for(lambda: (j := J.eval_job(runs_root / "tiny")) and j.state != "running" and j, timeout=180)
    assert job.state == "failed"  # no Ray here (or no cluster at that address): the page shows why
    at.run()
    assert "on Ray at `127.0.0.1:1`" in texts(at.markdown) and "failed" in texts(at.error)


def test_evaluate_page_runs_on_a_local_ray_cluster(runs_root, monkeypatch):
    """The Evaluate page on a real Ray cluster (a local head bound to loopback), end to end."""
    pytest.importorskip("ray", reason="the optional Ray extra is not installed (pip install -r requirements-ray.txt)")
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # Ray's socket paths are length-limited
    for k, v in {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}.items():
        monkeypatch.setenv(k, v)
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    subprocess.run(
        [
            *ray,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            f"--temp-dir={tmp}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    try:
        address = f"127.0.0.1:{port}"
        at = open_page("evaluate", run="tiny", **{"wb.ray_address": address})
        at.multiselect(key="eval.nets").set_value(["mlp"])
        at.number_input(key="eval.seeds").set_value(2)
        at.number_input(key="eval.epochs").set_value(1)
        at.button(key="eval.launch").click().run()
        job = wait_for(lambda: (j := J.eval_job(runs_root / "tiny")) and j.state != "running" and j, timeout=300)
        assert job.state == "finished", job.log
        ev = json.loads((runs_root / "tiny" / "evaluation.json").read_text())
        assert ev["executor"]["kind"] == "ray" and ev["complete"] and len(ev["synset"]["nets"]["mlp"]["per_seed"]) == 2
        at.run()
        assert f"on Ray at `{address}`" in texts(at.markdown)
    finally:
        subprocess.run([*ray, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


# -- runs the bench, its demo and the studies made: listed, read-only ----------------------------------------------
DEMO, CPU, STUDY, KEPT = (
    "demo / ipc1_dm_haba",
    "bench cpu / ipc10_dm_haba",
    "study frontier / ipc1_haba__s0",
    "study frontier / ipc1_haba__s1",
)


@pytest.fixture
def bench_runs(runs_root, tmp_path, monkeypatch) -> Path:
    """The app's runs (``tiny``, ``failed``) and, as the bench lays them out, the demo's beside them and the bench's and
    a study's in a bench results folder (``HABA_BENCH_DIR``); returns that folder."""
    repo = T.bench_tree(tmp_path / "repo", runs_root / "tiny")
    shutil.move(repo / "runs" / "demo", runs_root / "demo")  # make demo: --out runs
    results = repo / "bench" / "results"
    monkeypatch.setenv(C.BENCH_ENV, str(results))
    return results


def tree(*paths: Path) -> dict[str, int]:
    return {str(f): f.stat().st_mtime_ns for p in paths for f in sorted(p.rglob("*"))}


def test_runs_lists_the_bench_runs_read_only_with_the_reason(bench_runs, runs_root):
    untouched = tree(bench_runs, runs_root / "demo")
    at = open_page("runs", run=CPU)
    df = at.dataframe[0].value
    origins = {"tiny": "app", "failed": "app", DEMO: "demo", CPU: "bench cpu"}
    assert dict(zip(df["run"], df["from"], strict=True)) == {**origins, STUDY: "study frontier", KEPT: "study frontier"}
    assert "made by `python -m bench.run --profile cpu --out " in texts(at.info) and "rerun it there" in texts(at.info)
    for key in ("runs.resume", "runs.cancel"):
        assert at.button(key=key).disabled and "rerun it there" in at.button(key=key).help
    assert "runs.delete" not in {b.key for b in at.button} and "runs.confirm" not in {t.key for t in at.text_input}
    at.run()  # the poll
    at.selectbox(key="runs.run").set_value(KEPT).run()
    assert "Only the kept set" in texts(at.warning) and "python -m bench.studies frontier" in texts(at.info)
    # the app's own runs behave as before
    at.selectbox(key="runs.run").set_value("failed").run()
    assert not at.button(key="runs.resume").disabled and "runs.delete" in {b.key for b in at.button}
    assert not at.exception and tree(bench_runs, runs_root / "demo") == untouched


def test_explorer_opens_a_bench_run_and_a_kept_set(bench_runs):
    at = open_page("explorer", run=DEMO)
    assert plotly_charts(at) and at.selectbox(key="explorer.run").value == DEMO
    at.select_slider(key="explorer.step").set_value("step 2").run()
    at.selectbox(key="explorer.run").set_value(KEPT).run()
    assert plotly_charts(at) and "Snapshot: **final**" in texts(at.markdown)
    assert not at.exception and not at.error


def test_live_follows_a_study_run(bench_runs):
    at = open_page("live", run=STUDY)
    assert plotly_charts(at) and at.image and "finished" in texts(at.markdown)
    at.run()  # the poll reads the run again where it is
    assert not at.exception and not at.warning


def test_evaluate_does_not_offer_the_bench_runs(bench_runs, runs_root):
    """An evaluation writes into the run folder: the bench's stay as the bench left them."""
    at = open_page("evaluate", run=DEMO)
    assert at.multiselect(key="eval.runs").options == ["tiny"] and at.multiselect(key="eval.runs").value == ["tiny"]
    assert "4 run(s) made by `make demo`, the bench or the studies are not offered" in texts(at.caption)
    assert "±" in at.dataframe[0].value.loc["tiny", "convnet"] and not at.exception


def test_compare_overlays_a_bench_run_and_an_own_run(bench_runs):
    at = open_page("compare")
    at.multiselect(key="compare.runs").set_value(["tiny", DEMO]).run()
    curves = json.loads(plotly_charts(at)[0].proto.spec)
    assert {t["name"] for t in curves["data"]} == {"tiny", DEMO}
    assert set(at.dataframe[0].value["run"]) == {"tiny", DEMO} and not at.exception


# -- Findings ---------------------------------------------------------------------------------------------------------
FINDINGS_HEADINGS = ["Frontier", "Diversity", "Cross-architecture", "Constraint"]


def test_findings_not_run_yet(empty_runs, tmp_path, monkeypatch):
    from workbench import findings as FD

    monkeypatch.setenv(FD.FINDINGS_ENV, str(tmp_path / "findings"))
    at = open_page("findings")
    assert [h.value for h in at.header] == FINDINGS_HEADINGS
    assert texts(at.info).count("Not run yet") == 4 and "python -m bench.studies cross_arch" in texts(at.info)
    assert not at.error and not plotly_charts(at)


def test_findings_shows_every_study_and_overlays_a_run(runs_root, tmp_path, monkeypatch):
    from workbench import findings as FD

    root = T.fake_findings(tmp_path / "findings")
    monkeypatch.setenv(FD.FINDINGS_ENV, str(root))
    at = open_page("findings")
    assert [h.value for h in at.header] == FINDINGS_HEADINGS and not at.error
    assert "6 of 7 arms done (18 of 21 distillation seeds); 1 wait for their validation search" in texts(at.info)
    markdown = texts(at.markdown)
    assert "plain-300ep-dsa-bf16 (fake)" in markdown and "`python -m bench.studies frontier`" in markdown
    assert "all sets: **ρ = 0.90**" in markdown and "IPC 1: **ρ = -0.50**" in markdown
    assert "ResNet18 trains on the IPC-1 sets" in texts(at.caption)
    heatmap = json.loads(plotly_charts(at)[3].proto.spec)["data"][0]
    assert heatmap["x"][-1] == "resnet18" and [row[-1] for row in heatmap["text"]] == ["57.0", "62.0", ""]
    assert any(e.label.startswith("Differences between arms (1)") for e in at.expander)
    # frontier, diversity and its steps, cross-arch and gain, the constraint at each budget
    assert len(plotly_charts(at)) == 7 and [h.value for h in at.subheader] == ["IPC 1", "IPC 10"]
    frontier = json.loads(plotly_charts(at)[0].proto.spec)
    assert [t["name"] for t in frontier["data"]] == ["random real", "pixels", "HaBa"]
    # the user's finished, evaluated run as a point; its protocol is not the study's, and the page says so
    at.multiselect(key="findings.runs").set_value(["tiny"]).run()
    assert not at.exception
    frontier = json.loads(plotly_charts(at)[0].proto.spec)
    assert frontier["data"][-1]["name"] == "your runs" and frontier["data"][-1]["text"] == ["tiny"]
    assert "not the study's protocol" in texts(at.warning)


def test_findings_renders_the_committed_results(empty_runs, monkeypatch):
    """The page on the results this repository holds (the fabricated ones above cannot hold every real case, such
    as a comparison of one seed's sets, which has no standard error)."""
    from workbench import findings as FD

    monkeypatch.setenv(FD.FINDINGS_ENV, str(ROOT / "bench" / "results" / "findings"))
    at = open_page("findings")
    assert [h.value for h in at.header] == FINDINGS_HEADINGS and not at.exception and not at.error
    assert len(plotly_charts(at)) >= 4  # every study has committed results
    labels = [e.label for e in at.expander]
    assert any(label.startswith("Differences between arms") for label in labels)
    assert "bf16 emulated (float32 arithmetic rounded to bf16) in ipc10_" in texts(at.caption)


def test_findings_with_a_broken_file_says_so(empty_runs, tmp_path, monkeypatch):
    from workbench import findings as FD

    root = T.fake_findings(tmp_path / "findings")
    (root / "constraint.json").write_text("{half a file")
    (root / "diversity.json").unlink()
    monkeypatch.setenv(FD.FINDINGS_ENV, str(root))
    at = open_page("findings")
    assert "constraint.json is unreadable" in texts(at.error)
    assert "Not run yet: there is no `diversity.json`" in texts(at.info)
    assert [h.value for h in at.header] == FINDINGS_HEADINGS
