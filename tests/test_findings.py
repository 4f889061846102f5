"""The Findings page's tables and figures (``workbench.findings``) on small fabricated study results, no Streamlit."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench import findings as FD
from workbench import findings_figures as FF


def arm(name, tags, means=None, budget=1, floats=784, nets=("convnet",)) -> dict:
    """An arm in ``bench.study_report.report``'s schema; ``means`` None: no finished seed yet."""
    out = {"arm": name, "budget": budget, "kind": "haba", "tags": tags, "overrides": [], "shape": [], "setting": "-"}
    out.update(per_net={}, n_seeds=0, seeds=[], expected_seeds=3, pending_search=False, borrowed_from="")
    if means is not None:
        out.update(n_seeds=3, seeds=[0, 1, 2], floats=floats, images_per_class=budget)
        for net, m in zip(nets, means if isinstance(means, list) else [means], strict=True):
            out["per_net"][net] = {"mean": m, "std_seeds": 1.0, "std_nets": 2.0, "set_means": [m] * 3, "n_seeds": 3}
    return out


def study(*arms, nets=("convnet",), protocols=("p (abc)",)) -> dict:
    return {"study": "s", "arms": list(arms), "nets": list(nets), "protocols": list(protocols), "distill_seeds": [0]}


def test_progress_says_plainly_how_much_has_run():
    assert FD.progress(study()).text().startswith("Not run yet")
    pending = arm("b", {"kind": "x"}) | {"pending_search": True}
    p = FD.progress(study(arm("a", {"kind": "x"}, 50.0), pending, arm("c", {"kind": "x"})))
    assert (p.arms_done, p.arms_total, p.seeds_done, p.seeds_expected) == (1, 3, 3, 9)
    assert p.text().startswith("1 of 3 arms done (3 of 9 distillation seeds); 1 wait for their validation search")
    assert FD.progress(study(arm("a", {"kind": "x"}, 50.0))).text() == "All 1 arms done (3 of 3 distillation seeds)."
    assert FD.protocol_text(study(protocols=())).startswith("none yet")


def test_frontier_points_follow_kind_tags_and_skip_arms_without_results():
    s = study(
        arm("ipc2_pixels", {"kind": "pixels"}, 70.0, budget=2, floats=1568),
        arm("ipc1_pixels", {"kind": "pixels"}, 60.0),
        arm("ipc1_haba", {"kind": "HaBa"}, 65.0),
        arm("ipc1_haba_long", {"kind": "HaBa", "iterations": 800}, 66.0),
        arm("ipc2_haba", {"kind": "HaBa"}),  # not run yet
    )
    points = FD.frontier_points(s)
    assert list(points["arm"]) == ["ipc1_pixels", "ipc2_pixels", "ipc1_haba", "ipc1_haba_long"]
    assert list(dict.fromkeys(points["line"])) == ["pixels", "HaBa", "HaBa (iterations 800)"]
    table = FD.arm_table(s)
    assert len(table) == 5 and table.loc[4, "seeds"] == "0/3" and math.isnan(table.loc[4, "mean"])
    fig = FF.frontier_figure(points)
    assert fig.layout.xaxis.type == "log" and [t.name for t in fig.data] == ["pixels", "HaBa", "HaBa (iterations 800)"]
    assert list(fig.data[0].error_y.array) == [1.0, 1.0]


def test_a_users_evaluated_runs_become_points_in_percent():
    def evaluation(mean, net="convnet"):
        res = {"nets": {net: {"mean": mean, "std": 0.01, "n": 3}}, "storage": {"floats_total": 784}, "protocol": {}}
        return {"synset": res, "random_real": res}

    pts = FD.run_points({"mine": evaluation(0.5), "other_net": evaluation(0.4, "mlp")})
    assert list(pts["run"]) == ["mine"] and pts.loc[0, "mean"] == pytest.approx(50.0) and pts.loc[0, "floats"] == 784
    fig = FF.frontier_figure(FD.frontier_points(study(arm("a", {"kind": "x"}, 60.0))), pts)
    assert fig.data[-1].name == "your runs" and list(fig.data[-1].text) == ["mine"]


def test_cross_architecture_matrix_and_gain_over_pixels():
    nets = ("convnet", "mlp")
    s = study(
        arm("ipc1_pixels", {"kind": "pixels"}, [60.0, 50.0], nets=nets),
        arm("ipc1_haba", {"kind": "HaBa"}, [65.0, 49.0], nets=nets),
        arm("ipc1_fred", {"kind": "FreD"}),
        nets=nets,
    )
    m = FD.cross_arch_matrix(s)
    assert list(m.index) == ["pixels", "HaBa", "FreD"] and list(m.columns) == list(nets)
    assert m.loc["HaBa", "mlp"] == 49.0 and m.loc["FreD"].isna().all()
    gain = FD.gain_over_reference(s)
    assert list(gain.index) == ["HaBa"] and list(gain.loc["HaBa"]) == [5.0, -1.0]
    assert FD.gain_over_reference(study(*s["arms"][1:], nets=nets)).empty  # no pixels row to measure against
    assert FF.heatmap_figure(gain, diverging=True).data[0].zmid == 0
    assert FD.comparisons_table(s).empty
    diff = {"label": "HaBa - pixels", "arm": "a", "baseline": "b", "net": "mlp", "diff": -1.0, "se": 0.5, "n": [3, 2]}
    s["comparisons"] = [diff]
    assert FD.comparisons_table(s).iloc[0].to_dict() == dict(
        comparison="HaBa - pixels", net="mlp", difference=-1.0, se=0.5, seeds="3 / 2"
    )
    s["comparisons"] = [{**diff, "se": None, "n": [1, 3], "same_seeds": [0]}]  # one seed: the sets of seed 0
    row = FD.comparisons_table(s).iloc[0].to_dict()
    assert row["seeds"] == "seed 0's sets" and row["se"] is None
    # several budgets: each row names its budget, and each gain is over the pixels of its own budget
    twice = study(
        arm("ipc1_pixels", {"kind": "pixels"}, 60.0),
        arm("ipc1_haba", {"kind": "HaBa"}, 64.0),
        arm("ipc10_pixels", {"kind": "pixels"}, 80.0, budget=10),
        arm("ipc10_haba", {"kind": "HaBa"}, 79.0, budget=10),
        arm("ipc10_fred", {"kind": "FreD"}, budget=10),
    )
    m = FD.cross_arch_matrix(twice)
    assert list(m.index) == ["IPC 1: pixels", "IPC 1: HaBa", "IPC 10: pixels", "IPC 10: HaBa", "IPC 10: FreD"]
    assert FD.gain_over_reference(twice)["convnet"].to_dict() == {"IPC 1: HaBa": 4.0, "IPC 10: HaBa": -1.0}
    same = study(arm("ipc1_pixels", {"kind": "pixels"}, 60.0), arm("ipc1_pixels_b", {"kind": "pixels"}, 61.0))
    assert list(FD.cross_arch_matrix(same).index) == ["ipc1_pixels", "ipc1_pixels_b"]  # labels repeat: arm names


def test_another_studys_networks_become_columns_of_the_same_arms():
    nets, more = ("convnet", "mlp"), ("convnet", "resnet18")
    cross = study(
        arm("ipc1_pixels", {"kind": "pixels"}, [60.0, 50.0], nets=nets),
        arm("ipc10_pixels", {"kind": "pixels"}, 80.0, budget=10),
        nets=nets,
    )
    resnet = study(arm("ipc1_pixels", {"kind": "pixels"}, [59.0, 40.0], nets=more), nets=more)
    merged = FD.with_nets_of(cross, resnet)
    m = FD.cross_arch_matrix(merged)
    assert list(m.columns) == ["convnet", "mlp", "resnet18"]
    assert m.loc["IPC 1: pixels"].tolist() == [60.0, 50.0, 40.0]  # the study's own ConvNet result wins
    assert math.isnan(m.loc["IPC 10: pixels", "resnet18"]) and FD.progress(merged) == FD.progress(cross)
    assert "resnet18" not in cross["nets"] and FD.with_nets_of(cross, None) is cross


def test_constraint_bars_per_factor_with_the_chosen_row_apart():
    s = study(
        arm("ipc1_haba", {"factor": "chosen", "value": "chosen"}, 70.0),
        arm("ipc1_lambda0", {"factor": "constraint weight", "value": 0.0}, 68.0),
        arm("ipc1_off", {"factor": "constraint weight", "value": "off (no extractor)"}, 67.0),
        arm("ipc1_k2", {"factor": "hallucinators", "value": 2}),  # not run yet
        arm("ipc1_frozen", {"factor": "hallucinators learned", "value": False}, 66.0),
        arm("ipc10_haba", {"factor": "chosen", "value": "chosen"}, 80.0, budget=10),
        arm("ipc10_lambda0", {"factor": "constraint weight", "value": 0.0}, 79.0, budget=10),
    )
    assert FD.budgets(s) == [1, 10]
    bars, chosen = FD.constraint_bars(s, 1)
    assert chosen["mean"] == 70.0
    assert list(bars["value"]) == ["0", "off (no extractor)", "no"]
    assert list(bars["factor"].unique()) == ["constraint weight", "hallucinators learned"]
    fig = FF.constraint_figure(bars, chosen)
    assert len(fig.data) == 2 and any("chosen: 70.00" in a.text for a in fig.layout.annotations)
    assert fig.layout.yaxis.range == pytest.approx((63.6, 72.4))  # the results +- std, padded; not from 0
    assert FD.constraint_bars(study(arm("ipc1_haba", {"factor": "chosen", "value": "chosen"})), 1)[1] is None
    bars, chosen = FD.constraint_bars(s, 10)  # each budget against its own chosen row
    assert chosen["mean"] == 80.0 and list(bars["mean"]) == [79.0]


def test_diversity_points_real_reference_and_steps():
    div = {
        "metrics": {"pixel_within": "RMS distance"},
        "rows": [
            {"arm": "a", "seed": 0, "kind": "haba", "budget": 1.0, "accuracy": 70.0, "metrics": {"pixel_within": 0.3}},
            {"arm": "b", "seed": 0, "kind": "pixels", "budget": 1.0, "accuracy": 65.0, "metrics": {}},
        ],
        "real": [{"n_per_class": 10, "metrics": {"pixel_within": 0.5}}, {"n_per_class": 1, "metrics": {}}],
        "over_steps": [
            {"arm": "a", "seed": s, "step": t, "metrics": {"pixel_within": t + s}} for s in (0, 1) for t in (0, 10)
        ],
        "correlation": {"pixel_within": {"spearman": 0.8, "n": 1}},
    }
    points = FD.diversity_points(div, "pixel_within")
    assert list(points["arm"]) == ["a"] and points.loc[0, "metric"] == 0.3
    assert FD.diversity_real(div, "pixel_within") == [(10, 0.5)]
    steps = FD.diversity_steps(div, "pixel_within")
    assert list(steps["step"]) == [0, 10] and list(steps["value"]) == [0.5, 10.5]  # mean over the two seeds
    fig = FF.diversity_figure(points, "pixel_within", FD.diversity_real(div, "pixel_within"))
    assert fig.layout.xaxis.title.text == "pixel_within" and len(fig.layout.shapes) == 1
    assert FD.diversity_steps({}, "x").empty and FD.diversity_points({}, "x").empty


def test_the_folder_follows_its_variable_and_bad_files_are_problems_not_crashes(tmp_path, monkeypatch):
    monkeypatch.setenv(FD.FINDINGS_ENV, str(tmp_path))
    assert FD.findings_dir() == tmp_path.resolve()
    assert FD.load_study("frontier") == (None, None)
    (tmp_path / "frontier.json").write_text("{not json")
    data, problem = FD.load_study("frontier")
    assert data is None and "unreadable" in problem
    (tmp_path / "frontier.json").write_text("[1]")
    assert FD.load_study("frontier")[1] == "frontier.json is not a JSON object"
    (tmp_path / "frontier.json").write_text(json.dumps(study()))
    assert FD.load_study("frontier") == (study(), None)


def test_the_shapes_match_what_the_studies_report(tmp_path, monkeypatch):
    """An arm summarised by ``bench.study_report.arm_summary`` from cell records reads back as the page expects."""
    from bench import study_design
    from bench.studies import Arm, Search
    from bench.study_report import arm_summary

    def record(seed, per_seed):
        storage = {"floats_total": 7840, "ipc_equivalent": 1.0, "images_per_class": 5}
        acc = {"convnet": {"per_seed": per_seed}}
        return {"seeds": {"distill": seed}, "storage": storage, "protocol": {}, "accuracy_by_net": acc}

    a = Arm("ipc1_haba", 1, "haba", tags={"kind": "HaBa"})
    summary = arm_summary(a, [record(0, [0.70, 0.72]), record(1, [0.74, 0.76])], ("convnet",))
    s = study(summary | {"expected_seeds": 3, "borrowed_from": ""})
    points = FD.frontier_points(s)
    assert points.loc[0, "mean"] == pytest.approx(73.0) and points.loc[0, "floats"] == 7840
    assert FD.progress(s).text().startswith("0 of 1 arms done (2 of 3")
    monkeypatch.setattr(study_design, "SEARCHES", tmp_path)  # a search that chose its smallest size
    sizes = (("20", 0.71), ("14", 0.75))
    rows = [{"combination": {"synset.basis_size": v}, "mean": m, "protocol": {"id": "p"}} for v, m in sizes]
    (tmp_path / "s.json").write_text(json.dumps({"rows": rows, "best": rows[1]["combination"]}))
    at_edge = Arm("ipc1_haba", 1, "haba", ("synset.n_hallucinators=2",), Search("s", (), ("synset.basis_size=20,14",)))
    edge = study(arm_summary(at_edge, [], ("convnet",)) | {"expected_seeds": 3, "borrowed_from": ""})
    shape = "synset.basis_size=14 synset.n_hallucinators=2 (14x14 is the smallest size searched)"
    assert FD.arm_table(edge).loc[0, "shape"] == shape


def test_the_module_does_not_import_streamlit():
    root = Path(__file__).resolve().parents[1]
    code = "import sys, workbench.findings, workbench.findings_figures; assert 'streamlit' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, env={**os.environ, "PYTHONPATH": str(root)})
