"""The frequency-domain synset (``fred``): its DCT against scipy's, FreD's per-class variance selection
recomputed independently, the low-pass square it keeps as an option, its storage formula (masks included), and
that it shows up everywhere a synset kind does (budget, distill, evaluation, the app's New run page and
explorer, the bench) without any of them naming it."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch
from streamlit.testing.v1 import AppTest

from haba_core import io
from haba_core.budget import plan, plan_from_config, solve
from haba_core.config import SynsetConfig
from haba_core.data import dataset_info, load_dataset
from haba_core.errors import ConfigError
from haba_core.synsets import SYNSETS, create_synset, load_synset
from haba_core.synsets.fred import dct_matrix, variance_positions
from workbench import grids as G
from workbench import newrun as NR
from workbench import runs as R
from workbench import testing as T

ROOT = Path(__file__).resolve().parents[1]


def scipy_low_block(x: np.ndarray, k: int) -> np.ndarray:
    return scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")[..., :k, :k]


def scipy_render(block: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    full = np.zeros((*block.shape[:-2], *hw))
    full[..., : block.shape[-2], : block.shape[-1]] = block
    return scipy.fft.idctn(full, axes=(-2, -1), norm="ortho")


def reference_mask(images: np.ndarray, count: int) -> set[int]:
    """FreD's ``init_mask``, recomputed: its DCT (unnormalised, as scipy's ``norm=None``) of the class's images
    (n, C, H, W), averaged over channels, each position's explained-variance ratio over the images (unbiased
    covariance diagonal over its trace), the ``count`` largest (as flat positions u * W + v)."""
    spectrum = scipy.fft.dctn(images, axes=(-2, -1), norm=None).mean(axis=1).reshape(len(images), -1)  # (n, H*W)
    cov = np.cov(spectrum.T)
    ratio = np.diag(cov) / np.trace(cov)
    return set(np.argsort(-ratio, kind="stable")[:count].tolist())


def stored_masks(path: Path, hw: tuple[int, int]) -> np.ndarray:
    """The per-class masks (K, H * W) bool read from a synset file's raw ``mask_bits`` (bit p % 8 of byte p // 8)."""
    from safetensors.numpy import load_file

    bits = load_file(str(path))["mask_bits"]
    return np.unpackbits(bits, axis=1, bitorder="little")[:, : hw[0] * hw[1]].astype(bool)


def test_registered_with_what_front_ends_need():
    cls = SYNSETS.get("fred")
    assert SYNSETS.label("fred") and SYNSETS.help("fred")
    assert cls.option_names() == ("selection",) and not cls.contrastive
    assert cls.make_options({}).selection == "variance"  # FreD's choice is the default
    with pytest.raises(ConfigError, match="synset.selection='square' is not one of variance, lowpass"):
        cls.make_options({"selection": "square"})
    info = dataset_info("fashion_mnist")
    labels = {
        sel: create_synset("fred", info, n_bases=1, basis_size=7, selection=sel) for sel in ("variance", "lowpass")
    }
    assert {s.storage().label for s in labels.values()} == {"FreD (DCT, variance)", "FreD (DCT, low-pass)"}


@pytest.mark.parametrize("k", [1, 5, 14])
def test_lowpass_coefficients_and_render_are_the_orthonormal_dct_of_scipy(k):
    """``selection="lowpass"`` is the kind as it was: the top-left k x k block, rendered with the rest zero."""
    info = dataset_info("cifar10")  # 3x32x32: non-trivial channels
    s = create_synset("fred", info, n_bases=1, basis_size=k, selection="lowpass")
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    coeff = s.coefficients(x.float())
    np.testing.assert_allclose(coeff.numpy(), scipy_low_block(x.numpy(), k), atol=1e-4)
    block = torch.randn(4, 3, k, k, dtype=torch.float64)
    np.testing.assert_allclose(s.render(block.float(), None).numpy(), scipy_render(block.numpy(), (32, 32)), atol=1e-4)
    old = torch.einsum("ih,bcij,jw->bchw", dct_matrix(32, k), block.float(), dct_matrix(32, k))  # the former formula
    torch.testing.assert_close(s.render(block.float(), None), old, atol=1e-5, rtol=0)


@pytest.mark.parametrize("selection", ["variance", "lowpass"])
def test_all_frequencies_are_a_lossless_change_of_basis(selection):
    s = create_synset("fred", dataset_info("fashion_mnist"), n_bases=1, basis_size=None, selection=selection)
    x = torch.randn(3, 1, 28, 28)
    c = torch.tensor([0, 4, 9])
    torch.testing.assert_close(s.render(s.coefficients(x, c), None, c), x, atol=1e-4, rtol=0)
    assert s.storage().floats_masks == 0  # every position kept: nothing to record


def test_variance_masks_are_freds_on_the_init_images_of_the_training_split():
    """Each class keeps the k*k positions FreD's ``init_mask`` picks on the images the set starts from: real
    training images (validation and test images are NaN here, so touching them would show)."""
    toy = load_dataset("toy", val_per_class=5)
    toy = dataclasses.replace(
        toy,
        images_test=torch.full_like(toy.images_test, math.nan),
        images_val=torch.full_like(toy.images_val, math.nan),
    )
    n, k = 4, 5
    s = create_synset("fred", toy.info, n_bases=n, basis_size=k)
    s.init_from_real(toy, torch.Generator().manual_seed(0))
    assert torch.isfinite(s.bases).all()
    g = torch.Generator().manual_seed(0)  # the same draws, class by class, as init_from_real
    for c in range(toy.info.num_classes):
        real = toy.sample_class(c, n, g).double().numpy()
        want = reference_mask(real, k * k)
        assert set(s.positions[c].tolist()) == want, c
        coeff = scipy.fft.dctn(real, axes=(-2, -1), norm="ortho").reshape(n, 1, -1)[..., sorted(want)]
        np.testing.assert_allclose(s.bases[s.class_indices(c)].detach().flatten(2).numpy(), coeff, atol=1e-4)
    assert len({tuple(p.tolist()) for p in s.positions}) > 1  # per class, not one mask for all


def test_variance_averages_channels_before_the_variance_as_fred():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.2])[:, None, None]
    assert set(variance_positions(x, 20).tolist()) == reference_mask(x.numpy(), 20)


def test_one_image_per_class_has_no_variance_and_keeps_the_low_pass_square(toy):
    s = create_synset("fred", toy.info, n_bases=1, basis_size=4)
    s.init_from_real(toy, torch.Generator().manual_seed(0))
    square = {u * 28 + v for u in range(4) for v in range(4)}
    assert all(set(p.tolist()) == square for p in s.positions)


def test_render_scatters_each_row_into_its_class_positions_and_gradients_reach_the_coefficients(toy):
    s = create_synset("fred", toy.info, n_bases=2, basis_size=6)
    s.init_from_real(toy, torch.Generator().manual_seed(0))
    idx = torch.tensor([0, 3, 5, 19])
    images, labels = s.images_of(idx)
    for row, c in zip(images, labels.tolist(), strict=True):
        spectrum = scipy.fft.dctn(row.detach().double().numpy(), axes=(-2, -1), norm="ortho").reshape(-1)
        outside = np.ones(28 * 28, dtype=bool)
        outside[s.positions[c].numpy()] = False
        assert np.abs(spectrum[outside]).max() < 1e-5  # nothing outside the class's mask
    target = torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    (images * target).sum().backward()
    # render is an orthonormal synthesis restricted to the mask: its adjoint is the analysis of the target
    torch.testing.assert_close(s.bases.grad[idx], s.coefficients(target, labels), atol=1e-5, rtol=0)
    assert s.bases.grad[[i for i in range(len(s.bases)) if i not in idx.tolist()]].abs().sum() == 0
    with pytest.raises(ValueError, match="render needs the rows' classes"):
        s.render(s.bases[idx], None)  # per-class masks: a render that does not say the classes is refused


def test_init_from_real_lowpass_is_a_low_pass_real_image_of_the_class(toy):
    k = 5
    s = create_synset("fred", toy.info, n_bases=2, basis_size=k, selection="lowpass")
    s.init_from_real(toy, torch.Generator().manual_seed(0))
    images = s.render(s.bases.detach(), None).numpy()
    for c in range(toy.info.num_classes):
        real = toy.images_train[toy.indices_of_class(c)].double().numpy()
        low = scipy_render(scipy_low_block(real, k), tuple(toy.info.im_size))
        for i in s.class_indices(c).tolist():
            assert np.abs(low - images[i]).reshape(len(low), -1).max(1).min() < 1e-4


def test_noise_init_needs_the_lowpass_square(toy):
    with pytest.raises(ConfigError, match="synset.selection=lowpass"):
        create_synset("fred", toy.info, n_bases=1, basis_size=5).init_noise()
    create_synset("fred", toy.info, n_bases=1, basis_size=5, selection="lowpass").init_noise()


def test_storage_counts_the_bit_packed_masks_and_auto_keeps_half_the_side():
    info = dataset_info("fashion_mnist")  # 10 classes, 1x28x28: IPC 1 = 7,840 floats
    low = plan_from_config(info, SynsetConfig(kind="fred", budget_ipc=1.0, params={"selection": "lowpass"}))
    assert low.basis_shape == (1, 14, 14) and low.n_bases == 7840 // (10 * 14 * 14) == 4
    assert low.floats_total == 4 * 10 * 14 * 14 and low.floats_hallucinators == low.floats_masks == 0
    assert "14x14" in low.basis_note
    masks = math.ceil(10 * math.ceil(28 * 28 / 8) / 4)  # a 784-bit map per class, in float32-equivalents
    var = plan_from_config(info, SynsetConfig(kind="fred", budget_ipc=1.0))
    assert var.floats_masks == masks == 245 and var.n_bases == (7840 - 245) // (10 * 14 * 14) == 3
    assert "mask floats          245" in var.describe()
    assert dict(NR.breakdown_rows(var))["Floats stored"] == "6,125  (bases 5,880 + masks 245)"
    p10 = solve(info, "fred", 10.0, basis_size=7)
    assert p10.n_bases == (78400 - 245) // (10 * 7 * 7) == 159 and p10.floats_total == 159 * 490 + 245
    assert solve(info, "fred", 10.0, basis_size=7, selection="lowpass").n_bases == 160
    for sel in ("variance", "lowpass"):
        p = plan(info, "fred", 159, basis_size=7, selection=sel)
        s = create_synset("fred", info, n_bases=159, basis_size=7, selection=sel)
        st = s.storage()
        assert st.floats_total == p.floats_total and st.floats_masks == p.floats_masks
        assert st.floats_total == sum(t.numel() for t in s.parameters()) + st.floats_masks
        assert s.mask_bits.dtype == torch.uint8 and s.mask_bits.numel() == 980  # what the file holds: 245 floats


def test_save_load_keeps_the_masks_and_rebuilds_from_the_file_alone(tmp_path, toy):
    s = create_synset("fred", toy.info, n_bases=3, basis_size=6)
    s.init_from_real(toy, torch.Generator().manual_seed(0))
    s.save(tmp_path / "f.safetensors")
    t = load_synset(tmp_path / "f.safetensors")
    assert t.selection == "variance" and t.storage() == s.storage()
    assert torch.equal(t.positions, s.positions) and torch.equal(t.mask_bits, s.mask_bits)
    masks = stored_masks(tmp_path / "f.safetensors", (28, 28))
    assert [set(np.flatnonzero(m).tolist()) for m in masks] == [set(p.tolist()) for p in s.positions]
    torch.testing.assert_close(t.materialize()[0], s.materialize()[0])
    g = G.class_grid(t, 0)
    assert g.n_bases == 3 and G.row_labels(g) == ["basis", "image"]
    assert G.grid_image(g).size[0] > 0


def test_a_file_from_before_selections_loads_as_the_low_pass_set(tmp_path, toy):
    s = create_synset("fred", toy.info, n_bases=2, basis_size=5, selection="lowpass")
    s.init_from_real(toy, torch.Generator().manual_seed(0))
    meta = s.to_meta()
    del meta["config"]["selection"]
    io.save_tensors(tmp_path / "old.safetensors", {"bases": s.bases, "labels_base": s.labels_base}, meta)
    t = load_synset(tmp_path / "old.safetensors")
    assert t.selection == "lowpass" and t.label == "FreD (DCT, low-pass)" and t.storage().floats_masks == 0
    torch.testing.assert_close(t.materialize()[0], s.materialize()[0])


def test_budget_command_distill_and_evaluate_take_it(tmp_path):
    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "haba_core", *args], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "synset               fred" in cli("budget", "--dataset", "fashion_mnist", "--synset", "fred")
    run = tmp_path / "runs" / "fred"
    cli(
        "distill",
        "--run-dir",
        str(run),
        "--quiet",
        "--synset",
        "fred",
        "--method",
        "dm",
        "--iterations",
        "3",
        *[a for s in T.TINY_SET_LINES for a in ("--set", s)],
    )
    assert io.read_json_strict(run / "status.json")["state"] == "finished"
    assert io.read_json_strict(run / "storage.json")["kind"] == "fred"
    cli("evaluate", "--run", str(run), "--nets", "convnet", "--seeds", "1", "--epochs", "1")
    result = io.read_json_strict(run / "evaluation.json")
    assert result["complete"] and not result["failed"]
    assert result["synset"]["storage"]["kind"] == "fred" and "convnet" in result["synset"]["summary"]


def test_new_run_and_explorer_pages_offer_it(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv(R.RUNS_ENV, str(runs))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.radio(key="new.v.synset.kind").set_value("fred").run()
    assert not at.exception and "Ready to launch" in "\n".join(str(e.value) for e in at.success)
    T.make_run(runs / "fredrun", "synset.kind=fred")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["wb.run"] = "fredrun"
    at.run()
    at.switch_page("workbench/app_pages/explorer.py")
    at.run()
    assert not at.exception and not at.error
    assert at.get("plotly_chart"), "no grid for the fred run"


def test_the_synsets_bench_profile_compares_both_selections():
    from bench.profiles import PROFILES

    cells = {c.name: c for c in PROFILES["synsets"].cells}
    for b in (1, 10):
        assert "synset.selection=lowpass" not in cells[f"ipc{b}_dm_fred"].overrides  # FreD's default
        low = cells[f"ipc{b}_dm_fred_lowpass"]
        assert low.synset == "fred" and "synset.selection=lowpass" in low.overrides and low.budget_ipc == b
