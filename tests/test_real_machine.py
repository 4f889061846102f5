"""What a user meets on a real machine: disks that are read-only or fill up, settings larger than the data or the
memory, a data root that is missing or holds garbage, and evaluation jobs that fail.

Disks: a tmpfs mounted read-only or 1 MB small where the test may mount one (root on Linux), else the variant is
skipped and an injected ``OSError(EROFS / ENOSPC)`` covers the same path.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from haba_core import io
from haba_core import preflight as P
from haba_core import runfolder as RF
from haba_core.budget import plan_from_config
from haba_core.config import SynsetConfig
from haba_core.data import dataset_info, load_dataset
from haba_core.devices import cgroup_headroom, memory_available
from haba_core.engine import Distiller, distill
from haba_core.errors import ConfigError, DatasetNotFoundError, DiskError, HabaError, ResourceError
from tests.conftest import distill_command
from tests.test_data import write_idx_folder
from workbench import jobs as J
from workbench.testing import tiny_config

CHECKPOINT = "haba-checkpoint"


def run(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def haba(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "haba_core", *args], timeout=timeout)


def peak_rss_gb(args: list[str], timeout: float = 180) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``args`` as the only child of a fresh interpreter; (result, the child's peak resident memory in GB)."""
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
    )
    r = run([sys.executable, "-c", probe, *args], timeout=timeout)
    return r, int(r.stderr.strip().splitlines()[-1]) / 2**20


@pytest.fixture
def mount(tmp_path):
    """``mount(options)``: a fresh tmpfs with those mount options (skips the test where none can be mounted)."""
    mounted = []

    def make(options: str) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        r = run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], timeout=30)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the injected variant covers this")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def fail_writes(monkeypatch, pattern: str, code: int = errno.ENOSPC) -> None:
    """Every write through ``haba_core.io`` whose temporary file's path matches ``pattern`` fails with ``code`` when
    it is flushed to disk, as a full (or read-only) disk answers."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if re.search(pattern, os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(code, os.strerror(code))
        real(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file a write is for")
    monkeypatch.setattr(io.os, "fsync", fsync)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def assert_last_checkpoint_loads(run_dir: Path, step: int | None = None) -> None:
    latest = RF.latest_checkpoint(run_dir)
    assert latest is not None and latest.exists()
    _, meta = io.load_tensors(latest, expect_format=CHECKPOINT)
    if step is not None:
        assert io.read_json_strict(run_dir / "checkpoints" / "latest.json")["step"] == step


# ------------------------------------------------------------------------------------------------------ disks
def test_a_failed_write_leaves_no_half_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    """Injected: the write fails at its flush; the temporary file is removed, the old file is untouched."""
    target = tmp_path / "checkpoints" / "latest.json"
    io.write_json(target, {"file": "ckpt_0000002.safetensors", "step": 2})
    fail_writes(monkeypatch, r"latest\.json\.")
    with pytest.raises(DiskError, match="the disk is full") as err:
        io.write_json(target, {"file": "ckpt_0000004.safetensors", "step": 4})
    assert err.value.errno == errno.ENOSPC and "Free space" in str(err.value)
    assert io.read_json_strict(target)["step"] == 2 and not leftovers(tmp_path)


def test_a_full_tmpfs_refuses_a_large_write_and_keeps_the_old_file(mount):
    small = mount("size=1m")
    io.write_json(small / "latest.json", {"step": 2})
    with pytest.raises(DiskError, match="the disk is full") as err:
        io.atomic_write_bytes(small / "latest.json", b"x" * (2 << 20))
    assert err.value.errno == errno.ENOSPC and "MB are free there" in str(err.value)
    assert io.read_json_strict(small / "latest.json") == {"step": 2} and not leftovers(small)


def test_distill_into_a_read_only_disk_exits_2_at_once(mount):
    ro = mount("ro,size=1m")
    t = time.perf_counter()
    r = haba("distill", "--run-dir", str(ro / "run"), "--quiet", "--iterations", "1", "--set", "data.name=toy")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "the file system is read-only" in r.stderr and "writable disk" in r.stderr
    assert time.perf_counter() - t < 60


def test_distill_and_the_app_refuse_an_unwritable_folder_injected(tmp_path, monkeypatch, capsys):
    from haba_core.cli import main

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io.tempfile, "mkstemp", read_only)
    assert main(["distill", "--run-dir", str(tmp_path / "run"), "--quiet", "--set", "data.name=toy"]) == 2
    err = capsys.readouterr().err
    assert "\nerror: Cannot write" in err and "read-only" in err and "Traceback" not in err
    with pytest.raises(J.JobError, match="Could not create the run folder: .*read-only"):
        J.launch_run("r", tiny_config().to_dict(), root=tmp_path / "runs")


def test_the_app_refuses_a_read_only_runs_folder(mount):
    ro = mount("ro,size=1m")
    with pytest.raises(J.JobError, match="read-only"):
        J.launch_run("r", tiny_config().to_dict(), root=ro)


def test_a_disk_that_fills_during_a_run_fails_it_with_the_reason_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    """Injected: the snapshot of step 3 meets a full disk. The run fails with what happened and what to do, no half
    file is left, the checkpoint of step 2 loads, and the run resumes from it once the disk takes writes again."""
    cfg = tiny_config("synset.kind=pixels", "iterations=6", "snapshot_every=1", "checkpoint_every=2")
    fail_writes(monkeypatch, r"step_0000003\.safetensors\.")
    with pytest.raises(DiskError, match="the disk is full") as err:
        distill(cfg, tmp_path / "run")
    assert "its last checkpoint (step 2) is intact" in str(err.value) and "--resume" in str(err.value)
    status = io.read_json_strict(tmp_path / "run" / "status.json")
    assert status["state"] == "failed" and status["step"] == 3
    assert "the disk is full" in status["error"] and "Traceback" not in status["error"]
    assert not leftovers(tmp_path / "run")
    assert_last_checkpoint_loads(tmp_path / "run", step=2)
    monkeypatch.undo()
    assert distill(cfg, tmp_path / "run", resume=True).step == 6


def test_a_tmpfs_that_fills_during_a_run_fails_it_clearly(mount):
    """A real 1 MB disk: each step writes a snapshot (125 kB) and a checkpoint until one no longer fits."""
    small = mount("size=1m")
    sets = ("snapshot_every=1", "checkpoint_every=1")
    args = distill_command(small / "run", 40, "pixels", "--budget-ipc", "4", sets=sets)
    r = run(args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "the disk is full" in r.stderr and "--resume" in r.stderr
    status = io.read_json_strict(small / "run" / "status.json")
    assert status["state"] == "failed" and "the disk is full" in status["error"]
    assert not leftovers(small / "run")
    assert_last_checkpoint_loads(small / "run")


# ------------------------------------------------------------------------------------------ bounds from the data
def test_a_batch_larger_than_a_class_is_clamped_with_a_note(tmp_path):
    """The absurd batch that grew a process to 24 GB: clamped to the class (60 toy images), in the run's config."""
    r, peak = peak_rss_gb(distill_command(tmp_path / "r", 1, "haba", sets=("method.batch_real=100000000",)))
    assert r.returncode == 0, r.stderr
    assert "note: method.batch_real=100000000 is more real images than class 0 of toy holds (60); using 60" in r.stderr
    assert io.read_json_strict(tmp_path / "r" / "config.json")["method"]["params"]["batch_real"] == 60
    assert "batch_real" in io.read_json_strict(tmp_path / "r" / "status.json")["notes"][0]
    assert peak < 4, f"peak {peak:.1f} GB"  # a default toy run peaks at about 1.3 GB
    # the default (256) on small data: the same clamp, and the run works
    d = Distiller(tiny_config("method.batch_real=256", "data.options.n_per_class=20"))
    assert d.cfg.method_params["batch_real"] == 20 and "using 20" in d.notes[0]


def test_bf16_asked_for_where_it_is_emulated_gets_a_note(monkeypatch):
    """On a CPU without native bf16 (AVX2 only) bf16 is emulated, no faster than float32: a run that asks for bf16
    there is told so; where bf16 is native, or where the run leaves precision to ``auto``, nothing is said."""
    from haba_core import protocol

    cfg = tiny_config("eval.precision=bf16", "method.precision=bf16")
    cpu = torch.device("cpu")
    monkeypatch.setattr(protocol, "resolve_precision", lambda p, device=None: "fp32")  # an AVX2-only CPU
    (note,) = P.precision_notes(cfg, cpu)
    assert note.startswith("eval.precision=bf16 and method.precision=bf16: this cpu has no native bf16")
    assert P.precision_notes(tiny_config(), cpu) == []  # auto: float32 here, nothing to say
    monkeypatch.setattr(protocol, "resolve_precision", lambda p, device=None: "bf16")  # AVX512-BF16 or AMX
    assert P.precision_notes(cfg, cpu) == []


def test_settings_that_cannot_fit_in_memory_are_refused_before_allocation(tmp_path):
    args = distill_command(tmp_path / "r", 1, "pixels", "--n-bases", "10000000", sets=("synset.init=noise",))
    r, peak = peak_rss_gb(args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "This run needs at least" in r.stderr and "synset.n_bases" in r.stderr and "Lower that setting" in r.stderr
    assert peak < 4, f"peak {peak:.1f} GB"  # refused before the 627 GB set was allocated


def test_the_memory_check_reads_cgroup_limits_v1_and_v2(tmp_path):
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal: 67108864 kB\nMemAvailable: 33554432 kB\n")  # 32 GB available
    (proc / "self" / "cgroup").write_text("0::/job/task\n")
    (root / "job" / "task").mkdir(parents=True)
    (root / "job" / "memory.max").write_text(f"{4 * 2**30}\n")  # 4 GB for the job
    (root / "job" / "memory.current").write_text(f"{3 * 2**30}\n")
    (root / "job" / "memory.stat").write_text(f"anon 1\ninactive_file {2**29}\n")
    (root / "job" / "task" / "memory.max").write_text("max\n")
    assert cgroup_headroom(proc, root) == (4 * 2**30, int(1.5 * 2**30))
    free, where = memory_available(torch.device("cpu"), proc, root)
    assert free == int(1.5 * 2**30) and "cgroup allows 4.0 GB" in where
    (proc / "self" / "cgroup").write_text("4:memory:/docker/abc\n")  # v1
    (root / "memory" / "docker" / "abc").mkdir(parents=True)
    (root / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text(f"{2**31}\n")
    (root / "memory" / "docker" / "abc" / "memory.usage_in_bytes").write_text(f"{2**30}\n")
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # the root: no limit
    assert cgroup_headroom(proc, root) == (2**31, 2**30)
    (root / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_headroom(proc, root) is None
    free, where = memory_available(torch.device("cpu"), proc, root)
    assert free == 32 * 2**30 and "MemAvailable" in where


def test_a_run_larger_than_its_memory_limit_is_refused_naming_the_setting(monkeypatch):
    monkeypatch.setattr(P, "memory_available", lambda device: (2**20, "this process's cgroup allows 0.0 GB"))
    with pytest.raises(ResourceError, match="cgroup allows 0.0 GB. The largest part is") as err:
        Distiller(tiny_config("method.batch_real=60"))
    assert "method.batch_real" in str(err.value) or "synset.n_bases" in str(err.value)


def test_bounds_from_the_images_and_the_classes(tmp_path, capsys):
    from haba_core.cli import main

    toy = dataset_info("toy")
    with pytest.raises(ConfigError, match="synset.basis_size=64 is larger than toy's 28x28 images; use at most 28"):
        plan_from_config(toy, SynsetConfig(kind="pixels", budget_ipc=10, basis_size=64))
    with pytest.raises(ConfigError, match=r"synset.init=real .* 61 .* class 0 has only 60.*synset.init=noise"):
        Distiller(tiny_config("synset.kind=pixels", "synset.n_bases=61"))
    # a random real subset larger than a class: refused in the driver, before any network trains
    run_dir = tmp_path / "r"
    small = ("synset.kind=pixels", "synset.n_bases=5", "synset.init=noise", "data.train_limit=40", "iterations=1")
    distill(tiny_config(*small), run_dir)
    assert main(["evaluate", "--run", str(run_dir), "--baseline", "random", "--seeds", "1", "--epochs", "1"]) == 2
    assert "--baseline random needs 5 distinct real training images of every class" in capsys.readouterr().err
    job = io.read_json_strict(run_dir / RF.EVAL_JOB)
    assert job["state"] == "failed" and job["exit_code"] == 2 and "--baseline random" in job["error"]


# ------------------------------------------------------------------------------------------------ --data-root
def test_a_missing_data_root_is_an_error(tmp_path):
    where = ["--dataset", "fashion_mnist", "--data-root", str(tmp_path / "nowhere")]
    r = haba("distill", "--run-dir", str(tmp_path / "r"), "--quiet", "--iterations", "1", *where)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"The data root {tmp_path / 'nowhere'}" in r.stderr and "does not exist" in r.stderr
    # the app's New run page says so before launching
    from workbench import newrun as NR

    d = tiny_config("data.root_only=true", f"data.root={tmp_path / 'nowhere'}").to_dict()
    assert any("does not exist" in e for e in NR.check(d).errors)


def test_an_explicit_root_never_falls_back_to_the_system_copy(tmp_path, caplog):
    system = tmp_path / "debian"
    write_idx_folder(system, n_train=30, n_test=10)
    garbage = tmp_path / "mine"
    garbage.mkdir()
    (garbage / "notes.txt").write_text("not a dataset")
    with pytest.raises(DatasetNotFoundError, match=f"Only {garbage} was read") as err:
        load_dataset("fashion_mnist", root=garbage, root_only=True, download=False, system_dir=str(system))
    assert str(system) not in str(err.value)
    # files there that cannot be decoded are an error naming the file, with or without root_only
    write_idx_folder(garbage / "fashion_mnist", gz=False)
    (garbage / "fashion_mnist" / "train-images-idx3-ubyte").write_bytes(b"\x01\x02garbage")
    for root_only in (True, False):
        with pytest.raises(HabaError, match="train-images-idx3-ubyte is not an IDX file"):
            load_dataset("fashion_mnist", root=garbage, root_only=root_only, download=False, system_dir=str(system))
    # the default lookup may fall back, and says so loudly, and records it
    with caplog.at_level(logging.WARNING, logger="haba_core"):
        d = load_dataset("fashion_mnist", root=tmp_path / "empty", download=False, system_dir=str(system))
    assert len(d.labels_train) == 30 and d.source["outside_root"] is True
    assert f"holds none of its files; read {system}" in caplog.text


def test_the_run_records_which_files_it_read(tmp_path):
    root = tmp_path / "data"
    write_idx_folder(root / "fashion_mnist")
    what = ["--dataset", "fashion_mnist", "--data-root", str(root), "--synset", "pixels", "--set", "net.width=16"]
    r = haba("distill", "--run-dir", str(tmp_path / "r"), "--quiet", "--iterations", "1", *what)
    assert r.returncode == 0, r.stderr
    record = io.read_json_strict(tmp_path / "r" / RF.DATA)
    assert record["root_only"] is True and record["root"] == str(root) and "outside_root" not in record
    files = {Path(f["path"]).name: f for f in record["files"]}
    stems = ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
    assert set(files) == {f"{s}-ubyte.gz" for s in stems}
    for f in record["files"]:
        assert f["sha256"] == hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest()
        assert Path(f["path"]).is_relative_to(root)
    # a resumed run honours a new --data-root too: a missing one is refused
    gone = ["--data-root", str(tmp_path / "gone")]
    r = haba("distill", "--run-dir", str(tmp_path / "r"), "--resume", "--quiet", "--iterations", "2", *gone)
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------ evaluation jobs
def finished_job(run_dir: Path, timeout: float = 180) -> J.EvalJob:
    end = time.time() + timeout
    while time.time() < end:
        job = J.eval_job(run_dir)
        if job is not None and job.state != "running":
            return job
        time.sleep(0.3)
    raise AssertionError(f"the evaluation did not end: {J.eval_job(run_dir)}")


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        ({"address": "127.0.0.1:1"}, "Ray"),  # nothing listens there (or Ray is not installed)
        ({"extra": ["eval.nonsense=1"]}, "Unknown config key 'eval.nonsense'"),
    ],
)
def test_a_failed_evaluation_is_shown_failed_with_its_reason_over_older_results(runs_root, kwargs, reason):
    tiny = runs_root / "tiny"
    before = (tiny / RF.EVALUATION).read_bytes()
    J.launch_evaluation("tiny", ["mlp"], 1, 1, baseline=False, **kwargs)
    os.utime(tiny / RF.EVALUATION)  # results that look new: the job's state must not come from their age
    job = finished_job(tiny)
    assert job.state == "failed" and job.info["exit_code"] == 2 and reason in job.info["error"], job
    assert (tiny / RF.EVALUATION).read_bytes() == before


def test_an_evaluation_records_its_own_end(runs_root):
    tiny = runs_root / "tiny"
    J.launch_evaluation("tiny", ["mlp"], 1, 1, baseline=False)
    job = finished_job(tiny)
    assert job.state == "finished" and job.info["exit_code"] == 0 and job.info["error"] is None, job.log
    assert job.info["nets"] == ["mlp"] and job.info["pid"] and job.info["finished_at"] >= job.info["started_at"]


def test_a_killed_evaluation_is_failed_even_with_fresh_results(runs_root):
    tiny = runs_root / "tiny"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (tiny / RF.EVAL_JOB).write_text(json.dumps({"state": "running", "pid": proc.pid, "started_at": time.time() - 20}))
    os.utime(tiny / RF.EVALUATION)
    job = J.eval_job(tiny)
    assert job.state == "failed" and "without recording how it ended" in job.info["error"]
