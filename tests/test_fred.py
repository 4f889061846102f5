"""The frequency-domain synset (``fred``): its DCT against scipy's, its storage formula, and that it shows up
everywhere a synset kind does (budget, distill, evaluation, the app's New run page and explorer, the bench)
without any of them naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch
from streamlit.testing.v1 import AppTest

from haba_core import io
from haba_core.budget import plan_from_config, solve
from haba_core.config import SynsetConfig
from haba_core.data import dataset_info
from haba_core.synsets import SYNSETS, create_synset, load_synset
from workbench import grids as G
from workbench import runs as R
from workbench import testing as T

ROOT = Path(__file__).resolve().parents[1]


def scipy_low_block(x: np.ndarray, k: int) -> np.ndarray:
    return scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")[..., :k, :k]


def scipy_render(block: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    full = np.zeros((*block.shape[:-2], *hw))
    full[..., : block.shape[-2], : block.shape[-1]] = block
    return scipy.fft.idctn(full, axes=(-2, -1), norm="ortho")


def test_registered_with_what_front_ends_need():
    cls = SYNSETS.get("fred")
    assert SYNSETS.label("fred") and SYNSETS.help("fred")
    assert cls.option_names() == () and not cls.contrastive


@pytest.mark.parametrize("k", [1, 5, 14])
def test_coefficients_and_render_are_the_orthonormal_dct_of_scipy(k):
    info = dataset_info("cifar10")  # 3x32x32: non-trivial channels
    s = create_synset("fred", info, n_bases=1, basis_size=k)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    coeff = s.coefficients(x.float())
    np.testing.assert_allclose(coeff.numpy(), scipy_low_block(x.numpy(), k), atol=1e-4)
    block = torch.randn(4, 3, k, k, dtype=torch.float64)
    np.testing.assert_allclose(s.render(block.float(), None).numpy(), scipy_render(block.numpy(), (32, 32)), atol=1e-4)


def test_all_frequencies_are_a_lossless_change_of_basis():
    s = create_synset("fred", dataset_info("fashion_mnist"), n_bases=1, basis_size=None)
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(s.render(s.coefficients(x), None), x, atol=1e-4, rtol=0)


def test_storage_is_c_k_k_per_image_and_auto_keeps_half_the_side():
    info = dataset_info("fashion_mnist")  # 10 classes, 1x28x28: IPC 1 = 7,840 floats
    p = plan_from_config(info, SynsetConfig(kind="fred", budget_ipc=1.0))
    assert p.basis_shape == (1, 14, 14) and p.n_bases == 7840 // (10 * 14 * 14) == 4
    assert p.floats_total == 4 * 10 * 14 * 14 and p.floats_hallucinators == 0
    assert "14x14" in p.basis_note
    p10 = solve(info, "fred", 10.0, basis_size=7)
    assert p10.n_bases == 78400 // (10 * 7 * 7) == 160
    s = create_synset("fred", info, n_bases=p10.n_bases, basis_size=7)
    assert s.storage()["floats_total"] == p10.floats_total == sum(t.numel() for t in s.parameters())


def test_init_from_real_is_a_low_pass_real_image_of_the_class(toy):
    k = 5
    s = create_synset("fred", toy.info, n_bases=2, basis_size=k)
    s.init_from_real(toy, torch.Generator().manual_seed(0))
    images = s.render(s.bases.detach(), None).numpy()
    for c in range(toy.info.num_classes):
        real = toy.images_train[toy.indices_of_class(c)].double().numpy()
        low = scipy_render(scipy_low_block(real, k), tuple(toy.info.im_size))
        for i in s.class_indices(c).tolist():
            assert np.abs(low - images[i]).reshape(len(low), -1).max(1).min() < 1e-4


def test_save_load_and_grids(tmp_path, toy):
    s = create_synset("fred", toy.info, n_bases=3, basis_size=6)
    s.init_from_real(toy)
    s.save(tmp_path / "f.safetensors")
    t = load_synset(tmp_path / "f.safetensors")
    torch.testing.assert_close(t.materialize()[0], s.materialize()[0])
    g = G.class_grid(t, 0)
    assert g.n_bases == 3 and G.row_labels(g) == ["basis", "image"]
    assert G.grid_image(g).size[0] > 0


def test_budget_command_distill_and_evaluate_take_it(tmp_path):
    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "haba_core", *args], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "synset               fred" in cli("budget", "--dataset", "fashion_mnist", "--synset", "fred")
    run = tmp_path / "runs" / "fred"
    cli("distill", "--run-dir", str(run), "--quiet", "--synset", "fred", "--method", "dm", "--iterations", "3",
        *[a for s in T.TINY_SET_LINES for a in ("--set", s)])  # fmt: skip
    assert io.read_json(run / "status.json")["state"] == "finished"
    assert io.read_json(run / "storage.json")["kind"] == "fred"
    cli("evaluate", "--run", str(run), "--nets", "convnet", "--seeds", "1", "--epochs", "1")
    result = io.read_json(run / "evaluation.json")
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


def test_the_synsets_bench_profile_includes_it():
    from bench.profiles import PROFILES

    assert {"ipc1_dm_fred", "ipc10_dm_fred"} <= {c.name for c in PROFILES["synsets"].cells}
