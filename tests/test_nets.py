"""Every registered network forward and backward on both image formats, plus the ConvNet recipe."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from haba_core.errors import ConfigError, UnknownNameError
from haba_core.nets import create_net, list_nets, net_options

FORMATS = [(1, 28, 10), (3, 32, 100)]  # (channels, size, classes): Fashion-MNIST-like, CIFAR100-like


def test_registry_lists_the_baselines():
    assert set(list_nets()) >= {"convnet", "resnet18", "vgg11", "alexnet", "lenet", "mlp"}


@pytest.mark.parametrize("name", list_nets())
@pytest.mark.parametrize("channels,size,classes", FORMATS)
def test_forward_backward(name, channels, size, classes):
    torch.manual_seed(0)
    net = create_net(name, channels, classes, (size, size))
    x = torch.randn(2, channels, size, size)
    logits = net(x)
    assert logits.shape == (2, classes)
    logits.square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname

    net.eval()
    with torch.no_grad():
        feats = net.forward_features(x)
        assert feats.shape == (2, net.num_features)
        torch.testing.assert_close(net.forward_head(feats), net(x))


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownNameError, match="convnet"):
        create_net("convnt", 1, 10, 28)


def test_unknown_option_and_layer_names():
    with pytest.raises(ConfigError, match="width"):
        create_net("convnet", 1, 10, 28, widht=64)
    with pytest.raises(ConfigError, match="instancenorm"):
        create_net("convnet", 1, 10, 28, norm="instnacenorm")
    with pytest.raises(ConfigError, match="maxpooling"):
        create_net("convnet", 1, 10, 28, pool="maxpool")
    with pytest.raises(ConfigError):
        create_net("convnet", 1, 10, 28, act="swishh")


def test_convnet_default_recipe():
    net = create_net("convnet", 1, 10, 28)
    assert net.num_features == 128 * 4 * 4  # reference padding: 28 (+2*3) -> 32 -> 16 -> 8 -> 4
    assert create_net("convnet", 3, 10, 32).num_features == 128 * 4 * 4
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3 and all(m.num_groups == m.num_channels == 128 and m.affine for m in norms)
    assert sum(isinstance(m, nn.AvgPool2d) for m in net.modules()) == 3
    assert net_options("convnet") == {
        "width": 128,
        "depth": 3,
        "norm": "instancenorm",
        "act": "relu",
        "pool": "avgpooling",
        "first_padding": "auto",
    }


@pytest.mark.parametrize("channels,size,classes", FORMATS)
def test_convnet_variants(channels, size, classes):
    net = create_net("convnet", channels, classes, size, width=64, depth=2, norm="batchnorm", pool="maxpooling")
    first = size + 2 * (3 if channels == 1 and size == 28 else 1) - 2  # the first conv's output size
    assert net.num_features == 64 * (first // 4) ** 2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 2
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 2
    net(torch.randn(2, channels, size, size)).sum().backward()
    for norm in ("layernorm", "none"):
        for act in ("leakyrelu", "sigmoid"):
            out = create_net("convnet", channels, classes, size, width=8, norm=norm, act=act, pool="none")
            assert out(torch.randn(2, channels, size, size)).shape == (2, classes)


def test_resnet18_norm_variants():
    bn = create_net("resnet18", 3, 10, 32)
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    inn = create_net("resnet18", 3, 10, 32, norm="instancenorm")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in inn.modules())
    assert all(m.num_groups == m.num_channels for m in inn.modules() if isinstance(m, nn.GroupNorm))


def test_construction_leaves_batchnorm_statistics_alone():
    net = create_net("resnet18", 3, 10, 32)
    assert net.training
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert int(m.num_batches_tracked) == 0 and m.running_mean.abs().sum() == 0


@pytest.mark.parametrize("name", list_nets())
def test_init_is_deterministic_under_manual_seed(name):
    torch.manual_seed(3)
    a = create_net(name, 1, 10, 28).state_dict()
    torch.manual_seed(3)
    b = create_net(name, 1, 10, 28).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_im_size_forms_agree():
    assert create_net("convnet", 1, 10, 28).num_features == create_net("convnet", 1, 10, (28, 28)).num_features
    assert create_net("convnet", 1, 10, (1, 28, 28)).num_features == 128 * 16


def test_too_small_images_raise_config_error():
    with pytest.raises(ConfigError, match="depth|pool|shrink|cannot"):
        create_net("convnet", 1, 10, 16, depth=5)


def test_functional_call_matches_module():
    """MTT unrolls the student with torch.func.functional_call over a flat parameter dict."""
    net = create_net("convnet", 1, 10, 28, width=16)
    x = torch.randn(4, 1, 28, 28)
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    torch.testing.assert_close(torch.func.functional_call(net, params, (x,)), net(x))


def test_convnet_on_1x28x28_is_the_reference_network():
    """DatasetCondensation's ConvNet pads the first conv by 3 on 1-channel 28x28 inputs (2,048 features at
    width 128). Written out with plain torch ops on the net's own weights, the forward pass must agree."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = create_net("convnet", 1, 10, 28).eval()
    assert net.num_features == 2048
    x = torch.randn(4, 1, 28, 28)
    p = dict(net.named_parameters())
    h = x
    for d, conv in enumerate((0, 4, 8)):
        h = F.conv2d(h, p[f"features.{conv}.weight"], p[f"features.{conv}.bias"], padding=3 if d == 0 else 1)
        h = F.group_norm(h, 128, p[f"features.{conv + 1}.weight"], p[f"features.{conv + 1}.bias"], eps=1e-5)
        h = F.avg_pool2d(F.relu(h), 2, 2)
    assert h.shape == (4, 128, 4, 4)
    expected = F.linear(h.flatten(1), p["classifier.weight"], p["classifier.bias"])
    torch.testing.assert_close(net(x), expected)
    # the older network stays available as an explicit option, and other shapes keep padding 1
    assert create_net("convnet", 1, 10, 28, first_padding=1).num_features == 128 * 3 * 3
    assert create_net("convnet", 3, 10, 28).num_features == 128 * 3 * 3
    with pytest.raises(ConfigError):
        create_net("convnet", 1, 10, 28, first_padding=-1)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_reference_first_layer_computes_a_padding_3_convolution(precision, monkeypatch):
    """The reference ConvNet's first layer (1x28x28, padding 3) pads explicitly under CPU bf16 autocast (speed);
    outputs, weight gradients and double backward (MTT) are those of a plain padding-3 convolution, and the
    parameters keep their names (checkpoints and expert trajectories load as before)."""
    from haba_core.nets.convnet import WidePadConv2d
    from haba_core.training import autocast

    torch.manual_seed(0)
    net = create_net("convnet", 1, 10, (28, 28), width=16)
    conv = net.features[0]
    assert isinstance(conv, WidePadConv2d) and isinstance(conv, torch.nn.Conv2d) and conv.padding == (3, 3)
    assert "features.0.weight" in net.state_dict()
    assert type(create_net("convnet", 3, 10, 32).features[0]) is torch.nn.Conv2d  # padding 1: the plain layer
    x = torch.randn(6, 1, 28, 28, requires_grad=True)
    import haba_core.nets.convnet as convnet

    pads, pad = [], convnet.F.pad
    monkeypatch.setattr(convnet.F, "pad", lambda *a, **k: pads.append(a[1]) or pad(*a, **k))
    with autocast(precision, "cpu"):
        ours = conv(x)
    assert pads == ([(3, 3, 3, 3)] if precision == "bf16" else [])  # the explicit pad under bf16 only
    monkeypatch.undo()
    with autocast(precision, "cpu"):
        ref = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=3)  # by hand: padding in the conv
    assert ours.shape == (6, 16, 32, 32) and ours.dtype == ref.dtype
    assert torch.allclose(ours.float(), ref.float(), atol=1e-6 if precision == "fp32" else 1e-2)
    (g_ours,) = torch.autograd.grad(ours.float().square().sum(), conv.weight, create_graph=True)
    (g_ref,) = torch.autograd.grad(ref.float().square().sum(), conv.weight, create_graph=True)
    assert torch.allclose(g_ours, g_ref, rtol=1e-4 if precision == "fp32" else 2e-2, atol=1e-3)
    (gg,) = torch.autograd.grad(g_ours.square().sum(), x)  # double backward through the explicit pad
    assert gg.shape == x.shape and torch.isfinite(gg).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_avg_pool_as_one_matrix_product_is_2x2_average_pooling(dtype, monkeypatch):
    """ConvNet's 2x2 average pooling runs as a matrix product on CPU NCHW maps (speed): forward, backward and the
    double backward MTT and DC take through it agree with ATen's pooling, each output written out by hand as the
    mean of its four inputs; other layouts, odd sizes and compiled graphs keep ATen's kernel."""
    import torch.nn.functional as F

    from haba_core.nets.layers import AvgPool2x2

    pool = create_net("convnet", 1, 10, (28, 28), width=8).features[3]
    assert isinstance(pool, AvgPool2x2) and isinstance(pool, nn.AvgPool2d)
    torch.manual_seed(0)
    x = torch.randn(3, 5, 6, 8).to(dtype)
    by_hand = (
        x[..., 0::2, 0::2].float()
        + x[..., 0::2, 1::2].float()
        + x[..., 1::2, 0::2].float()
        + x[..., 1::2, 1::2].float()
    ) / 4
    calls = []
    real_pool = F.avg_pool2d
    monkeypatch.setattr(F, "avg_pool2d", lambda *a, **k: calls.append(1) or real_pool(*a, **k))
    y = pool(x)
    assert calls == [] and y.dtype == dtype and y.shape == (3, 5, 3, 4)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 0, "atol": 0}
    torch.testing.assert_close(y, by_hand.to(dtype), **tol)  # bf16: one rounding of the float32 sum, as ATen
    torch.testing.assert_close(y, real_pool(x, 2, 2), **tol)

    # a tiny conv -> pool -> linear net: gradients and the double backward (gradient matching) agree with ATen's
    w, v = torch.randn(5, 5, 3, 3, requires_grad=True), torch.randn(4, 5 * 3 * 4, requires_grad=True)
    img = torch.randn(3, 5, 6, 8, requires_grad=True)

    def matching_grad(pool_fn):
        h = pool_fn(F.conv2d(img.to(dtype), w.to(dtype), padding=1))
        loss = F.linear(h.flatten(1).float(), v).logsumexp(1).sum()
        gw, gv = torch.autograd.grad(loss, (w, v), create_graph=True)
        return torch.autograd.grad(gw.square().sum() + gv.square().sum(), img)[0]

    ours, ref = matching_grad(pool), matching_grad(lambda h: real_pool(h, 2, 2))
    torch.testing.assert_close(ours, ref, rtol=1e-4 if dtype == torch.float32 else 2e-2, atol=1e-4)
    assert ours.abs().sum() > 0

    calls.clear()
    pool(x.contiguous(memory_format=torch.channels_last))  # NHWC: ATen's kernel is fast there
    pool(torch.randn(2, 3, 7, 7).to(dtype))  # odd size
    monkeypatch.setattr(AvgPool2x2, "matmul", False)  # the switch bench/speed.py times
    pool(x)
    assert len(calls) == 3


def test_haba_pool_aten_starts_a_process_with_atens_pooling():
    """speed.py's reference paths run their worker processes with ATen's kernel through the environment."""
    import os
    import subprocess
    import sys

    code = "from haba_core.nets.layers import AvgPool2x2; print(AvgPool2x2.matmul)"
    for value, expected in (("aten", "False"), ("matmul", "True")):
        env = {**os.environ, "HABA_POOL": value}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert r.stdout.strip() == expected, r.stderr
