"""The run folder's one owner (haba_core.runfolder): locked status writes, prepared runs, layout helpers."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from haba_core import io
from haba_core import runfolder as RF
from haba_core.config import RunConfig
from haba_core.errors import ConfigError
from workbench import jobs as J
from workbench import runs as R
from workbench.testing import tiny_config

WRITER = """
import sys
from haba_core import runfolder as RF
from haba_core.config import RunConfig
run, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    RF.update_status(run, **{f"{tag}{i}": i})
"""


def test_concurrent_status_writers_lose_no_update(tmp_path):
    """Two processes doing read-modify-write on status.json at once: every field of both survives."""
    run = tmp_path / "run"
    RF.update_status(run, state="queued")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(run), tag, "150"]) for tag in ("a", "b")]
    assert [p.wait(120) for p in procs] == [0, 0]
    status = json.loads((run / RF.STATUS).read_text())
    assert {f"a{i}" for i in range(150)} | {f"b{i}" for i in range(150)} <= set(status)
    assert status["state"] == "queued"


def test_update_status_only_if_guards_a_state_change(tmp_path):
    RF.update_status(tmp_path, state="running", pid=7)
    assert RF.update_status(tmp_path, only_if={"state": "queued"}, state="cancelled")["state"] == "running"
    assert RF.update_status(tmp_path, only_if={"state": "running"}, state="cancelled")["state"] == "cancelled"


def test_a_prepared_run_is_started_as_configured_without_resume(tmp_path):
    run = tmp_path / "prepared"
    cfg = tiny_config("iterations=2")
    RF.prepare(run, cfg.to_dict())
    assert RF.is_prepared(run) and R.read_run(run).state == "queued"
    out = subprocess.run(
        [sys.executable, "-m", "haba_core", "distill", "--run-dir", str(run), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    status = io.read_json_strict(run / RF.STATUS)
    assert status["state"] == "finished" and status["step"] == 2 and "queued_at" in status
    assert RunConfig.from_dict(io.read_json_strict(run / RF.CONFIG)) == cfg
    assert not RF.is_prepared(run)  # it ran: a second start needs --resume or a new folder
    again = subprocess.run(
        [sys.executable, "-m", "haba_core", "distill", "--run-dir", str(run), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode != 0 and "--resume" in again.stderr


def test_a_prepared_run_refuses_config_flags(tmp_path):
    run = tmp_path / "prepared"
    RF.prepare(run, tiny_config().to_dict())
    out = subprocess.run(
        [sys.executable, "-m", "haba_core", "distill", "--run-dir", str(run), "--synset", "pixels"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "prepared run" in out.stderr and "Traceback" not in out.stderr
    from haba_core.engine import distill

    with pytest.raises(ConfigError, match="prepared with another config"):
        distill(tiny_config("synset.kind=pixels"), run)


def test_the_app_launches_a_prepared_run_not_a_resume(tmp_path):
    root = tmp_path / "runs"
    run = J.launch_run("fresh", tiny_config("iterations=2").to_dict(), root)
    deadline = time.time() + 120
    while time.time() < deadline and R.get_run("fresh", root).is_active:
        time.sleep(0.3)
    status = io.read_json_strict(run.path / RF.STATUS)
    assert status["state"] == "finished", R.tail(run.path / RF.LOG)
    assert "--resume" not in status["command"]
    assert "--resume" not in (run.path / RF.LOG).read_text().splitlines()[0]


def test_snapshot_helpers_follow_the_layout(tmp_path):
    for step in (10, 2):
        p = RF.snapshot_path(tmp_path, step)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    (tmp_path / RF.SNAPSHOTS / "notes.txt").write_text("")
    assert list(RF.snapshots(tmp_path)) == [2, 10]
    assert not RF.has_checkpoint(tmp_path)
