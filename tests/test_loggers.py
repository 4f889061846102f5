"""The logger sinks (haba_core.loggers): TensorBoard and offline W&B beside the run folder, which stays the source of
truth. Toy runs of a few seconds; `make test` installs both packages (requirements-loggers.txt)."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import threading

import pytest
import torch

from haba_core import io
from haba_core import runfolder as RF
from haba_core.cli import main
from haba_core.config import resolve_config
from haba_core.engine import distill
from haba_core.errors import ConfigError
from haba_core.loggers import SINKS, TensorBoardSink
from tests.conftest import tiny_config

# evaluations on the validation split (no test ledger needed); metrics on steps 3 and 4 (log_every and the last)
EVALUATING = ("eval_every=2", "eval.split=val", "data.val_per_class=5", "log_every=3")


def tensorboard_events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run / RF.TENSORBOARD), size_guidance={"scalars": 0, "images": 0}).Reload()


def test_every_sink_is_a_choice_of_the_config_field():
    from dataclasses import fields

    from haba_core.config import RunConfig

    (f,) = [f for f in fields(RunConfig) if f.name == "loggers"]
    assert f.metadata["choices"] == tuple(SINKS.list()) == ("tensorboard", "wandb")
    assert resolve_config(overrides=["loggers=wandb, tensorboard,wandb"]).loggers == ("wandb", "tensorboard")
    with pytest.raises(ConfigError, match="Did you mean 'tensorboard'"):
        resolve_config(overrides=["loggers=tensorbord"])
    with pytest.raises(ConfigError, match="beside a run folder"):
        distill(tiny_config("loggers=tensorboard"))


def test_tensorboard_holds_the_metrics_evaluations_and_snapshots_of_the_run(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install -r requirements-loggers.txt (make test installs it)")
    run = tmp_path / "run"
    d = distill(tiny_config("loggers=tensorboard", *EVALUATING), run)
    plain = distill(tiny_config(*EVALUATING), tmp_path / "plain")  # a sink only observes: the same set
    for k, v in plain.synset.state_dict().items():
        assert torch.equal(v, d.synset.state_dict()[k]), k
    events = tensorboard_events(run)
    metrics = io.read_jsonl_strict(run / RF.METRICS)
    assert [m["step"] for m in metrics] == [3, 4]
    names = [k for k in metrics[0] if k not in ("step", "wall")]
    assert {"loss", "time_s", "peak_rss_mb", "haba_cos"} <= set(names)
    for name in names:  # every value metrics.jsonl got, at its step (TensorBoard stores float32)
        logged = [(e.step, e.value) for e in events.Scalars(name)]
        assert logged == [(m["step"], pytest.approx(m[name], rel=1e-6)) for m in metrics], name
    evals = io.read_jsonl_strict(run / RF.EVALS)
    for stat in ("mean", "std"):
        logged = [(e.step, e.value) for e in events.Scalars(f"eval/convnet/{stat}")]
        assert logged == [(e["step"], pytest.approx(e["nets"]["convnet"][stat])) for e in evals] and len(logged) == 2
    images = events.Images("synset")  # one grid per snapshot, drawn as the Live run page draws it
    assert [i.step for i in images] == sorted(RF.snapshots(run)) == [2, 4]


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """Killed after the checkpoint at step 4, step 5 logged: TensorBoard shows steps 1-6 once, like metrics.jsonl."""
    pytest.importorskip("tensorboard", reason="pip install -r requirements-loggers.txt (make test installs it)")
    from haba_core.callbacks import Callback

    class KilledAfterStep5(Callback):
        def on_step(self, d, step, logs):
            if step == 5:
                raise RuntimeError("killed")

    run, cfg = tmp_path / "run", tiny_config("loggers=tensorboard", "iterations=6")
    with pytest.raises(RuntimeError, match="killed"):
        distill(cfg, run, callbacks=[KilledAfterStep5()])
    distill(cfg, run, resume=True)
    steps = [m["step"] for m in io.read_jsonl_strict(run / RF.METRICS)]
    assert steps == [1, 2, 3, 4, 5, 6] and [e.step for e in tensorboard_events(run).Scalars("loss")] == steps


def test_distill_log_from_the_command_line_loads_no_ui_package(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install -r requirements-loggers.txt (make test installs it)")
    from tests.conftest import distill_command

    args = distill_command(tmp_path / "run", 2, "haba", "--log", "tensorboard", sets=("snapshot_every=1",))[3:]
    code = (
        "import json, sys; from haba_core.cli import main; rc = main(sys.argv[1:]);"
        "print(json.dumps([rc, [m for m in ('streamlit', 'plotly', 'ipywidgets') if m in sys.modules]]))"
    )
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [0, []], r.stderr
    assert io.read_json_strict(tmp_path / "run" / RF.CONFIG)["loggers"] == ["tensorboard"]
    assert [i.step for i in tensorboard_events(tmp_path / "run").Images("synset")] == [1, 2]


def test_a_missing_package_named_on_the_command_line_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(TensorBoardSink, "package", "haba_no_such_package")
    args = ["distill", "--run-dir", str(tmp_path / "run"), "--quiet", "--set", "data.name=toy"]
    assert main([*args, "--log", "wandb,tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "Logging to TensorBoard needs the haba_no_such_package package" in err
    assert "pip install haba_no_such_package" in err and "requirements-loggers.txt" in err
    assert not (tmp_path / "run").exists()
    assert main([*args, "--set", "loggers=tensorboard"]) == 2  # named through --set: the same
    assert "pip install haba_no_such_package" in capsys.readouterr().err


@pytest.mark.parametrize("failure", ["package missing", "disk full mid-run"])
def test_a_failing_sink_says_so_once_and_the_run_goes_on(tmp_path, monkeypatch, capsys, failure):
    if failure == "package missing":  # e.g. a prepared run or a resume on a machine without it
        monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it raises ImportError
    else:
        pytest.importorskip("tensorboard", reason="pip install -r requirements-loggers.txt (make test installs it)")
        scalars = TensorBoardSink.scalars

        def full_after_step_2(self, step, values):
            if step > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            scalars(self, step, values)

        monkeypatch.setattr(TensorBoardSink, "scalars", full_after_step_2)
    run = tmp_path / "run"
    d = distill(tiny_config("loggers=tensorboard"), run)
    assert d.step == 4 and io.read_json_strict(run / RF.STATUS)["state"] == "finished"
    assert [m["step"] for m in io.read_jsonl_strict(run / RF.METRICS)] == [1, 2, 3, 4]  # the run folder has everything
    warnings = [line for line in capsys.readouterr().err.splitlines() if "TensorBoard logging stopped" in line]
    assert len(warnings) == 1 and "the run goes on" in warnings[0]
    if failure == "package missing":
        assert "pip install tensorboard" in warnings[0]
    else:
        assert "No space left on device" in warnings[0]
        assert [e.step for e in tensorboard_events(run).Scalars("loss")] == [1, 2]


class Trap:
    """A loopback listener that counts the connections made to it (a stand-in for every server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        self.sock.close()


def test_wandb_writes_an_offline_run_and_sends_nothing(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install -r requirements-loggers.txt (make test installs it)")
    trap = Trap()
    # every way out points at the trap, and the environment asks for online mode: the sink must stay offline
    for var in ("WANDB_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, trap.url)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "true")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    run = tmp_path / "run"
    try:
        distill(tiny_config("loggers=wandb", *EVALUATING), run)
    finally:
        trap.close()
    assert trap.connections == 0
    (offline,) = (run / RF.WANDB).glob("offline-run-*")
    assert not list((run / RF.WANDB).glob("run-*"))  # no online run
    (records,) = offline.glob("run-*.wandb")
    data = records.read_bytes()  # W&B's record file keeps each logged value as JSON text
    metrics = io.read_jsonl_strict(run / RF.METRICS)
    for m in metrics:
        for name in ("loss", "time_s", "peak_rss_mb"):
            assert name.encode() in data and json.dumps(m[name]).encode() in data, name
    assert b"eval/convnet/mean" in data
    assert len(list(offline.glob("files/media/images/synset_*.png"))) == 2
