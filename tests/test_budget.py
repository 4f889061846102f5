import pytest

from haba_core.budget import plan, plan_from_config, solve
from haba_core.config import SynsetConfig
from haba_core.data import dataset_info
from haba_core.errors import BudgetError, ConfigError
from haba_core.synsets import create_synset


def test_pixels_budget_is_ipc():
    fm = dataset_info("fashion_mnist")
    for ipc in (1, 10, 50):
        p = solve(fm, "pixels", ipc)
        assert p.n_bases == ipc and p.floats_total == ipc * 10 * 784 and p.ipc_equivalent == ipc


def test_haba_budget_solve_is_largest_fit():
    c10 = dataset_info("cifar10")
    p = solve(c10, "haba", 10, n_hallucinators=5)
    # 10 * 10 * 3072 = 307,200 floats; 5 hallucinators = 27,840 -> floor(279,360 / 30,720) = 9 bases per class
    assert p.n_bases == 9 and p.floats_total <= p.budget_floats
    assert plan(c10, "haba", p.n_bases + 1, n_hallucinators=5).floats_total > p.budget_floats
    assert p.images_per_class == 45


def test_haba_half_resolution_bases_fit_ipc1_fashion_mnist():
    fm = dataset_info("fashion_mnist")
    p = solve(fm, "haba", 1, basis_size=14, n_hallucinators=5)
    # 5 * (10 + 2*12*12 + 10) = 1,540; (7,840 - 1,540) // (10 * 196) = 3
    assert p.floats_hallucinators == 1540 and p.n_bases == 3 and p.floats_total <= 7840


def test_plan_matches_built_synset_storage():
    fm = dataset_info("fashion_mnist")
    p = solve(fm, "haba", 10, n_hallucinators=5)
    s = create_synset("haba", fm, n_bases=p.n_bases, n_hallucinators=5)
    st = s.storage()
    assert st.floats_total == p.floats_total and st.floats_hallucinators == p.floats_hallucinators
    assert st.ipc_equivalent == pytest.approx(p.ipc_equivalent)


def test_plan_from_config_explicit_n_bases_overrides_budget():
    fm = dataset_info("fashion_mnist")
    p = plan_from_config(fm, SynsetConfig(kind="haba", budget_ipc=1, n_bases=1))
    assert p.n_bases == 1 and p.floats_total > p.budget_floats  # over budget, honestly reported
    assert p.to_dict()["budget_used"] > 1
    with pytest.raises(ConfigError):
        plan_from_config(fm, SynsetConfig(kind="haba", budget_ipc=None, n_bases=None))
    with pytest.raises(BudgetError):
        plan_from_config(fm, SynsetConfig(kind="haba", budget_ipc=-1))


def test_describe_mentions_every_part():
    text = solve(dataset_info("cifar10"), "haba", 10, n_hallucinators=5).describe()
    for word in ("bases per class", "hallucinators", "images per class", "IPC-equivalents", "% used"):
        assert word in text
