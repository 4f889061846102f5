"""Behaviour that follows the reference code (DatasetCondensation, mtt-distillation, HaBa's official code),
each pinned against a computation written out here from the reference's formula, never against our own
saved output. The ConvNet padding and ZCA are pinned in test_nets.py and test_data.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from haba_core import training
from haba_core.augment import apply_dsa, sample_dsa_params
from haba_core.config import EvalConfig, HabaLossConfig
from haba_core.data import load_dataset
from haba_core.engine import Distiller
from haba_core.evaluate import evaluate_synset, random_real_baseline
from haba_core.ledger import LedgerEntry
from haba_core.methods.dc import DCConfig
from haba_core.protocol import EvalProtocol, MixedProtocolsError, protocol_id, require_one_protocol
from haba_core.training import Recipe, augment_batch
from tests.conftest import tiny_config

STRATEGY = "color_crop_cutout_flip_scale_rotate"


def by_hand_standardize(x):
    return (x - x.mean()) / x.std()


@pytest.mark.parametrize("strategy", ["color", "scale", "rotate"])
def test_evaluation_standardizes_first_then_augments(strategy):
    """HaBa's evaluation: ``x = (x - x.mean()) / x.std()`` on the batch, then DiffAugment on the result."""
    x = torch.rand(16, 1, 12, 12) * 3 + 1  # far from zero mean, unit std: the order matters
    g = torch.Generator().manual_seed(5)
    got = augment_batch(x, strategy, g, (12, 12), std=True)
    g_hand = torch.Generator().manual_seed(5)
    p = sample_dsa_params(strategy, 16, g_hand, x.device, (12, 12))  # one draw per image
    expected = apply_dsa(by_hand_standardize(x), p)
    torch.testing.assert_close(got, expected)
    wrong_order = by_hand_standardize(apply_dsa(x, p))
    assert not torch.allclose(got, wrong_order, atol=1e-3)


def test_test_batches_are_standardized_when_the_protocol_says_so():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.randn(50, 1, 4, 4) * 4 + 2, torch.randint(3, (50,))
    expected = (net(by_hand_standardize(x)).argmax(1) == y).float().mean().item()
    assert training.test_accuracy(net, x, y, batch=1000, std=True) == pytest.approx(expected)


def test_standardized_test_images_take_the_statistics_of_reference_sized_batches():
    """HaBa's official evaluation standardizes every *test* batch too, and its test loader holds 128 images:
    each image is standardized with the mean and std of its batch of 128 (the last one shorter)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    # batches that differ in scale, so the statistics of 128 images are not those of the whole set
    x = torch.cat([torch.randn(128, 1, 4, 4) * s + s for s in (1.0, 3.0, 0.5)] + [torch.randn(50, 1, 4, 4) * 2])
    y = torch.randint(3, (len(x),))
    hits = 0
    for i in range(0, len(x), 128):  # the reference test loop, by hand
        xb = x[i : i + 128]
        hits += int((net(by_hand_standardize(xb)).argmax(1) == y[i : i + 128]).sum())
    expected = hits / len(x)
    p128 = EvalProtocol.from_config(EvalConfig(standardize=True), STRATEGY, len(x))
    protocol = p128.record()
    assert protocol["standardize_test_batch"] == 128
    recipe = Recipe.from_protocol(protocol, test_batch=1000)  # the execution batch gives way to the protocol's
    assert recipe.test_batch == 128
    got = training.test_accuracy(net, x, y, recipe.test_batch, recipe.standardize)
    assert got == pytest.approx(expected)
    whole = (net(by_hand_standardize(x)).argmax(1) == y).float().mean().item()
    assert got != pytest.approx(whole)  # the batch size matters here, so it is in the protocol
    other = EvalProtocol.from_config(EvalConfig(standardize=True, standardize_test_batch=256), STRATEGY, len(x))
    assert other.id != p128.id
    # without standardization the test batch is an execution choice: not in the protocol, ids unchanged
    plain = EvalProtocol.from_config(EvalConfig(test_batch=128), STRATEGY, 10000)
    assert plain.standardize_test_batch is None and "standardize_test_batch" not in plain.identity()
    assert (
        plain.id == EvalProtocol.from_config(EvalConfig(test_batch=1000, standardize_test_batch=64), STRATEGY, 10000).id
    )
    assert Recipe.from_protocol(plain.record(), test_batch=500).test_batch == 500
    # and its record is the one written before the field existed, so cached evaluation cells keep their keys
    assert "standardize_test_batch" not in plain.record()


def test_one_protocol_for_every_kind_of_set(toy, tmp_path):
    """HaBa, pixels and the random real subset are evaluated under one protocol (same id) by default."""
    ecfg = EvalConfig(epochs=1, seeds=1, test_batch=200)
    d = Distiller(tiny_config("synset.kind=haba", "iterations=1"))
    p = Distiller(tiny_config("synset.kind=pixels", "iterations=1"))
    look = LedgerEntry(tmp_path / "ledger.jsonl", "fidelity", "eval")  # $HABA_TEST_LEDGER (tests/conftest.py) wins
    ev_h = evaluate_synset(d.synset, toy, ecfg, nets=("mlp",), seeds=1, ledger=look)
    ev_p = evaluate_synset(p.synset, toy, ecfg, nets=("mlp",), seeds=1, ledger=look)
    ev_r = random_real_baseline(toy, 1, ecfg, nets=("mlp",), seeds=1, ledger=look)
    ids = {ev["protocol"]["id"] for ev in (ev_h, ev_p, ev_r)}
    assert len(ids) == 1 and ev_h["protocol"]["standardize"] is False
    assert ev_h["protocol"]["order"] == "standardize_then_augment"
    assert ev_h["protocol"]["test_images"] == len(toy.labels_test)
    assert require_one_protocol([ev_h["protocol"], ev_p["protocol"], ev_r["protocol"]]) == ids.pop()


def test_protocol_ids_separate_what_differs_and_refuse_mixing():
    base = EvalProtocol.from_config(EvalConfig(), STRATEGY, 10000)
    assert base.id == EvalProtocol.from_config(EvalConfig(), STRATEGY, 10000).id
    for changed in (
        EvalConfig(standardize=True),
        EvalConfig(epochs=1000),
        EvalConfig(pairing="all"),
        EvalConfig(lr=0.05),
        EvalConfig(dsa=False),
        EvalConfig(split="val"),
    ):
        assert EvalProtocol.from_config(changed, STRATEGY, 10000).id != base.id
    assert EvalProtocol.from_config(EvalConfig(), STRATEGY, 2000).id != base.id  # another test subset
    # a set's learned lr is the protocol's rule at work, not another protocol
    assert base.record(0.02)["id"] == base.record(None)["id"] and base.record(0.02)["lr"] == 0.02
    assert base.record(None)["lr"] == 0.01
    legacy = {"epochs": 300, "standardize": True, "lr": 0.01}  # written before protocols had ids
    assert protocol_id(legacy) == "legacy"
    with pytest.raises(MixedProtocolsError, match="different protocols"):
        require_one_protocol([base.record(), legacy])
    std = EvalProtocol.from_config(EvalConfig(standardize=True), STRATEGY, 10000).record()
    with pytest.raises(MixedProtocolsError, match="standardized"):
        require_one_protocol([base.record(), std])


def haba_distiller(*extra):
    return Distiller(
        tiny_config(
            "synset.kind=haba",
            "synset.budget_ipc=null",
            "synset.n_bases=3",
            "synset.n_hallucinators=3",
            "iterations=1",
            *extra,
        )
    )


def test_contrastive_pair_follows_the_reference():
    """HaBa's official ``distill_fac.py``: ``style_idx = randperm(n_style)[:2]`` (one pair of distinct
    hallucinators for the whole batch), ``x = cat([style_0(base), style_1(base)])``, then *one* unseeded
    ``DiffAugment(x)``: one op family for the call, parameters drawn per image."""
    d = haba_distiller("haba.batch=null")
    c, s = d.constraint, d.synset
    x, y = c._pair(s, torch.Generator().manual_seed(11))
    # by hand, drawing in the reference's order: the bases, the pair of hallucinators, one DSA draw for 2n rows
    h = torch.Generator().manual_seed(11)
    n, k = s.bases.shape[0], s.n_hallucinators
    idx = torch.randperm(n, generator=h)
    j0, j1 = torch.randperm(k, generator=h)[:2].tolist()
    assert j0 != j1
    b = s.bases[idx]
    views = torch.cat([s.hallucinate(b, j0), s.hallucinate(b, j1)])  # full-size bases: no upsampling
    p = sample_dsa_params(d.ctx.dsa_strategy, 2 * n, h, views.device, tuple(s.info.im_size))
    assert len(p.ops) == 1  # DSA's single mode: one family for both views
    torch.testing.assert_close(x, apply_dsa(views, p))
    assert torch.equal(y, s.labels_base[idx])


def test_contrastive_batch_holds_every_basis_by_default():
    assert HabaLossConfig().batch is None
    d = haba_distiller()  # the tiny config caps at 32; 3 bases x 10 classes fit anyway
    d_all = Distiller(
        tiny_config(
            "synset.kind=haba",
            "synset.budget_ipc=null",
            "synset.n_bases=5",
            "synset.n_hallucinators=2",
            "haba.batch=null",
            "iterations=1",
        )
    )
    x, y = d_all.constraint._pair(d_all.synset, torch.Generator().manual_seed(0))
    assert len(y) == 50 and len(x) == 100  # 5 bases x 10 classes, no cap; two views each
    _, y = d.constraint._pair(d.synset, torch.Generator().manual_seed(0))
    assert len(y) == 30
    capped = Distiller(
        tiny_config(
            "synset.kind=haba",
            "synset.budget_ipc=null",
            "synset.n_bases=5",
            "synset.n_hallucinators=2",
            "haba.batch=16",
            "iterations=1",
        )
    )
    assert len(capped.constraint._pair(capped.synset, torch.Generator().manual_seed(0))[1]) == 16


def test_dsa_inner_loop_is_plain_sgd_with_per_image_augmentation():
    """DatasetCondensation's inner loop: ``SGD(net.parameters(), lr=lr_net)`` (no momentum) over the synthetic
    set, each batch through an unseeded DiffAugment (one draw per image)."""
    assert DCConfig().momentum_net == 0.0
    d = Distiller(
        tiny_config(
            "method.name=dsa",
            "synset.kind=pixels",
            "synset.budget_ipc=null",
            "synset.n_bases=3",
            "method.inner_loop=2",
            "method.batch_train=8",
            "iterations=1",
        )
    )
    m, s = d.method, d.synset
    net = m.ctx.make_net()
    hand = copy.deepcopy(net)
    opt = torch.optim.SGD(net.parameters(), lr=m.cfg.lr_net, momentum=m.cfg.momentum_net)
    m._train_net(net, opt, s, 2, torch.Generator().manual_seed(4))

    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        images, labels = s.materialize(g, pairing="random")
    params = list(hand.parameters())
    for _ in range(2):
        order = torch.randperm(len(images), generator=g)
        for i in range(0, len(images), 8):
            idx = order[i : i + 8]
            p = sample_dsa_params(m.ctx.dsa_strategy, len(idx), g, images.device, tuple(s.info.im_size))
            loss = F.cross_entropy(hand(apply_dsa(images[idx], p)), labels[idx])
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for w, gw in zip(params, grads, strict=True):
                    w -= m.cfg.lr_net * gw  # plain SGD: w <- w - lr * grad
    for a, b in zip(net.parameters(), hand.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_dm_docstring_cites_no_reference_dm_haba_code():
    import haba_core.methods.dm as dm

    assert "official HaBa DM" not in dm.__doc__ and "no reference implementation" in dm.__doc__


def test_a_run_can_hold_out_a_validation_split_and_evaluate_on_it():
    cfg = tiny_config("synset.kind=pixels", "data.val_per_class=5", "eval.split=val", "iterations=1")
    d = Distiller(cfg)
    assert torch.bincount(d.dataset.labels_val).tolist() == [5] * 10
    ev = d.evaluate(("mlp",), 1)
    assert ev["protocol"]["split"] == "val" and ev["protocol"]["test_images"] == 50
    full = load_dataset("toy")
    assert len(d.dataset.labels_train) == len(full.labels_train) - 50
