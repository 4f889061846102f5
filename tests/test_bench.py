"""The benchmark harness on generated data: every cell runs, results are written, reruns skip done cells."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cell import cell_overrides, experts_dir
from bench.profiles import PROFILES
from bench.run import experts_command


def test_bench_smoke_runs_and_resumes(tmp_path):
    # two cells at a time, one thread each: the scheduler's path (`make bench` runs the CPU profile so)
    cmd = [sys.executable, "-m", "bench.run", "--smoke", "--jobs", "2", "--out", str(tmp_path)]
    ledger = tmp_path / "ledger.jsonl"
    env = {**os.environ, "HABA_TEST_LEDGER": str(ledger)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "smoke.json").read_text())
    assert res["complete"] and not res["failed"]
    assert res["schedule"]["jobs"] == 2 and "2 at a time" in r.stdout
    logs = tmp_path / "smoke" / "logs"
    assert all((logs / f"{n}.log").exists() for n in ("ipc2_dm_haba", "ipc2_random_real", "experts_toy"))
    # the MTT cell started only after its experts had finished
    order = [ln for ln in r.stdout.splitlines() if "experts for toy ready" in ln or "[run ] ipc2_mtt" in ln]
    assert [("ready" in ln) for ln in order] == [True, False], r.stdout
    names = [c["cell"]["name"] for c in res["cells"]]
    assert names == ["ipc2_random_real", "ipc2_dm_pixels", "ipc2_dm_haba", "ipc2_mtt_pixels"]
    for c in res["cells"]:
        assert 0 <= c["accuracy_mean"] <= 1 and len(c["accuracy_per_seed"]) == 2
        assert c["storage"]["floats_total"] <= 2 * 10 * 784  # equal storage: within the IPC-2 budget
        assert c["peak_rss_mb"] > 0
    haba = res["cells"][2]
    assert haba["sec_per_iter"] > 0 and 0 < haba["conv_share"] < 1
    # what each cell distilled in, as its run resolved it (random real distills nothing), and its test pass time
    assert res["cells"][0]["distill_precision"] is None
    assert {c["distill_precision"] for c in res["cells"][1:]} <= {"fp32", "bf16"}
    assert all(c["eval_test_s_median"] > 0 for c in res["cells"])
    assert res["machine"]["cores"] and res["git_commit"] and "bench.run --smoke" in res["command"]
    # each cell keeps its seeds, its full resolved config and its own commit, and reports the sample std over n
    for c in res["cells"]:
        a, b = c["accuracy_per_seed"]
        assert c["accuracy_n"] == 2 and c["accuracy_std"] == pytest.approx(abs(a - b) / 2**0.5)
        assert c["config"]["eval"]["epochs"] == 3 and len(c["git_commit"]) == 40 and isinstance(c["git_dirty"], bool)
    assert res["cells"][0]["seeds"] == {"distill": None, "eval": [0, 1]}  # random real: one draw per network seed
    assert res["cells"][1]["seeds"] == {"distill": 0, "eval": [2000, 2001]}  # seed + 1000 * iterations + k
    assert res["cells"][1]["config"]["synset"]["kind"] == "pixels"
    # every cell's test evaluation is a line of the ledger (here the override; by default <out>/test_ledger.jsonl)
    lines = [json.loads(x) for x in ledger.read_text().splitlines()]
    assert sorted(x["run"] for x in lines) == sorted(f"smoke/{n}" for n in names)
    assert {x["purpose"] for x in lines} == {"bench cell"} and all(x["networks"] == 2 for x in lines)
    assert not (tmp_path / "test_ledger.jsonl").exists()
    md = (tmp_path / "smoke.md").read_text()
    assert "| 2 | DM + HaBa |" in md and "random real" in md and "sample std (ddof 1) over n = 2" in md
    # a rerun skips finished cells and leaves their results untouched
    before = (tmp_path / "smoke" / "cells" / "ipc2_dm_haba.json").stat().st_mtime_ns
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0 and r.stdout.count("[skip]") == 4
    assert len(ledger.read_text().splitlines()) == 4  # skipped cells test nothing
    assert (tmp_path / "smoke" / "cells" / "ipc2_dm_haba.json").stat().st_mtime_ns == before


def test_mtt_cells_read_the_experts_the_profile_makes():
    """The experts command writes where every MTT cell of the CPU and paper profiles looks for experts."""
    for profile in (PROFILES["cpu"], PROFILES["paper"]):
        out = Path("/x/results") / profile.name
        mtt = [c for c in profile.cells if c.method == "mtt"]
        assert mtt
        for cell in mtt:
            cmd = experts_command(profile, experts_dir(out, cell.dataset), cell.dataset)
            made = cmd[cmd.index("--out") + 1]
            assert cmd[cmd.index("--dataset") + 1] == cell.dataset
            assert f"method.expert_dir={made}" in cell_overrides(profile, cell, out)


def test_the_synsets_profile_covers_every_registered_kind_at_each_budget():
    from haba_core.synsets import list_synsets

    cells = PROFILES["synsets"].cells
    for budget in (1, 10):
        kinds = {c.synset for c in cells if c.budget_ipc == budget and c.method == "dm"}
        assert kinds == set(list_synsets())
        assert any(c.method is None and c.budget_ipc == budget for c in cells)  # the random-real floor


def test_make_demo_is_the_demo_profile():
    """`make demo` runs the bench's demo profile: HaBa and pixels at one budget, with the random-real floor."""
    make = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "-m bench.run --profile demo" in make
    demo = PROFILES["demo"]
    assert {(c.method, c.synset) for c in demo.cells} == {("dm", "haba"), ("dm", "pixels"), (None, "pixels")}
    assert len({c.budget_ipc for c in demo.cells}) == 1


def test_profile_notes_are_printed_under_the_table():
    from bench.profiles import PROFILES
    from bench.run import markdown

    assert any("10/50" in n for n in PROFILES["cpu"].notes)  # the CPU presets' loops, stated as a deviation
    result = {
        "profile": "cpu",
        "description": "d",
        "command": "c",
        "git_commit": "0" * 12,
        "finished_at": "t",
        "machine": {"cpu": "x", "cores": 2, "torch": "2"},
        "cells": [],
        "failed": [],
        "complete": True,
        "notes": list(PROFILES["cpu"].notes),
    }
    assert "Note: DC and DSA cells run outer/inner loops 1/1" in markdown(result)
    assert "Cells ran at" not in markdown(result)


def test_report_names_the_commits_its_kept_cells_ran_at():
    """A report rewritten by a later invocation keeps older cells: its header says which commits ran them."""
    from bench.run import markdown

    folder = Path(__file__).resolve().parents[1] / "bench/results/relr/cpu_fp32/cells"
    cells = [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
    commits = sorted({c["git_commit"][:12] for c in cells})
    assert len(commits) > 1  # the float32 twins ran at two pinned commits
    result = {
        "profile": "cpu_fp32", "description": "d", "command": "c", "git_commit": "c" * 40, "finished_at": "t",
        "machine": {"cpu": "x", "cores": 2, "torch": "2"}, "failed": [], "complete": False, "cells": cells,
    }  # fmt: skip
    header = markdown(result).splitlines()[2]
    assert "Cells ran at " + ", ".join(f"`{c}`" for c in commits) in header


def test_every_results_file_has_the_one_provenance_header():
    """The command that reruns it (arguments quoted as a shell needs them), the commit with its dirty flag, the
    machine and the time, under the keys committed results files have."""
    import re

    from bench.provenance import provenance

    h = provenance("bench.val_search", ["--name", "a b", "--set", "x=1"])
    assert list(h) == ["command", "git_commit", "machine", "finished_at"]
    assert h["command"] == "python -m bench.val_search --name 'a b' --set x=1"
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", h["git_commit"]) and {"cpu", "cores", "cuda"} <= set(h["machine"])
    assert provenance("scripts/probe.py", [])["command"] == "python scripts/probe.py"
