"""bf16 on a CPU without it (``haba_core.bf16``): the emulation computes what a native CPU computes (bf16 operands,
products accumulated in float32, one rounding to bf16), checked against float64 arithmetic rounded to bf16, and it
sees every forward and backward matrix product of a training step under ``training.autocast``."""

import json

import pytest
import torch
import torch.nn.functional as F

from haba_core import bf16
from haba_core.nets import create_net
from haba_core.training import autocast

aten = torch.ops.aten


def _mismatch(got, exact):
    """The share of entries that differ from ``exact`` rounded to bf16, and the largest error in units of the last
    place of the entry's operands' scale (``exact``'s RMS: an entry near 0 is a sum that cancelled)."""
    ref = exact.to(torch.bfloat16).double()
    err = (got.double() - ref).abs()
    ulp = exact.pow(2).mean().sqrt() * 2**-8
    return float((err > 0).double().mean()), float((err / ulp).max())


def _operands(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 32, 14, 14, generator=g).bfloat16()
    w = (torch.randn(64, 32, 3, 3, generator=g) * 0.1).bfloat16()
    b = torch.randn(64, generator=g).bfloat16()
    gy = torch.randn(8, 64, 14, 14, generator=g).bfloat16()
    return x, w, b, gy


def _conv_backward(gy, x, w):
    return aten.convolution_backward(gy, x, w, [64], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, True])


def test_emulated_convolutions_and_products_round_the_float32_sums_once():
    x, w, b, gy = _operands()
    a, m, c = x.reshape(-1, 196)[:64], w.reshape(64, -1)[:, :196].t().contiguous(), b[:64]
    with bf16.EmulatedBf16() as mode:
        y = F.conv2d(x, w, b, padding=1)
        grads = _conv_backward(gy, x, w)
        mm, addmm, lin = a @ m, torch.addmm(c, a, m), F.linear(a, m.t(), c)
    assert mode.calls == 5 and y.dtype == mm.dtype == grads[0].dtype == torch.bfloat16
    d = [t.double() for t in (x, w, b, gy, a, m, c)]
    exact = [F.conv2d(d[0], d[1], d[2], padding=1), *_conv_backward(d[3], d[0], d[1])]
    exact += [d[4] @ d[5], torch.addmm(d[6], d[4], d[5]), F.linear(d[4], d[5].t(), d[6])]
    for got, ref in zip([y, *grads, mm, addmm, lin], exact, strict=True):
        share, worst = _mismatch(got, ref)
        assert share < 1e-3 and worst <= 1.0, (share, worst)  # summation order flips a rare last bit


@pytest.mark.skipif(bf16.native_bf16_cpu(), reason="this CPU computes bf16 natively (oneDNN)")
def test_atens_own_bf16_convolution_backward_is_what_the_emulation_replaces():
    """Without the emulation, a CPU lacking bf16 computes a convolution's gradients in ATen's fallback, whose
    rounding is not a native CPU's: most entries differ from the exactly rounded ones."""
    x, w, _, gy = _operands()
    d = [t.double() for t in (gy, x, w)]
    for got, ref in zip(_conv_backward(gy, x, w)[:2], _conv_backward(*d)[:2], strict=True):
        share, _ = _mismatch(got, ref)
        assert share > 0.1, share


def test_a_bf16_training_step_runs_its_backward_through_the_emulation_and_float32_is_untouched(monkeypatch):
    monkeypatch.setattr(bf16, "native_bf16_cpu", lambda: False)  # as on an AVX2-only CPU, whatever this one is
    torch.manual_seed(0)
    net = create_net("convnet", 1, 10, (28, 28))
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    with autocast("fp32", "cpu"):
        F.cross_entropy(net(x), y).backward()
    assert getattr(bf16._installed, "mode", None) is None  # float32 installs nothing
    with autocast("bf16", "cpu"):
        out = net(x)
        loss = F.cross_entropy(out, y)
    mode = bf16._installed.mode
    forward = mode.calls
    loss.backward()  # after the autocast context closed, as every training loop does
    assert out.dtype == torch.bfloat16 and forward >= 4  # 3 convolutions and the classifier
    assert mode.calls - forward >= 5  # the convolutions' backward and the classifier's two products
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())
    before = mode.calls
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()  # float32 in the same thread: the mode lets it pass
    assert mode.calls == before
    assert bf16.ensure_bf16_arithmetic("cpu") is mode  # once per thread


def test_where_bf16_is_native_nothing_is_installed(monkeypatch):
    monkeypatch.setattr(bf16, "native_bf16_cpu", lambda: True)
    assert bf16.ensure_bf16_arithmetic("cpu") is None and bf16.bf16_arithmetic("cpu") == "native"
    with autocast("bf16", "cpu"):
        pass
    assert getattr(bf16._installed, "mode", None) is None
    monkeypatch.setattr(bf16, "native_bf16_cpu", lambda: False)
    assert bf16.bf16_arithmetic("cpu") == "emulated"


def test_the_check_times_all_three_arithmetics_and_sets_a_rerun_beside_its_native_record(tmp_path, monkeypatch):
    from bench import bf16_check

    times = bf16_check.step_times(rounds=1, batch=2)
    assert set(times) == {"fp32", "aten", "emulated"} and all(len(v) == 1 and v[0] > 0 for v in times.values())
    findings, reruns = tmp_path / "findings", tmp_path / "reruns"
    monkeypatch.setattr(bf16_check, "FINDINGS", findings)
    monkeypatch.setattr(bf16_check, "RERUNS", reruns)
    cell = {"name": "ipc1_x__s0", "overrides": ["seed=0"]}

    def record(acc, machine):
        nets = {"convnet": {"mean": acc, "per_seed": [acc]}}
        return {"cell": cell, "accuracy_by_net": nets, "protocol": {"id": "p"}, "wall_s": 9.0, **machine}

    for folder, rec in ((findings, record(0.70, {})), (reruns, record(0.71, {"machine": {"bf16": "emulated"}}))):
        (folder / "s" / "cells").mkdir(parents=True)
        (folder / "s" / "cells" / "ipc1_x__s0.json").write_text(json.dumps(rec))
    report = {"arms": [{"arm": "ipc1_x", "per_net": {"convnet": {"std_seeds": 0.5}}}]}
    (findings / "s.json").write_text(json.dumps(report))
    (row,) = bf16_check.accuracy_rows()
    assert (
        row["bf16"] == ["native", "emulated"]
        and row["same_config"]
        and row["nets"]["convnet"]["std_seeds_of_arm"] == 0.005
    )
    md = bf16_check.markdown(
        {**bf16_check.provenance("bench.bf16_check", []), "batch": 2, "speed": times, "rows": [row]}
    )
    assert "| `s/ipc1_x__s0` | convnet | 70.00 | 71.00 | +1.00 | 0.50 |" in md
    other = {**row, "protocols": ["p", "q"]}
    md = bf16_check.markdown(
        {**bf16_check.provenance("bench.bf16_check", []), "batch": 2, "speed": times, "rows": [other]}
    )
    assert "`s/ipc1_x__s0` **(another config or protocol: not comparable)** |" in md


def test_the_emulation_goes_beneath_a_mode_already_watching_so_the_watcher_sees_bf16(monkeypatch):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Watch(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is aten.mm.default:
                self.seen.add(args[0].dtype)
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(bf16, "native_bf16_cpu", lambda: False)
    a = torch.randn(4, 4).bfloat16()
    with Watch() as watch:
        mode = bf16.ensure_bf16_arithmetic("cpu")  # installed while the watcher is active
        a @ a
    assert watch.seen == {torch.bfloat16} and mode.calls == 1  # the watcher saw bf16, the emulation computed it
    a @ a  # the watcher's exit left the emulation in place
    assert mode.calls == 2 and torch._C._len_torch_dispatch_stack() == 1
    bf16.uninstall()
    assert torch._C._len_torch_dispatch_stack() == 0
