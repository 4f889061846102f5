"""The workbench's logic without Streamlit: run folders, jobs, the New-run form model, grids, figures, safety."""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench import diversity as D
from workbench import figures as F
from workbench import grids as G
from workbench import jobs as J
from workbench import newrun as NR
from workbench import runs as R
from workbench import testing as T

ROOT = Path(__file__).resolve().parents[1]


def wait_for(predicate, timeout: float = 90.0, every: float = 0.2):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


# -- names and paths ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "run_1", "fm-dm.haba_ipc1", "A" * 100])
def test_valid_names(name, tmp_path):
    assert R.run_path(name, tmp_path) == tmp_path.resolve() / name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "-x", "a b", "x" * 101, "/abs", "é"])
def test_names_cannot_escape_the_runs_folder(name, tmp_path):
    with pytest.raises(R.RunNameError):
        R.run_path(name, tmp_path)


def test_symlinked_run_outside_the_folder_is_refused(tmp_path):
    root, outside = tmp_path / "runs", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(R.RunNameError, match="outside"):
        R.run_path("link", root)
    with pytest.raises(R.RunNameError):
        J.delete_run("link", "link", root)
    assert outside.exists()


def test_runs_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv(R.RUNS_ENV, str(tmp_path))
    assert R.runs_dir() == tmp_path.resolve()
    monkeypatch.delenv(R.RUNS_ENV)
    assert R.runs_dir() == (Path.cwd() / "runs").resolve()


def test_suggest_name_is_valid_and_fresh(tmp_path):
    name = R.suggest_name(["fashion_mnist", "dm", "haba", "ipc1"], tmp_path)
    assert R.check_name(name) and name.startswith("fashion_mnist_dm_haba_ipc1_")
    (tmp_path / name).mkdir()
    assert R.suggest_name(["fashion_mnist", "dm", "haba", "ipc1"], tmp_path) != name


# -- reading run folders --------------------------------------------------------------------------------------
def test_list_and_read_a_real_run(runs_root):
    runs = {r.name: r for r in R.list_runs()}
    assert set(runs) == {"tiny", "failed"}
    tiny = runs["tiny"]
    assert tiny.state == "finished" and tiny.step == 4 and tiny.progress == 1.0 and tiny.eta_s is None
    assert (tiny.dataset, tiny.method, tiny.synset_kind) == ("toy", "dm", "haba")
    assert tiny.storage["n_hallucinators"] == 2
    records = R.read_metrics(tiny)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"loss", "dm", "haba_cos"} <= set(R.loss_names(records))
    assert list(R.snapshots(tiny)) == [2, 4]
    synset = R.load_snapshot(R.snapshots(tiny)[2])
    assert synset.kind == "haba" and synset.n_hallucinators == 2
    ev = R.read_evaluation(tiny)
    assert set(ev["synset"]["nets"]) == {"convnet"} and "random_real" in ev
    assert len(R.evaluation_history(tiny)) == 1
    failed = runs["failed"]
    assert failed.state == "failed" and "simulated failure" in failed.error and not failed.is_active
    assert failed.can_resume


def test_torn_and_corrupt_files_do_not_raise(runs_root):
    path = runs_root / "tiny"
    with open(path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": ')  # a line being written
    assert len(R.read_metrics(R.get_run("tiny"))) == 4
    (path / "status.json").write_text("{not json")
    run = R.get_run("tiny")
    assert run.state == "failed" and run.problems


def test_dead_process_is_detected(runs_root):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    status = json.loads((runs_root / "tiny" / "status.json").read_text())
    status.update(state="running", pid=proc.pid)
    (runs_root / "tiny" / "status.json").write_text(json.dumps(status))
    run = R.get_run("tiny")
    assert run.state == R.DIED and run.can_resume and not run.is_active
    assert "process" in run.error.lower()
    assert R.pid_alive(os.getpid(), expect="") is True
    assert R.pid_alive(os.getpid(), expect="definitely-not-this-program") is False  # a reused pid
    assert R.pid_alive(None) is False and R.pid_alive(123, host="another-host") is None


def test_unknown_run_and_missing_runs_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(R.RUNS_ENV, str(tmp_path / "nothing"))
    assert R.list_runs() == [] and R.get_run("x") is None and R.get_run("../etc") is None


# -- safety -----------------------------------------------------------------------------------------------------
def test_workbench_never_unpickles():
    sources = [ROOT / "app.py", *sorted((ROOT / "workbench").rglob("*.py"))]
    bad = re.compile(r"\bpickle\b|torch\.load\(|allow_pickle|joblib|dill|cloudpickle|np\.load\(")
    offenders = [str(p.relative_to(ROOT)) for p in sources if bad.search(p.read_text())]
    assert offenders == []


def test_a_pickled_snapshot_is_refused_not_loaded(runs_root, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    snap = R.snapshots(R.get_run("tiny"))[2]
    snap.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(Exception, match="safetensors|not a readable"):
        R.load_snapshot(snap)
    torch_style = tmp_path / "model.pt"
    torch.save({"x": torch.zeros(1)}, torch_style)
    with pytest.raises(Exception, match="safetensors|not a readable"):
        R.load_snapshot(torch_style)
    assert not marker.exists()


def test_server_binds_to_localhost_by_default():
    toml = (ROOT / ".streamlit" / "config.toml").read_text()
    assert re.search(r'^address\s*=\s*"127\.0\.0\.1"', toml, re.M)
    assert "--server.address 127.0.0.1" in (ROOT / "Makefile").read_text()


# -- the New-run form -----------------------------------------------------------------------------------------
def test_default_form_launches_fashion_mnist_dm_haba_ipc1():
    base = NR.preset_config(NR.default_preset(NR.presets()))
    result = NR.check(NR.build_config(base, {"synset.basis_size": NR.AUTO}))
    assert result.ok, result.errors
    cfg = result.config
    assert (cfg["data"]["name"], cfg["method"]["name"], cfg["synset"]["kind"]) == ("fashion_mnist", "dm", "haba")
    assert cfg["synset"]["budget_ipc"] == 1.0 and cfg["synset"]["basis_size"] == 14
    p = result.plan.to_dict()
    assert p["n_bases"] == 3 and p["n_hallucinators"] == 5 and p["floats_total"] <= p["budget_floats"]
    assert any("14x14" in n for n in result.notes)
    rows = dict(NR.breakdown_rows(result.plan))
    assert {"Bases per class", "Hallucinators", "Images it yields", "Floats stored"} <= set(rows)


def test_invalid_combinations_are_explained():
    base = NR.preset_config(NR.default_preset(NR.presets()))
    full = NR.check(NR.build_config(base, {"synset.basis_size": None}))
    assert not full.ok and any("basis_size=20" in e or "cannot hold" in e for e in full.errors)
    missing = NR.check(NR.build_config(base, {"method.name": "mtt"}), backends=["dm"])
    assert any("MTT backend is not available" in e for e in missing.errors)
    typo = NR.check(NR.build_config(base, {}, ["method.lr_imgg=3"]))
    assert any("lr_imgg" in e for e in typo.errors)
    cuda = NR.check(NR.build_config(base, {"device": "cuda"}))
    assert torch.cuda.is_available() or any("CUDA" in e for e in cuda.errors)
    assert "mtt" not in NR.available_backends()[0] or NR.expert_field("mtt").key == "method.params.expert_dir"


def test_every_config_field_has_a_widget_spec():
    from haba_core.config import RunConfig

    keys = {s.key for s in NR.field_specs()}
    flat = RunConfig().to_dict()
    for section, value in flat.items():
        if section in ("method", "net"):
            continue
        expected = {f"{section}.{k}" for k in value if k != "params"} if isinstance(value, dict) else {section}
        assert expected <= keys, expected - keys
    # every synset kind's own options (synset.params.*), not only the default kind's
    from haba_core.synsets import SYNSETS

    options = {f"synset.params.{o}" for kind in SYNSETS.list() for o in SYNSETS.get(kind).option_names()}
    assert options and options <= keys, options - keys
    dm = {s.key for s in NR.method_specs("dm")}
    assert {"method.params.lr_img", "method.params.batch_real"} <= dm
    assert {s.key for s in NR.net_specs("convnet", {})} >= {"net.params.width"}


def test_switching_backend_drops_the_other_backends_params():
    base = NR.preset_config(NR.default_preset(NR.presets()))
    d = NR.build_config(base, {"method.name": "dc", "method.params.lr_img": 0.1})
    assert d["method"] == {"name": "dc", "params": {"lr_img": 0.1}}


def test_widget_values_round_trip():
    for spec in NR.field_specs():
        default = spec.default
        back = NR.config_value(spec, NR.widget_value(spec, default))
        assert back == (list(default) if isinstance(default, tuple) else default), spec


# -- jobs: real processes ---------------------------------------------------------------------------------------
def test_launch_cancel_resume_delete(runs_root):
    cfg = T.tiny_config("iterations=2000", "snapshot_every=1000", "checkpoint_every=1000").to_dict()
    run = J.launch_run("long", cfg)
    assert run.state == "queued" and (runs_root / "long" / "config.json").exists()
    with pytest.raises(J.JobError, match="already exists"):
        J.launch_run("long", cfg)
    wait_for(lambda: R.get_run("long").step >= 1)
    assert R.get_run("long").state == "running" and R.get_run("long").eta_s
    with pytest.raises(J.JobError, match="cancel it"):
        J.delete_run("long", "long")
    J.cancel_run("long")  # the engine checkpoints and marks the run cancelled
    cancelled = wait_for(lambda: (r := R.get_run("long")).state == "cancelled" and r)
    assert (runs_root / "long" / "checkpoints" / "latest.json").exists() and cancelled.can_resume
    resumed = J.resume_run("long")
    assert resumed.state == "queued" and "--resume" in resumed.status["command"]
    assert R.pid_alive(resumed.status["pid"])
    J.cancel_run("long")  # while still queued: the launcher records the cancellation
    wait_for(lambda: R.get_run("long").state == "cancelled")
    assert "distill" in (runs_root / "long" / J.LOG).read_text()
    with pytest.raises(J.JobError, match="confirm"):
        J.delete_run("long", "wrong")
    J.delete_run("long", "long")
    assert not (runs_root / "long").exists()


def test_job_arguments_are_checked(runs_root):
    with pytest.raises(J.JobError, match="architecture"):
        J.launch_evaluation("tiny", [], 1, 1)
    with pytest.raises(J.JobError, match="no run"):
        J.launch_evaluation("nope", ["convnet"], 1, 1)
    with pytest.raises(J.JobError, match="finished"):
        J.resume_run("tiny")
    with pytest.raises(R.RunNameError):
        J.launch_run("../evil", T.tiny_config().to_dict())
    assert J.cancel_run("tiny").endswith("nothing to cancel.")
    args = J.evaluate_args(Path("r"), ["convnet", "mlp"], 3, 5, True, ["eval.pairing=all"])
    assert args[:6] == ["evaluate", "--run", "r", "--nets", "convnet,mlp", "--seeds"]
    assert args[-4:] == ["--baseline", "random", "--set", "eval.pairing=all"]


def test_eval_job_is_what_the_evaluate_process_recorded(tmp_path):
    """The job's state is the evaluate process's own record (finished, or failed with its exit code and reason);
    a process that died without recording its end failed, whatever results lie in the folder."""
    from haba_core import io
    from haba_core import runfolder as RF

    run = tmp_path / "r"
    run.mkdir()
    dead = {"state": "running", "pid": 2**22 + 12345, "host": socket.gethostname(), "started_at": time.time() - 5}
    (run / J.EVAL_JOB).write_text(json.dumps(dead))
    (run / "evaluation.json").write_text(json.dumps({"complete": True, "failed": []}))
    job = J.eval_job(run)
    assert job.state == "failed" and "without recording how it ended" in job.info["error"]
    with RF.recording_evaluation(run) as outcome:  # as `haba evaluate` records itself (here: this process)
        assert io.read_json_strict(run / J.EVAL_JOB)["state"] == "running"
        outcome.update(exit_code=4, error="1 evaluation task(s) failed after 2 attempt(s) each (synset/mlp/s0)")
    job = J.eval_job(run)
    assert job.state == "failed" and job.info["exit_code"] == 4 and "1 evaluation task(s) failed" in job.info["error"]
    with pytest.raises(RuntimeError), RF.recording_evaluation(run):
        raise RuntimeError("a bug")
    job = J.eval_job(run)
    assert job.state == "failed" and job.info["exit_code"] == 1 and "RuntimeError: a bug" in job.info["error"]
    with RF.recording_evaluation(run):
        pass
    job = J.eval_job(run)
    assert job.state == "finished" and job.info["exit_code"] == 0 and job.info["error"] is None


def test_engine_commands():
    assert {"distill", "evaluate"} <= set(J.engine_commands())


# -- grids, diversity, figures -----------------------------------------------------------------------------------
def test_hallucinator_by_basis_grid(runs_root):
    synset = R.load_snapshot(R.snapshots(R.get_run("tiny"))[4])
    g = G.class_grid(synset, 3)
    k, n = synset.n_hallucinators, synset.n_bases
    assert g.cells.shape == (k, n, 28, 28, 3) and g.bases.shape == (n, 28, 28, 3) and g.images.shape[:2] == (k, n)
    img = G.grid_image(g, scale=2)
    lay = img.info["grid"]
    assert (lay["rows"], lay["cols"]) == (k + 1, n)
    assert G.png_bytes(img)[:8] == b"\x89PNG\r\n\x1a\n"
    assert G.cell_image(g, -1, 0, size=280).size == (280, 280)
    fig = F.grid_figure(
        img,
        lay["rows"],
        lay["cols"],
        lay["cell"],
        lay["origin"],
        lay["pitch"],
        G.row_labels(g),
        [f"b{i}" for i in range(n)],
    )
    assert len(fig.data[1].x) == (k + 1) * n
    assert G.overview_image(synset, max_per_class=4).size[1] > 10 * 28


def test_unnormalize_uses_the_dataset_mean_and_std():
    from haba_core.data import DatasetInfo

    info = DatasetInfo("x", 3, (2, 2), 2, (0.5, 0.25, 0.0), (0.5, 0.5, 0.5), ("a", "b"))
    out = G.to_uint8(torch.zeros(1, 3, 2, 2), info)
    assert out.shape == (1, 2, 2, 3) and tuple(out[0, 0, 0]) == (128, 64, 0)
    grey = G.to_uint8(torch.ones(1, 1, 2, 2), info)  # single-channel bases of an RGB set
    assert grey.shape == (1, 2, 2, 3) and len(set(grey[0, 0, 0])) == 1


def test_diversity_measures_differences():
    same = torch.ones(3, 2, 1, 8, 8)
    d = D.hallucination_diversity(same)
    assert d["pixel_within"] == pytest.approx(0.0, abs=1e-6)
    varied = torch.randn(3, 2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    d = D.hallucination_diversity(varied)
    assert d["pixel_within"] > 0.5 and d["pixel_between"] > 0.5 and d["pairs_within"] == 2 * 3


def test_diversity_on_a_real_synset(runs_root):
    synset = R.load_snapshot(R.final_synset_path(R.get_run("tiny")))
    g = G.class_grid(synset, 0)
    d = D.hallucination_diversity(g.images, synset.info)
    assert d["feature_error"] is None and d["feature_within"] is not None and d["feature_within"] >= 0
    again = D.hallucination_diversity(g.images, synset.info)
    assert again["feature_within"] == d["feature_within"]  # the feature net is seeded


def test_figures_from_real_files(runs_root):
    run = R.get_run("tiny")
    fig = F.loss_figure(R.read_metrics(run), smoothing=0.5, log_y=True)
    names = R.loss_names(R.read_metrics(run))
    assert len(fig.data) == 2 * len(names)  # raw + smoothed per loss
    assert F.smooth([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])
    df = F.accuracy_records({"tiny": R.read_evaluation(run)})
    assert set(df["source"]) == {"synset", "random_real"} and set(df["net"]) == {"convnet"}
    table = F.accuracy_table(df)
    assert "±" in table.loc["tiny", "convnet"] and "storage (IPC-eq.)" in table.columns
    heat = F.accuracy_heatmap(df)
    assert list(heat.data[0].y) == ["tiny", "tiny · random real"]
    assert F.accuracy_vs_storage(df, "convnet").data
    assert F.overlay_figure({"tiny": R.read_metrics(run)}, "loss", x="time").data
    assert "mean" in df.to_csv(index=False).splitlines()[0]


def test_ablation_figure_has_accuracy_and_both_diversities_per_arm():
    import pandas as pd

    table = pd.DataFrame(
        {"arm": ["haba", "off"], "convnet acc %": [70.0, 69.0], "convnet std": [0.5, 0.4]}
        | {f"{s} {w}": [0.2, 0.1] for s in ("pixel", "feature") for w in ("within", "between")}
    )
    fig = F.ablation_figure(table, "convnet", "validation accuracy (%)")
    assert [list(t.x) for t in fig.data] == [["haba", "off"]] * 5  # accuracy, then within/between twice
    assert list(fig.data[0].error_y.array) == [0.5, 0.4]
    assert [t.name for t in fig.data if t.showlegend] == ["within a basis", "between bases"]
    assert not F.ablation_figure(table.iloc[:0], "convnet").data


def test_blown_up_images_are_flagged(runs_root):
    synset = R.load_snapshot(R.final_synset_path(R.get_run("tiny")))
    assert G.health_note(synset) is None
    with torch.no_grad():
        synset.bases.mul_(1e6)
    assert "blown up" in G.health_note(synset)
    with torch.no_grad():
        synset.bases.fill_(float("nan"))
    assert "NaN" in G.health_note(synset)


def test_logic_modules_do_not_import_streamlit():
    code = (
        "import sys; import workbench.runs, workbench.jobs, workbench.newrun, workbench.grids, workbench.figures, "
        "workbench.diversity, workbench.testing; assert 'streamlit' not in sys.modules, 'streamlit imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_streamlit_reads_the_settings_that_keep_watching_cheap():
    """Streamlit silently ignores a misspelled option: ask it (from the app's folder) what it actually uses."""
    code = (
        "from streamlit import config; config.get_config_options(force_reparse=True); "
        "print(config.get_option('server.fileWatcherType'), config.get_option('runner.postScriptGC'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["none", "False"]
