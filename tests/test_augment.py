"""DSA: sampled parameters are shared (siamese), reproducible from a generator, and differentiable."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from haba_core.augment import DSA, DSA_DEFAULT, DSA_OPS, apply_dsa, dsa, parse_strategy, sample_dsa_params
from haba_core.errors import ConfigError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 6, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=gen(1000 + seed))


def draw(strategy: str = DSA_DEFAULT, b: int = 6, seed: int = 0, im=(32, 32), **kw):
    return sample_dsa_params(strategy, b, gen(seed), "cpu", im, **kw)


@pytest.mark.parametrize("mode", ["single", "multiple"])
def test_siamese_same_params_same_output(mode):
    x = images()
    p = draw(mode=mode)
    torch.testing.assert_close(apply_dsa(x, p), apply_dsa(x.clone(), p))
    a, b = DSA(mode=mode)(x, x.clone(), generator=gen(5))
    torch.testing.assert_close(a, b)


def test_same_seed_reproducible_different_seed_differs():
    x = images()
    out = apply_dsa(x, draw(seed=7, mode="multiple"))
    torch.testing.assert_close(out, apply_dsa(x, draw(seed=7, mode="multiple")))
    assert not torch.allclose(out, apply_dsa(x, draw(seed=8, mode="multiple")))
    singles = [apply_dsa(x, draw(seed=s)) for s in range(4)]
    assert any(not torch.allclose(singles[0], o) for o in singles[1:])
    torch.manual_seed(0)
    p1 = sample_dsa_params(DSA_DEFAULT, 6, None, "cpu", 32, mode="multiple")
    torch.manual_seed(0)
    p2 = sample_dsa_params(DSA_DEFAULT, 6, None, "cpu", 32, mode="multiple")
    torch.testing.assert_close(apply_dsa(x, p1), apply_dsa(x, p2))


@pytest.mark.parametrize("op", DSA_OPS)
def test_gradient_flows_through_every_op(op):
    x = images(b=4).requires_grad_(True)
    p = draw(op, b=4, seed=1)
    if op == "flip":  # make sure both branches are exercised
        p = dataclasses.replace(p, flip=torch.tensor([True, False, True, False]))
    weights = torch.randn(4, 3, 32, 32, generator=gen(9))
    (apply_dsa(x, p) * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["single", "multiple"])
@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (3, 3, 32, 32), (2, 3, 24, 40)])
def test_shapes_preserved(shape, mode):
    x = torch.randn(*shape)
    for seed in range(6):
        p = draw(b=shape[0], seed=seed, im=shape[-2:], mode=mode)
        assert apply_dsa(x, p).shape == x.shape


@pytest.mark.parametrize("strategy", ["", "none", "None", None])
def test_identity_strategy(strategy):
    x = images()
    assert parse_strategy(strategy) == ()
    assert apply_dsa(x, draw(strategy)) is x
    assert dsa(x, strategy, gen(0)) is x


def test_flip_flips_when_forced():
    x = images(b=3)
    p = draw("flip", b=3)
    torch.testing.assert_close(apply_dsa(x, dataclasses.replace(p, flip=torch.ones(3, dtype=torch.bool))), x.flip(3))
    torch.testing.assert_close(apply_dsa(x, dataclasses.replace(p, flip=torch.zeros(3, dtype=torch.bool))), x)


def test_smaller_batch_uses_first_rows():
    x = images(b=8)
    p = draw(b=8, mode="multiple")
    torch.testing.assert_close(apply_dsa(x[:3], p), apply_dsa(x, p)[:3])
    with pytest.raises(ValueError):
        apply_dsa(images(b=9), p)
    with pytest.raises(ValueError):
        apply_dsa(torch.randn(8, 3, 28, 28), p)  # drawn for 32x32


def test_unknown_op_names_valid_ops():
    with pytest.raises(ConfigError, match="rotate") as err:
        sample_dsa_params("color_rotat", 4, gen(0), "cpu", 32)
    assert all(op in str(err.value) for op in DSA_OPS)
    with pytest.raises(ConfigError):
        sample_dsa_params(DSA_DEFAULT, 4, gen(0), "cpu", 32, mode="both")


def test_single_mode_draws_one_op_from_the_strategy():
    seen = set()
    for seed in range(60):
        p = draw(seed=seed)
        assert len(p.ops) == 1 and p.ops[0] in DSA_OPS
        seen.add(p.ops[0])
    assert seen == set(DSA_OPS)
    assert draw(mode="multiple").ops == DSA_OPS


def test_parameter_ranges():
    p = draw(b=2000, mode="multiple")
    assert p.brightness.abs().max() <= 0.5 and 0 <= p.saturation.min() and p.saturation.max() <= 2
    assert 0.5 <= p.contrast.min() and p.contrast.max() <= 1.5
    assert p.shift.abs().max() == 4 and set(p.shift.unique().tolist()) == set(range(-4, 5))
    assert p.scale.min() >= 1 / 1.2 and p.scale.max() <= 1.2
    assert p.angle.abs().max() <= math.radians(15)
    assert 0.4 < p.flip.float().mean() < 0.6
    assert p.cutout_size == (16, 16)


def test_crop_is_a_zero_filled_shift():
    x = images(b=2)
    p = dataclasses.replace(draw("crop", b=2), shift=torch.tensor([[2, -3], [0, 4]]))
    out = apply_dsa(x, p)
    expect = torch.zeros_like(x)
    expect[0, :, 2:, :-3] = x[0, :, :-2, 3:]
    expect[1, :, :, 4:] = x[1, :, :, :-4]
    torch.testing.assert_close(out, expect)


def test_cutout_zeroes_a_clipped_square():
    x = torch.ones(2, 1, 28, 28)
    p = dataclasses.replace(draw("cutout", b=2, im=(28, 28)), cutout_center=torch.tensor([[14, 14], [0, 27]]))
    out = apply_dsa(x, p)
    assert p.cutout_size == (14, 14)
    assert (out[0] == 0).sum() == 14 * 14
    assert (out[1] == 0).sum() == 7 * 8  # centred at the top edge near the right: rows [-7, 7), cols [20, 34)


def test_color_on_one_channel_has_no_saturation_effect():
    x = images(b=3, c=1, h=28, w=28)
    p = draw("color", b=3, im=(28, 28))
    p = dataclasses.replace(p, brightness=torch.zeros(3), contrast=torch.ones(3))
    torch.testing.assert_close(apply_dsa(x, p), x)


def test_batchwise_shares_row_zero():
    p = draw(b=5, mode="multiple", batchwise=True)
    for t in (p.brightness, p.shift, p.scale, p.angle, p.flip, p.cutout_center):
        assert (t == t[:1]).all()


def test_scale_and_rotate_are_identity_at_neutral_parameters():
    x = images(b=2)
    p = draw("scale_rotate", b=2, mode="multiple")
    p = dataclasses.replace(p, scale=torch.ones(2, 2), angle=torch.zeros(2))
    torch.testing.assert_close(apply_dsa(x, p), x, atol=1e-4, rtol=1e-4)
