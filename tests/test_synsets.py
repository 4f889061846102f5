import dataclasses

import pytest
import torch

from haba_core.budget import plan, solve
from haba_core.data import dataset_info, load_dataset
from haba_core.errors import BudgetError, CheckpointError, UnknownNameError
from haba_core.storage import Storage, random_real_storage
from haba_core.synsets import SYNSETS, HabaSynset, create_synset, hallucinator_floats, list_synsets, load_synset


def info(name="toy", **kw):
    return load_dataset(name, **kw).info


def test_registry_lists_both_kinds():
    assert {"haba", "pixels"} <= set(list_synsets())
    with pytest.raises(UnknownNameError, match="haba"):
        create_synset("hab", info(), n_bases=1)


def test_hallucinator_parameter_count_matches_design():
    # HaBa's hallucinator at 3x32x32: enc 84 + scale/shift 2 x 3x30x30 + dec 84 = 5,568 parameters
    assert hallucinator_floats(3, 3, (32, 32)) == 5568
    s = create_synset("haba", dataset_info("cifar10"), n_bases=1, n_hallucinators=5)
    assert s.hallucinator_floats() == 5 * 5568
    # Fashion-MNIST: derived from the dataset (1x28x28)
    s = create_synset("haba", dataset_info("fashion_mnist"), n_bases=2, n_hallucinators=3)
    assert s.hallucinator_floats() == 3 * (10 + 2 * 26 * 26 + 10)


def test_official_storage_ratios():
    # the official "IPC k" runs (k bases + 5 hallucinators) store 1.91x / 1.09x / 1.02x the pixel storage on CIFAR10
    c10 = dataset_info("cifar10")
    for ipc, ratio in [(1, 1.91), (10, 1.09), (50, 1.02)]:
        p = plan(c10, "haba", ipc, n_hallucinators=5)
        assert p.ipc_equivalent / ipc == pytest.approx(ratio, abs=0.005)


def test_haba_shapes_and_gradients_reach_bases_and_hallucinators():
    i = info(channels=3, im_size=32)
    s = create_synset("haba", i, n_bases=2, n_hallucinators=3)
    x, y = s.sample(7, torch.Generator().manual_seed(0))
    assert x.shape == (7, 3, 32, 32) and y.shape == (7,)
    x.square().mean().backward()
    assert s.bases.grad is not None and s.bases.grad.abs().sum() > 0
    used = [p.grad is not None and p.grad.abs().sum() > 0 for p in s.hallucinator_parameters()]
    assert all(used)


def test_hallucinator_is_affine_and_identity_structure():
    s = create_synset("haba", info(), n_bases=1, n_hallucinators=2)
    a, b = s.bases[:2].detach(), s.bases[2:4].detach()
    v = torch.zeros(2, dtype=torch.long)
    # affine: h(a) + h(b) - h(0) == h(a + b)
    h = lambda t: s.render(t, v)
    torch.testing.assert_close(h(a) + h(b) - h(torch.zeros_like(a)), h(a + b), atol=1e-4, rtol=1e-4)


def test_mixed_hallucinators_in_one_batch_keep_row_order():
    s = create_synset("haba", info(), n_bases=2, n_hallucinators=4)
    idx = torch.arange(8)
    variant = torch.tensor([3, 0, 2, 1, 0, 3, 1, 2])
    x, _ = s.images_of(idx, variant)
    for r in range(8):
        torch.testing.assert_close(x[r], s.hallucinate(s.bases[r : r + 1], int(variant[r]))[0])


def test_materialize_all_pairs_and_random():
    s = create_synset("haba", info(), n_bases=2, n_hallucinators=3)
    x, y = s.materialize(pairing="all")
    assert x.shape[0] == 10 * 2 * 3 and torch.equal(y.bincount(), torch.full((10,), 6))
    x, y = s.materialize(torch.Generator().manual_seed(0), pairing="random")
    assert x.shape[0] == 20


def test_pair_uses_one_pair_of_different_hallucinators_for_the_batch():
    s = create_synset("haba", info(), n_bases=3, n_hallucinators=4)
    idx = torch.arange(30)
    for seed in range(5):
        x0, x1, y = s.pair(idx, torch.Generator().manual_seed(seed))
        j0, j1 = torch.randperm(4, generator=torch.Generator().manual_seed(seed))[:2].tolist()
        torch.testing.assert_close(x0, s.hallucinate(s.bases, j0))
        torch.testing.assert_close(x1, s.hallucinate(s.bases, j1))
        assert j0 != j1 and torch.equal(y, s.labels_base)


def test_single_channel_bases_on_rgb():
    i = info(channels=3, im_size=32)
    s = create_synset("haba", i, n_bases=1, n_hallucinators=2, single_channel=True)
    assert s.bases.shape[1] == 1
    assert s.sample(4)[0].shape == (4, 3, 32, 32)
    # triples the bases per budget at IPC 50 (bases dominate)
    c10 = dataset_info("cifar10")
    one_channel = solve(c10, "haba", 50, n_hallucinators=5, single_channel=True)
    assert one_channel.n_bases >= 3 * solve(c10, "haba", 50).n_bases - 3


def test_basis_size_upsamples_to_image_size():
    s = create_synset("haba", info(), n_bases=1, n_hallucinators=2, basis_size=14)
    assert s.bases.shape[-2:] == (14, 14)
    assert s.sample(3)[0].shape == (3, 1, 28, 28)
    p = create_synset("pixels", info(), n_bases=2, basis_size=14)
    assert p.sample(3)[0].shape == (3, 1, 28, 28)


def test_init_from_real_uses_class_images(toy):
    s = create_synset("pixels", toy.info, n_bases=2)
    s.init_from_real(toy, torch.Generator().manual_seed(0))
    for c in range(10):
        train_c = toy.images_train[toy.indices_of_class(c)]
        for b in s.bases[s.class_indices(c)]:
            assert (train_c - b).abs().flatten(1).max(1).values.min() < 1e-6


@pytest.mark.parametrize("kind", list_synsets())
def test_save_load_round_trip(tmp_path, kind):
    kw = {"basis_size": 20, **({"n_hallucinators": 3} if "n_hallucinators" in SYNSETS.get(kind).option_names() else {})}
    s = create_synset(kind, info(), n_bases=2, **kw)
    s.extra["syn_lr"] = 0.02
    s.save(tmp_path / "s.safetensors")
    t = load_synset(tmp_path / "s.safetensors")
    assert type(t) is type(s) and t.extra == {"syn_lr": 0.02}
    for (k, a), (_, b) in zip(s.state_dict().items(), t.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x, _ = s.materialize(pairing="all")
    torch.testing.assert_close(x, t.materialize(pairing="all")[0])
    assert t.storage() == s.storage()


def test_corrupted_and_foreign_files_raise_clear_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="corrupted or foreign"):
        load_synset(bad)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="not one written by haba_core"):
        load_synset(tmp_path / "foreign.safetensors")
    s = create_synset("pixels", info(), n_bases=1)
    s.save(tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_synset(tmp_path / "trunc.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_synset(tmp_path / "missing.safetensors")


def test_haba_needs_a_hallucinator():
    with pytest.raises(ValueError):
        HabaSynset(info(), n_bases=1, n_hallucinators=0)


def test_budget_error_explains_what_fits():
    fm = dataset_info("fashion_mnist")
    with pytest.raises(BudgetError) as e:
        solve(fm, "haba", 1, n_hallucinators=5)
    msg = str(e.value)
    assert "7,840 floats" in msg and "basis_size=" in msg and "raise budget_ipc" in msg


@pytest.mark.parametrize("kind", list_synsets())
@pytest.mark.parametrize("options", [{}, {"n_hallucinators": 3, "single_channel": True}])
@pytest.mark.parametrize("basis_size", [None, 12])
def test_every_kind_storage_formula_matches_the_built_set(kind, options, basis_size):
    """The budget solver plans with a kind's storage_of before anything is built: it must be what the set stores."""
    i = dataset_info("cifar10")  # RGB, so single-channel bases differ from the images
    cls = SYNSETS.get(kind)
    kw = {k: v for k, v in options.items() if k in cls.option_names()}
    s = create_synset(kind, i, n_bases=2, basis_size=basis_size, **kw)
    p = plan(i, kind, 2, basis_size=basis_size, **options)
    got = s.storage()
    planned = {f.name: getattr(p, f.name) for f in dataclasses.fields(Storage)}  # the plan's storage record
    assert dataclasses.asdict(got) == {**planned, "label": got.label}  # the plan knows no label (FreD's names options)
    assert got.to_dict() == {**p.to_dict(), "label": got.label} and got.floats_total == p.floats_total
    # every learnable float is counted, and beside them only fixed masks (FreD's per-class frequency choice)
    assert sum(t.numel() for t in s.parameters()) + p.floats_masks == p.floats_total


def test_a_kinds_own_config_reaches_config_budget_cli_and_app():
    """A kind declares its options once (its Config); validation, the budget solver, the CLI flags and the New
    run page's widgets all come from there."""
    from dataclasses import dataclass

    from haba_core.cli import build_parser
    from haba_core.config import resolve_config
    from haba_core.errors import ConfigError
    from haba_core.options import option
    from workbench import newrun as NR

    @dataclass(frozen=True)
    class TileOptions:
        copies: int = option(2, help="images each basis renders", ge=1)

    @SYNSETS.register("tiled_test")
    class Tiled(SYNSETS.get("pixels")):
        kind = "tiled_test"
        Config = TileOptions

        def __init__(self, info, n_bases, basis_size=None, copies=2, generator=None):
            super().__init__(info, n_bases, basis_size)
            self.copies = copies

        @classmethod
        def storage_of(cls, info, n_bases, basis_size, copies=2, **_):
            s = super().storage_of(info, n_bases, basis_size)
            return {**s, "floats_bases": s["floats_bases"] * copies}

    try:
        cfg = resolve_config(overrides=["synset.kind=tiled_test", "synset.copies=3", "synset.n_bases=1"])
        assert cfg.synset.params == {"copies": 3}  # HaBa's default options dropped, this kind's kept
        with pytest.raises(ConfigError, match="synset.copies='x' is not a number"):
            resolve_config(overrides=["synset.kind=tiled_test", "synset.copies=x"])
        fm = dataset_info("fashion_mnist")
        assert plan(fm, "tiled_test", 1, copies=3).floats_bases == 3 * 10 * 28 * 28  # options reach storage_of
        assert solve(fm, "tiled_test", 6, copies=3).n_bases == 2
        a = build_parser().parse_args(["budget", "--synset", "tiled_test", "--copies", "4"])
        assert a.copies == 4
        spec = next(s for s in NR.synset_option_specs() if s.key == "synset.params.copies")
        assert spec.default == 2 and spec.help == "images each basis renders (an integer >= 1)" and spec.min_value == 1
        with pytest.raises(ConfigError, match="synset.copies=0 is out of range; use an integer >= 1"):
            resolve_config(overrides=["synset.kind=tiled_test", "synset.copies=0"])
        assert NR.synset_takes("tiled_test", spec) and not NR.synset_takes("haba", spec)
    finally:
        SYNSETS.unregister("tiled_test")


def test_the_plan_the_set_and_the_random_real_baseline_give_one_storage_record():
    """Storage has one record and one JSON shape: the budget plan, a built set and the random real subset."""
    from haba_core.budget import plan_from_config
    from haba_core.config import SynsetConfig

    fm = dataset_info("fashion_mnist")
    p = plan_from_config(fm, SynsetConfig(kind="haba", budget_ipc=1))  # what a run's storage.json holds
    s = create_synset("haba", fm, n_bases=p.n_bases, basis_size=p.basis_size)
    r = random_real_storage(fm, 1)
    for record in (p, s.storage(), r):
        assert isinstance(record, Storage) and type(record).to_dict is Storage.to_dict
    # the keys the committed results and run folders hold (bench/results/cpu.json cells, a run's storage.json)
    common = {"kind", "n_bases", "n_hallucinators", "images_per_class", "basis_shape", "floats_bases"}
    common |= {"floats_hallucinators", "floats_masks", "floats_total", "ipc_equivalent", "images_total"}
    assert set(p.to_dict()) == common | {"budget_ipc", "budget_floats", "budget_used", "basis_note"}
    assert set(s.storage().to_dict()) == common | {"label"} and set(r.to_dict()) == common
    assert r.to_dict()["ipc_equivalent"] == 1.0 and r.floats_total == 10 * 784 and r.kind == "random_real"
    assert p.to_dict()["budget_used"] == s.storage().floats_total / (10 * 784)
    assert "budget_ipc" not in plan(fm, "pixels", 2).to_dict()  # no budget: no budget keys
