"""RQ2's measures (bench.diversity_study) recomputed independently: Spearman's rho against scipy, the effective
rank from its definition, the per-class pair means by brute force, and a HaBa set's metrics on toy data."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from bench import diversity_study as ds
from haba_core.diversity import cosine_distances, effective_rank, pair_mean, random_feature_net, rms_distances


def test_spearman_matches_scipy_with_ties():
    x = [1.0, 2.0, 2.0, 5.0, 3.0, 9.0, 0.5]
    y = [0.3, 0.1, 0.4, 0.9, 0.9, 0.2, 0.0]
    assert ds.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert ds.spearman([1.0, 2.0], [2.0, 1.0]) is None  # too few sets to rank


def test_effective_rank_follows_its_definition():
    z = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    s = np.linalg.svd((z - z.mean(0)).numpy().astype(np.float64), compute_uv=False)
    p = s / s.sum()
    assert effective_rank(z) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    # k orthogonal directions of equal length have rank k; identical rows carry no spread at all
    assert effective_rank(torch.cat([torch.eye(3), -torch.eye(3)])) == pytest.approx(3.0)
    assert effective_rank(torch.ones(4, 3)) == 1.0 and effective_rank(torch.ones(1, 3)) is None


def test_pair_means_by_brute_force():
    x = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    pairs = list(itertools.combinations(range(4), 2))
    rms = sum(float(((x[i] - x[j]) ** 2).mean().sqrt()) for i, j in pairs) / len(pairs)
    assert pair_mean(rms_distances(x)) == pytest.approx(rms)
    f = x.reshape(4, -1)
    cos = sum(1 - float(torch.nn.functional.cosine_similarity(f[i], f[j], dim=0)) for i, j in pairs) / len(pairs)
    assert pair_mean(cosine_distances(x)) == pytest.approx(cos)


def test_a_haba_set_has_class_and_basis_metrics():
    from haba_core.data import dataset_info
    from haba_core.synsets import create_synset

    info = dataset_info("toy")
    s = create_synset("haba", info, n_bases=2, n_hallucinators=3, generator=torch.Generator().manual_seed(0))
    net = random_feature_net(info)
    m = ds.set_metrics(s, net, net, [1.0] * info.num_classes)
    assert set(m) == set(ds.METRICS) and all(v >= 0 for v in m.values())
    px = ds.set_metrics(create_synset("pixels", info, n_bases=1), net, net, [1.0] * info.num_classes)
    assert px.get("effective_rank") is None and "pixel_within_basis" not in px  # one image per class: no pair


def test_correlation_is_given_over_all_sets_and_within_each_budget():
    from bench.diversity_study import correlate

    def row(budget, x, acc):
        return {"budget": budget, "metrics": {"m": x}, "accuracy": acc}

    # across budgets the metric and accuracy rise together; within each budget they fall together
    rows = [row(1, 1, 72), row(1, 2, 71), row(1, 3, 70), row(10, 11, 82), row(10, 12, 81), row(10, 13, 80)]
    c = correlate(rows, "m")
    assert c["n"] == 6 and c["spearman"] > 0
    assert c["by_budget"]["1"] == {"spearman": pytest.approx(-1.0), "n": 3}
    assert c["by_budget"]["10"] == {"spearman": pytest.approx(-1.0), "n": 3}
    assert correlate([row(1, None, 70), row(1, 1, 71)], "m")["spearman"] is None  # one point has no rank order
    longer = [{**row(10, x, acc), "tags": {"iterations": 800}} for x, acc in ((1, 80), (2, 81), (3, 83))]
    c = correlate(rows + longer, "m")  # a longer run's sets are ranked apart from the preset length's
    assert c["by_budget"]["10"]["n"] == 3
    assert c["by_budget"]["10, 800 iterations"] == {"spearman": pytest.approx(1.0), "n": 3}
    mtt = [{**row(1, x, acc), "tags": {"method": "mtt"}} for x, acc in ((1, 70), (2, 72), (3, 73))]
    c = correlate(rows + mtt, "m")  # so are another method's
    assert c["by_budget"]["1"]["n"] == 3 and c["by_budget"]["1, MTT"] == {"spearman": pytest.approx(1.0), "n": 3}


def test_steps_measured_before_are_carried_for_sets_whose_snapshots_are_elsewhere():
    from bench.diversity_study import carried_steps

    def step(arm, n, **kw):
        return {"study": "s", "arm": arm, "seed": 0, "step": n, "metrics": {"m": n}, **kw}

    previous = {"git_commit": "abcdef0123456789", "over_steps": [step("a", 1), step("b", 1), step("gone", 1)]}
    rows = [{"study": "s", "arm": a, "seed": 0} for a in ("a", "b")]
    out = carried_steps(previous, [step("b", 2)], rows)  # b measured again now; "gone" has no set any more
    assert out == [step("a", 1, measured_at="abcdef012345")]
    assert carried_steps({}, [], rows) == []
