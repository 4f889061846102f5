"""The findings' studies (bench.studies): arms over distillation seeds, shapes from validation searches, the
seed-level summary recomputed by hand, and the cross-architecture cells that evaluate another study's runs."""

import dataclasses
import json
import shutil
import statistics

import pytest

from bench import studies, study_design, study_report
from bench.cell import cell_overrides, child, run_cell
from bench.profiles import Cell, Profile
from haba_core.ledger import LedgerEntry


def _search_file(folder, name, *rows, protocol="p1"):
    """A val_search result: rows of (combination, validation mean); its best is the highest mean."""
    body = [{"combination": c, "mean": m, "protocol": {"id": protocol}} for c, m in rows]
    best = max(body, key=lambda r: r["mean"])["combination"]
    (folder / f"{name}.json").write_text(json.dumps({"rows": body, "best": best}))


def test_an_arm_waits_for_its_search_then_takes_its_best_combination(tmp_path, monkeypatch):
    monkeypatch.setattr(study_design, "SEARCHES", tmp_path)
    search = studies.Search("s", ("synset.kind=haba",), ("synset.basis_size=14,10",))
    arm = studies.Arm("ipc1_haba", 1, "haba", ("haba.lambda_cos=0",), search)
    assert arm.cells() == [] and arm.shape() is None
    _search_file(
        tmp_path,
        "s",
        ({"synset.basis_size": "14", "synset.n_hallucinators": "2"}, 0.70),
        ({"synset.basis_size": "10", "synset.n_hallucinators": "2"}, 0.71),
    )
    cells = arm.cells()
    assert [c.name for c in cells] == ["ipc1_haba__s0", "ipc1_haba__s1", "ipc1_haba__s2"]
    for seed, c in zip(studies.DISTILL_SEEDS, cells, strict=True):
        assert c.method == "dm" and c.synset == "haba" and c.budget_ipc == 1
        # the search's shape, then the arm's own factor (it wins), then the seed
        assert c.overrides[-4:] == (
            "synset.basis_size=10",
            "synset.n_hallucinators=2",
            "haba.lambda_cos=0",
            f"seed={seed}",
        )
    assert "--test" not in search.command()  # a search for a study never touches the test set


def test_an_arm_takes_the_best_row_over_a_search_and_its_follow_ups_with_their_fixed_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(study_design, "SEARCHES", tmp_path)
    kb = ("synset.kind=haba", "synset.budget_ipc=10")
    lr = studies.Search("lr", (*kb, "synset.basis_size=20", "method.compile=true"), ("synset.lr_hallucinators=1,2",))
    shape = studies.Search("shape", kb, ("synset.basis_size=full,20",), follow_ups=(lr,))
    arm = studies.Arm("ipc10_haba", 10, "haba", search=shape)
    _search_file(tmp_path, "shape", ({"synset.basis_size": "full"}, 0.80), ({"synset.basis_size": "20"}, 0.81))
    assert arm.shape() is None  # a follow-up has not run yet
    _search_file(tmp_path, "lr", ({"synset.lr_hallucinators": "1"}, 0.805), ({"synset.lr_hallucinators": "2"}, 0.82))
    # the lr row wins, with the basis size its search held fixed (not the kind, budget or execution flags)
    assert arm.shape() == ["synset.basis_size=20", "synset.lr_hallucinators=2"]
    assert [s.name for s in studies.Study("x", "q", (arm,)).searches()] == ["shape", "lr"]
    _search_file(tmp_path, "lr", ({"synset.lr_hallucinators": "1"}, 0.79), ({"synset.lr_hallucinators": "2"}, 0.8))
    assert arm.shape() == ["synset.basis_size=20"]  # the shape search's own best
    _search_file(tmp_path, "lr", ({"synset.lr_hallucinators": "2"}, 0.9), protocol="p2")
    with pytest.raises(ValueError, match="different protocols"):
        arm.shape()


def test_a_choice_at_the_edge_of_the_sizes_searched_is_flagged_until_a_follow_up_brackets_it(tmp_path, monkeypatch):
    monkeypatch.setattr(study_design, "SEARCHES", tmp_path)
    kb = ("synset.kind=pixels", "synset.budget_ipc=2")
    small = studies.Search("small", kb, ("synset.basis_size=10,7",))
    first = studies.Search("first", kb, ("synset.basis_size=full,20,14",))
    _search_file(
        tmp_path, "first", *(({"synset.basis_size": v}, m) for v, m in (("full", 0.7), ("20", 0.71), ("14", 0.75)))
    )
    assert first.at_edge(first.choice()) == "14x14 is the smallest size searched"
    _search_file(tmp_path, "small", ({"synset.basis_size": "10"}, 0.74), ({"synset.basis_size": "7"}, 0.72))
    both = dataclasses.replace(first, follow_ups=(small,))
    assert both.at_edge(both.choice()) is None  # 20 > 14 > 10: bracketed
    _search_file(tmp_path, "small", ({"synset.basis_size": "10"}, 0.76), ({"synset.basis_size": "7"}, 0.72))
    assert both.at_edge(both.choice()) is None  # 14 > 10 > 7
    top = studies.Search("top", kb, ("synset.basis_size=14,10",))
    _search_file(tmp_path, "top", ({"synset.basis_size": "14"}, 0.75), ({"synset.basis_size": "10"}, 0.74))
    assert top.at_edge(top.choice()) == "14x14 is the largest size searched"  # full size was not tried


def test_a_search_that_holds_another_searchs_choice_waits_for_it_and_refuses_a_stale_run(tmp_path, monkeypatch):
    monkeypatch.setattr(study_design, "SEARCHES", tmp_path)
    kb = ("synset.kind=pixels", "synset.budget_ipc=1")
    dm = studies.Search("dm_size", kb, ("synset.basis_size=full,10",))
    mtt = studies.Search("mtt_lr", kb, ("method.lr_img=30,300",), config=studies.PRESETS["mtt"], base=dm, experts="x/e")
    arm = studies.Arm("ipc1_mtt_pixels_lowres", 1, "pixels", search=mtt, method="mtt")
    assert [s.name for s in studies.Study("x", "q", (arm,)).searches()] == ["dm_size", "mtt_lr"]  # the base first
    assert arm.shape() is None and mtt.fixed() is None
    with pytest.raises(ValueError, match="dm_size, which has not run yet"):
        mtt.command()
    _search_file(tmp_path, "dm_size", ({"synset.basis_size": "full"}, 0.70), ({"synset.basis_size": "10"}, 0.76))
    command = " ".join(mtt.command())
    assert "--set synset.basis_size=10" in command and "method.expert_dir=x/e " in command
    assert "method.compile" not in command and "--test" not in command  # MTT has no compiled pass; no test set
    _search_file(tmp_path, "mtt_lr", ({"method.lr_img": "30"}, 0.74), ({"method.lr_img": "300"}, 0.73))
    record = json.loads((tmp_path / "mtt_lr.json").read_text())
    (tmp_path / "mtt_lr.json").write_text(json.dumps({**record, "command": command}))
    assert arm.shape() == ["synset.basis_size=10", "method.lr_img=30"]
    _search_file(tmp_path, "dm_size", ({"synset.basis_size": "full"}, 0.70), ({"synset.basis_size": "10"}, 0.69))
    with pytest.raises(ValueError, match="ran without synset.basis_size=full"):  # its rows are of the old size
        arm.shape()


def test_an_mtt_search_first_trains_experts_that_never_see_the_held_out_images(tmp_path, monkeypatch):
    monkeypatch.setattr(study_design, "SEARCHES", tmp_path)
    ran = []
    monkeypatch.setattr(studies.subprocess, "run", lambda cmd, **kw: ran.append(cmd))
    folder = "r/experts/fashion_mnist"  # the dataset's name last, as the experts recipe is per dataset
    mtt = studies.Search("mtt_lr", ("synset.kind=pixels",), ("method.lr_img=30,300",), experts=folder)
    study = studies.Study("x", "q", (studies.Arm("a", 1, "pixels", search=mtt, method="mtt"),))
    studies.run_searches(study, log=lambda *_: None)
    experts, search = ran
    assert experts[experts.index("--out") + 1] == str(studies.ROOT / folder) and "experts" in experts
    assert experts[-2:] == ["--set", "data.val_per_class=500"] and search == mtt.command()
    assert "eval.precision=bf16" in search and "method.precision=bf16" in search  # the studies' protocol


def test_the_ipc10_haba_arms_take_dms_lr_searches_but_mtt_takes_the_shape_only():
    arms = {a.name: a for a in studies.frontier_arms((1, 10))}
    assert arms["ipc10_haba"].search.follow_ups and arms["ipc10_haba_long"].search.follow_ups
    assert arms["ipc10_mtt_haba"].search.follow_ups == ()
    assert arms["ipc10_mtt_haba"].search.name == arms["ipc10_haba"].search.name
    # shape follow-ups at the preset's lrs count for MTT too (IPC 1: 20x20 bases), those at a DM-chosen lr do not
    assert [f.name for f in arms["ipc1_mtt_haba"].search.follow_ups] == ["dm_haba_ipc1_shape_large"]


def test_every_study_cell_is_unique_and_random_real_is_not_distilled():
    for study in studies.STUDIES.values():
        names = [c.name for c in study.profile().cells]
        assert len(names) == len(set(names)), study.name
    frontier = studies.STUDIES["frontier"].profile()
    rr = [c for c in frontier.cells if "random_real" in c.name]
    assert rr and all(c.method is None for c in rr)


def test_every_comparison_names_two_arms_of_its_study_at_one_length_and_budget():
    for study in studies.STUDIES.values():
        arms = {a.name: a for a in study.arms}
        for label, arm, base in study.comparisons:
            assert arm in arms and base in arms, (study.name, label)
            a, b = arms[arm], arms[base]
            assert a.budget == b.budget and a.tags.get("iterations") == b.tags.get("iterations"), (study.name, label)


def _record(per_seed, seed, net="convnet"):
    return {
        "accuracy_by_net": {net: {"mean": sum(per_seed) / len(per_seed), "per_seed": per_seed}},
        "seeds": {"distill": seed},
        "storage": {"floats_total": 7420, "ipc_equivalent": 0.946, "images_per_class": 15},
        "protocol": {"name": "p", "id": "x"},
    }


def test_arm_summary_is_the_mean_of_set_means_with_the_sample_std_across_seeds():
    sets = [[0.70, 0.72, 0.74], [0.75, 0.75, 0.76], [0.71, 0.69, 0.70]]
    recs = [_record(s, i) for i, s in enumerate(sets)]
    out = study_report.arm_summary(studies.Arm("a", 1, "haba"), recs, ("convnet",))["per_net"]["convnet"]
    means = [100 * sum(s) / 3 for s in sets]
    grand = sum(means) / 3
    sd = (sum((m - grand) ** 2 for m in means) / (3 - 1)) ** 0.5  # ddof 1, written out
    within = sum(statistics.stdev([100 * v for v in s]) for s in sets) / 3
    assert out["mean"] == pytest.approx(grand) and out["std_seeds"] == pytest.approx(sd)
    assert out["std_nets"] == pytest.approx(within) and out["n_seeds"] == 3 and out["n_nets"] == 3


def test_report_merges_the_borrowed_rows_and_the_other_studys_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(study_design, "SEARCHES", tmp_path)
    arms = (studies.Arm("ipc1_pixels", 1, "pixels"),)
    study = studies.Study("xa", "q", arms, nets=("mlp",), merge_from="fr")
    for s in studies.DISTILL_SEEDS:
        for name, net, acc in (("xa", "mlp", 0.5 + s / 100), ("fr", "convnet", 0.7)):
            d = tmp_path / name / "cells"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"ipc1_pixels__s{s}.json").write_text(json.dumps({**_record([acc, acc], s, net), "git_commit": "c"}))
    r = study_report.report(study, tmp_path)
    row = r["arms"][0]
    assert r["nets"] == ["convnet", "mlp"] and r["complete"]
    assert row["per_net"]["convnet"]["mean"] == pytest.approx(70.0)
    assert row["per_net"]["mlp"]["mean"] == pytest.approx(51.0) and row["per_net"]["mlp"]["std_seeds"] == 1.0
    assert (tmp_path / "xa.md").read_text().count("| ipc1_pixels |") == 1


def test_a_cross_architecture_cell_evaluates_the_set_the_other_study_kept(tmp_path, ledger_file):
    """A study cell keeps its distilled set beside its record; a cell with ``run_of`` trains other networks on that
    set (no distillation, no run folder needed) and refuses a set distilled with another config."""
    common = ("data.name=toy", "net.width=16", "haba.extractor_width=16", "snapshot_every=0", "eval.test_batch=200")
    sets = ("iterations=2", "method.batch_real=16", "synset.n_hallucinators=2", "seed=1")
    src = Cell("ipc2_haba__s1", 2, "dm", "haba", None, sets)
    frontier = Profile("fr", "toy", common, ("convnet",), 2, 2, (src,), keep_sets=True)
    assert child(frontier, src.name, tmp_path) == 0
    kept = tmp_path / "fr" / "sets" / f"{src.name}.safetensors"
    assert kept.exists() and (tmp_path / "fr" / "cells" / f"{src.name}.json").exists()
    shutil.rmtree(tmp_path / "fr" / "runs")  # git-ignored: another machine has only the committed files
    profile = Profile("xa", "toy", common, ("mlp", "lenet"), 2, 2, ())
    cell = Cell(src.name, 2, "dm", "haba", None, sets, run_of="fr")
    workdir = tmp_path / "xa" / "runs" / cell.name
    ledger = LedgerEntry(tmp_path / "ledger.jsonl", "xa/" + cell.name, "bench cell")
    res = run_cell(profile, cell, workdir, ledger)
    assert set(res["eval"]["nets"]) == {"mlp", "lenet"} and res["distill_seed"] == 1
    assert res["evaluated_set"] == f"fr/sets/{src.name}.safetensors" and not (workdir / "run").exists()
    tested = [json.loads(line) for line in ledger_file.read_text().splitlines()]
    mine = [t for t in tested if t["run"] == "xa/" + cell.name]  # one line per network group, as each lands
    assert sum(t["networks"] for t in mine) == 4 and {n for t in mine for n in t["nets"]} == {"mlp", "lenet"}
    other = Cell(src.name, 2, "dm", "haba", None, (*sets[:-1], "seed=2"), run_of="fr")
    with pytest.raises(SystemExit, match="another config"):
        run_cell(profile, other, workdir, ledger)
    with pytest.raises(SystemExit, match="not there yet"):
        run_cell(profile, dataclasses.replace(cell, name="ipc2_haba__s2"), workdir, ledger)


def test_a_stopped_cross_architecture_cell_resumes_with_the_networks_it_has_not_trained(tmp_path, ledger_file):
    """A cross-architecture cell keeps each network's result as it lands; a rerun trains only the missing ones,
    and its accuracies are those the whole-set evaluation (``evaluate_synset``, as the earlier cells ran) gives."""
    from haba_core import runfolder as RF
    from haba_core.config import resolve_config
    from haba_core.data import load_dataset
    from haba_core.evaluate import evaluate_synset
    from haba_core.synsets import load_synset

    common = ("data.name=toy", "net.width=16", "haba.extractor_width=16", "snapshot_every=0", "eval.test_batch=200")
    sets = ("iterations=2", "method.batch_real=16", "synset.n_hallucinators=2", "seed=1")
    src = Cell("ipc1_haba__s1", 1, "dm", "haba", None, sets)
    assert child(Profile("fr", "toy", common, ("convnet",), 2, 2, (src,), keep_sets=True), src.name, tmp_path) == 0
    profile = Profile("xa", "toy", common, ("mlp", "lenet"), 2, 2, ())
    cell = Cell(src.name, 1, "dm", "haba", None, sets, run_of="fr")
    workdir = tmp_path / "xa" / "runs" / cell.name
    ledger = LedgerEntry(tmp_path / "ledger.jsonl", "xa/" + cell.name, "bench cell")
    first = run_cell(profile, cell, workdir, ledger)
    assert first["networks_reused"] == 0
    cells = sorted(workdir.glob("eval/cells/*/lenet*"))
    assert len(cells) == 2, cells  # one file per network
    stopped = {n: first["eval"]["nets"][n]["per_seed"] for n in ("mlp", "lenet")}
    cells[1].unlink()  # as if the cell had been stopped while its last network trained
    again = run_cell(profile, cell, workdir, ledger)
    assert again["networks_reused"] == 3 and {n: again["eval"]["nets"][n]["per_seed"] for n in stopped} == stopped
    assert (workdir / RF.EVALUATION).exists()

    cfg = resolve_config(overrides=cell_overrides(profile, cell, tmp_path))  # the cell's own config
    ds = load_dataset("toy", root=cfg.data.root)
    synset = load_synset(tmp_path / "fr" / "sets" / f"{src.name}.safetensors")
    look = LedgerEntry(tmp_path / "ledger.jsonl", "whole", "bench cell")
    whole = evaluate_synset(
        synset, ds, cfg.eval, ("mlp", "lenet"), 2, dsa_strategy=cfg.dsa_strategy, seed=1, ledger=look
    )
    assert {n: whole["nets"][n]["per_seed"] for n in stopped} == stopped
    assert whole["protocol"]["id"] == again["eval"]["protocol"]["id"]


def test_a_cross_architecture_cell_with_two_threads_trains_two_networks_at_once_to_the_same_results(tmp_path):
    """A cell given 2 threads (``--jobs 1`` on 2 cores) trains its networks in 2 processes of one thread each;
    every network's accuracy is the one the cell trains in its own process with one thread."""
    import torch

    from haba_core import io
    from haba_core import runfolder as RF

    common = ("data.name=toy", "net.width=16", "haba.extractor_width=16", "snapshot_every=0", "eval.test_batch=200")
    sets = ("iterations=2", "method.batch_real=16", "synset.n_hallucinators=2", "seed=1")
    src = Cell("ipc1_haba__s1", 1, "dm", "haba", None, sets)
    assert child(Profile("fr", "toy", common, ("convnet",), 2, 2, (src,), keep_sets=True), src.name, tmp_path) == 0
    profile = Profile("xa", "toy", common, ("mlp", "lenet"), 2, 2, ())
    cell = Cell(src.name, 1, "dm", "haba", None, sets, run_of="fr")
    ledger = LedgerEntry(tmp_path / "ledger.jsonl", "xa/" + cell.name, "bench cell")
    before = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            workdir = tmp_path / f"xa{threads}" / "runs" / cell.name  # beside fr/, whose set it evaluates
            res = run_cell(profile, cell, workdir, ledger)
            results[threads] = {n: res["eval"]["nets"][n]["per_seed"] for n in ("mlp", "lenet")}
            ex = io.read_json_strict(workdir / RF.EVALUATION)["executor"]
            assert (ex["workers"], ex["processes"]) == ((1, False) if threads == 1 else (2, True)), ex
    finally:
        torch.set_num_threads(before)
    assert results[2] == results[1]


def test_a_comparison_is_the_difference_of_means_with_the_unpaired_standard_error():
    study = studies.Study("s", "q", (), comparisons=(("a - b", "a", "b"),))
    arms = [
        {"arm": "a", "per_net": {"convnet": {"mean": 75.0, "std_seeds": 0.6, "n_seeds": 3}}},
        {"arm": "b", "per_net": {"convnet": {"mean": 71.0, "std_seeds": 0.8, "n_seeds": 2}}},
    ]
    (c,) = study_report.differences(study, arms)
    assert c["diff"] == pytest.approx(4.0) and c["se"] == pytest.approx((0.36 / 3 + 0.64 / 2) ** 0.5)
    # one seed has no spread to speak of: the difference of the sets of the seed both arms have, no standard error
    arms[0]["per_net"]["convnet"].update(set_seeds=[0, 1, 2], set_means=[74.0, 75.0, 76.0])
    arms[1]["per_net"]["convnet"].update(n_seeds=1, set_seeds=[1], set_means=[70.5])
    (c,) = study_report.differences(study, arms)
    assert c["diff"] == pytest.approx(75.0 - 70.5) and c["se"] is None and c["same_seeds"] == [1]
    assert study_report.difference_text(c) == "+4.50 (the sets of seed 1 only: no standard error)"
    arms[1]["per_net"]["convnet"]["set_seeds"] = [3]  # no seed in common: nothing to compare
    assert study_report.differences(study, arms) == []


def test_a_single_seed_is_printed_without_a_spread_across_seeds():
    from bench.study_report import _fmt

    one = {"mean": 75.38, "std_seeds": 0.0, "std_nets": 0.14, "n_seeds": 1}
    assert _fmt(one) == "75.38 (one seed; nets 0.14)"
    assert _fmt({**one, "std_seeds": 0.5, "n_seeds": 3}) == "75.38 +- 0.50 (nets 0.14)"


def test_the_report_shows_a_pending_arm_and_each_setting_once_the_arms_own_winning(tmp_path, monkeypatch):
    monkeypatch.setattr(study_design, "SEARCHES", tmp_path)
    _search_file(tmp_path, "shape", ({"synset.n_hallucinators": "5"}, 0.8))
    arms = (
        studies.Arm("ipc1_k2", 1, "haba", ("synset.n_hallucinators=2",), studies.Search("shape", (), ())),
        studies.Arm("ipc1_wait", 1, "haba", search=studies.Search("missing", (), ())),
    )
    md = study_report.report(studies.Study("s", "q", arms), tmp_path / "out")
    text = (tmp_path / "out" / "s.md").read_text()
    assert "| ipc1_k2 | 1 |  |  | synset.n_hallucinators=2 | 0/3 |" in text
    assert "| ipc1_wait | 1 |  |  | pending search | 0/3 |" in text and not md["complete"]


def test_an_arm_cut_to_fewer_seeds_runs_and_expects_only_those(tmp_path):
    xa = studies.STUDIES["cross_arch"]
    by_budget = {b: [c.name for c in xa.profile().cells if c.name.startswith(f"ipc{b}_")] for b in (1, 10)}
    assert by_budget[10] and all(n.endswith("__s0") for n in by_budget[10])  # IPC 10: the sets of seed 0
    assert {n[-3:] for n in by_budget[1]} == {"_s0", "_s1", "_s2"}
    assert not any("long" in n for n in by_budget[10])  # the preset length's sets, not the 800-iteration ones
    one = studies.Arm("ipc10_pixels", 10, "pixels", ("synset.basis_size=full",), seeds=(0,))
    study = studies.Study("s", "q", (one, dataclasses.replace(one, name="ipc1_pixels", budget=1, seeds=())))
    cells = tmp_path / "out" / "s" / "cells"
    cells.mkdir(parents=True)
    for name in ("ipc10_pixels__s0", "ipc1_pixels__s0", "ipc1_pixels__s1", "ipc1_pixels__s2"):
        (cells / f"{name}.json").write_text(json.dumps({**_record([0.8, 0.82], 0), "git_commit": "abc"}))
    r = study_report.report(study, tmp_path / "out")
    assert [(a["n_seeds"], a["expected_seeds"]) for a in r["arms"]] == [(1, 1), (3, 3)] and r["complete"]
    row = "| ipc10_pixels | 10 | 7,420 | 15 | synset.basis_size=full | 1/1 |"
    assert row in (tmp_path / "out" / "s.md").read_text()


def test_a_result_of_a_cell_whose_settings_changed_is_redone_and_not_reported(tmp_path):
    """A follow-up search may change an arm's shape after some of its cells ran: those results are stale."""
    from bench.run import _todo

    cell = Cell("ipc2_haba__s0", 2, "dm", "haba", None, ("method.compile=true", "synset.basis_size=14", "seed=0"))
    ran = {"cell": {"overrides": ["seed=0", "synset.basis_size=20", "method.compile=true"], "run_of": ""}}
    assert cell.changes_since(ran) == ["synset.basis_size=14 (ran synset.basis_size=20)"]
    same_order_aside = ["seed=0", "synset.basis_size=20", "method.compile=true", "synset.basis_size=14"]
    assert cell.changes_since({"cell": {"overrides": same_order_aside}}) == []  # the later value of a key wins
    assert cell.changes_since({}) == []  # a record older than the check does not say
    moved = dataclasses.replace(cell, overrides=cell.overrides[:2])
    assert moved.changes_since({"cell": {"overrides": list(cell.overrides)}}) == ["seed unset (ran seed=0)"]

    out = tmp_path / "s"
    (out / "cells").mkdir(parents=True)
    (out / "runs" / cell.name).mkdir(parents=True)
    protocol = {"name": "p", "id": "x", "epochs": 300}
    record = {**_record([0.8, 0.82], 0), "protocol": protocol, "git_commit": "abc"}
    (out / "cells" / f"{cell.name}.json").write_text(json.dumps({**record, **ran}))
    logged = []
    assert (
        _todo(Profile("x", "q", (), ("convnet",), 1, 1, ()), [cell], out, logged.append) == [cell]
        and not (out / "runs" / cell.name).exists()
    )
    assert logged == [
        "[redo] ipc2_haba__s0: the cell changed since its result ran: synset.basis_size=14 (ran synset.basis_size=20)"
    ]
    current = {**record, "cell": {"overrides": list(cell.overrides), "run_of": ""}}
    (out / "cells" / f"{cell.name}.json").write_text(json.dumps(current))
    assert _todo(Profile("x", "q", (), ("convnet",), 1, 1, ()), [cell], out, logged.append) == []

    arm = studies.Arm("ipc2_haba", 2, "haba", ("method.compile=true", "synset.basis_size=14"))
    cells = tmp_path / "out" / "s" / "cells"
    cells.mkdir(parents=True)
    for s, overrides in ((0, ["synset.basis_size=20"]), (1, [])):
        c = arm.cells()[s]
        rec = {**record, "cell": {"name": c.name, "overrides": overrides or list(c.overrides)}, "seeds": {"distill": s}}
        (cells / f"{c.name}.json").write_text(json.dumps({**rec, "machine": {"bf16": "emulated"}}))
    r = study_report.report(studies.Study("s", "q", (arm,)), tmp_path / "out")
    assert r["arms"][0]["n_seeds"] == 1 and r["arms"][0]["stale"][0].startswith("ipc2_haba__s0: ")
    md = (tmp_path / "out" / "s.md").read_text()
    assert "- ipc2_haba__s0: " in md
    assert r["bf16_emulated"] == ["ipc2_haba__s1"] and "bf16 emulated (float32 arithmetic" in md  # the fresh one
    assert "the others ran on native bf16" not in md  # the only counted cell is the emulated one


def test_a_study_holds_its_precision_so_a_machine_without_native_bf16_cannot_switch_protocols(tmp_path, monkeypatch):
    """A study fixes bf16 (its committed results' protocol) for evaluation and distillation; a record of another
    precision is redone and left out of the report; a CPU without native bf16 runs it emulated and is told so."""
    from bench import run as bench_run
    from haba_core import bf16

    profile = studies.STUDIES["constraint"].profile()
    dm, real = Cell("a", 1, "dm", "haba"), Cell("b", 1, None)
    assert profile.precision == "bf16"
    assert profile.precision_overrides(dm) == ["eval.precision=bf16", "method.precision=bf16"]
    assert profile.precision_overrides(real) == ["eval.precision=bf16"]
    assert {"eval.precision=bf16", "method.precision=bf16"} <= set(cell_overrides(profile, dm, tmp_path))
    assert dataclasses.replace(profile, precision="").precision_overrides(dm) == []
    record = {"protocol": {"precision": "bf16"}, "distill_precision": "bf16", "cell": {"overrides": []}}
    assert profile.precision_changes(record) is None
    fp32 = {**record, "protocol": {"precision": "fp32", "id": "f598ca27fd"}, "distill_precision": "fp32"}
    assert profile.precision_changes(fp32) == "ran evaluation in fp32 and distillation in fp32, not bf16"
    (tmp_path / profile.name / "cells").mkdir(parents=True)
    (tmp_path / profile.name / "cells" / "a.json").write_text(json.dumps(fp32))
    logged = []
    assert bench_run._todo(profile, [dm], tmp_path / profile.name, logged.append) == [dm]
    assert "ran evaluation in fp32" in logged[0]

    monkeypatch.setattr(bf16, "native_bf16_cpu", lambda: False)  # an AVX2-only CPU
    assert "holds bf16, which this CPU lacks" in bench_run.precision_note(profile, "cpu")
    assert bench_run.precision_note(dataclasses.replace(profile, precision=""), "cpu") is None  # auto: nothing fixed
    monkeypatch.setattr(bf16, "native_bf16_cpu", lambda: True)
    assert bench_run.precision_note(profile, "cpu") is None


def test_every_committed_study_cell_ran_at_its_studys_precision():
    """The findings compare rows under one protocol: no committed cell ran at another precision."""
    for study in studies.STUDIES.values():
        profile = study.profile()
        for path in sorted((studies.FINDINGS / study.name / "cells").glob("*.json")):
            assert profile.precision_changes(json.loads(path.read_text())) is None, path
