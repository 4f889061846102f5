"""Evaluation speed options: bfloat16 autocast (part of the protocol) and torch.compile (not), checked
against independent computations, and their place in the recorded protocol."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch
from torch import nn

from haba_core import training
from haba_core.config import EvalConfig, resolve_config
from haba_core.data import load_dataset
from haba_core.errors import ConfigError
from haba_core.evaluate import train_seeds
from haba_core.protocol import EvalProtocol
from haba_core.training import Recipe, SeedTrainer, train_epoch


@pytest.fixture(scope="module")
def toy():
    return load_dataset("toy", im_size=12, n_test_per_class=5)


class DtypeProbe(nn.Module):
    """conv -> flatten -> linear, remembering the dtype its convolution computed in."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 12 * 12, 10)
        self.seen: list[torch.dtype] = []

    def forward(self, x):
        h = self.conv(x)
        self.seen.append(h.dtype)
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("precision, expected", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_sets_the_forward_dtype_and_keeps_float32_weights(precision, expected):
    net = DtypeProbe()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))
    train_epoch(net, opt, x, y, 4, torch.Generator().manual_seed(0), precision=precision)
    training.test_accuracy(net, x, y, batch=4, precision=precision)
    assert set(net.seen) == {expected}
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_bf16_training_step_matches_a_hand_written_bf16_step():
    """One SGD step under ``precision="bf16"`` equals the step computed by hand: the convolution and the
    linear layer on bfloat16-rounded inputs and weights, the loss in float32."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(3 * 10 * 10, 5))
    ref = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(6, 1, 12, 12), torch.randint(0, 5, (6,))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    train_epoch(net, opt, x, y, 6, torch.Generator().manual_seed(0), precision="bf16")

    w1, b1, w2, b2 = (p.clone().requires_grad_(True) for p in ref)
    bf = torch.bfloat16
    h = torch.nn.functional.conv2d(x.to(bf), w1.to(bf), b1.to(bf))
    logits = h.flatten(1) @ w2.to(bf).t() + b2.to(bf)
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    grads = torch.autograd.grad(loss, [w1, b1, w2, b2])
    for p, p0, g in zip(net.parameters(), ref, grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 0.5 * g, atol=2e-2, rtol=0)


def test_protocol_precision_is_recorded_and_float32_keeps_the_old_id():
    fp32, bf16 = EvalProtocol(dsa="x"), EvalProtocol(dsa="x", precision="bf16")
    # the id as it was computed before precision existed: sha256 of the sorted JSON of the other fields (of
    # those that existed then: standardize_test_batch came later still, and plain protocols leave it out too)
    later = ("precision", "standardize_test_batch")
    old_fields = {k: v for k, v in dataclasses.asdict(fp32).items() if k not in later}
    old_id = hashlib.sha256(json.dumps(old_fields, sort_keys=True, default=str).encode()).hexdigest()[:10]
    assert fp32.id == old_id
    assert bf16.id != fp32.id and bf16.name.endswith("-bf16")
    assert fp32.record()["precision"] == "fp32" and bf16.record()["precision"] == "bf16"
    # a record written before precision existed trains in float32
    legacy = {k: v for k, v in fp32.record(0.01).items() if k != "precision"}
    assert Recipe.from_protocol(legacy).precision == "fp32"
    assert Recipe.from_protocol(bf16.record(0.01)).precision == "bf16"
    cfg = resolve_config(overrides=["eval.precision=bf16"])
    assert EvalProtocol.from_config(cfg.eval, "").precision == "bf16"


def test_precision_values_are_checked():
    with pytest.raises(ConfigError, match="eval.precision='fp16' is not one of auto, fp32, bf16"):
        resolve_config(overrides=["eval.precision=fp16"])
    with pytest.raises(ConfigError, match="eval.compile"):
        resolve_config(overrides=["eval.compile=3"])
    assert EvalConfig().precision == "auto" and EvalConfig().compile is False


def test_compiled_network_trains_like_the_eager_one(toy):
    """torch.compile changes speed, not arithmetic: the same seed and batches give the same weights (up to
    fusion order) and the same accuracy, through the grouped path as well."""
    x, y = toy.images_train[:40], toy.labels_train[:40]
    src = [lambda g: (x, y)]
    eager = SeedTrainer(src[0], toy, "convnet", Recipe(2, 0.01, net_params={"width": 8}), 0)
    fast = SeedTrainer(src[0], toy, "convnet", Recipe(2, 0.01, net_params={"width": 8}, compile=True), 0)
    assert fast.net is not eager.net and hasattr(fast.net, "_orig_mod")
    for _ in range(2):
        eager.epoch()
        fast.epoch()
    for a, b in zip(eager.net.parameters(), fast.net.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert eager.test() == fast.test()
    recs = train_seeds(src * 2, toy, "convnet", Recipe(1, 0.01, net_params={"width": 8}, compile=True), [0, 1], True)
    assert [r["path"] for r in recs] == ["grouped", "grouped"]


def _losses(method: str, *overrides: str, steps: int = 2, hook=None) -> list[float]:
    from haba_core.engine import Distiller
    from workbench.testing import tiny_config

    cfg = tiny_config(
        f"method.name={method}",
        "synset.kind=pixels",
        "synset.budget_ipc=1",
        f"iterations={steps}",
        "snapshot_every=0",
        "checkpoint_every=0",
        *overrides,
    )
    d = Distiller(cfg)
    if hook is not None:
        make = d.method.ctx.make_net
        d.method.ctx.make_net = lambda: hook(make())
    losses = []
    d.method.step = _recording(d.method.step, losses, method)
    d.run()
    return losses


def _recording(step, out: list, key: str):
    def wrapped(synset, generator):
        logs = yield from step(synset, generator)
        out.append(logs[key])
        return logs

    return wrapped


def test_dm_bf16_runs_its_forward_passes_in_bfloat16_and_compile_keeps_the_loss():
    seen: list[torch.dtype] = []

    def hook(net):
        net.features[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        return net

    fp32 = _losses("dm", "method.precision=fp32", hook=hook)
    assert set(seen) == {torch.float32}
    seen.clear()
    bf16 = _losses("dm", "method.precision=bf16", hook=hook)
    assert set(seen) == {torch.bfloat16}
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=0.1)  # rounding moves the loss, a little
    compiled = _losses("dm", "method.precision=fp32", "method.compile=true")
    assert compiled == pytest.approx(fp32, rel=1e-4)


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_dc_compile_runs_the_real_pass_compiled_and_keeps_the_loss(method, monkeypatch):
    from haba_core.methods import dc

    calls = []
    real = dc.compiled_logits
    monkeypatch.setattr(dc, "compiled_logits", lambda net, x: calls.append(len(x)) or real(net, x))
    eager = _losses(method, "method.batch_real=8", "method.precision=fp32")
    assert calls == []
    fast = _losses(method, "method.batch_real=8", "method.compile=true", "method.precision=fp32")
    assert calls and set(calls) == {8}  # only the real batches go through the compiled graph
    assert fast == pytest.approx(eager, rel=1e-3)


def test_distillation_precision_defaults_follow_the_check():
    """auto (bf16 where native) for DM and MTT, float32 for DC and DSA, which lost more than one std at IPC 1 +
    HaBa on the validation split (tests/test_precision_defaults.py recomputes that rule from the searches; MTT's
    default still rests on the test-split check, bench/results/distill_precision_dc_mtt.md)."""
    from haba_core.methods import METHODS

    defaults = {name: METHODS.get(name).Config().precision for name in ("dm", "dc", "dsa", "mtt")}
    assert defaults == {"dm": "auto", "dc": "fp32", "dsa": "fp32", "mtt": "auto"}


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    from haba_core.protocol import resolve_precision

    class FakeMkldnn:
        def __init__(self, native):
            self.native = native

        def _is_mkldnn_bf16_supported(self):
            return self.native

    monkeypatch.setattr(torch.ops, "mkldnn", FakeMkldnn(True))
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(torch.ops, "mkldnn", FakeMkldnn(False))
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", None) == "bf16"
    # the recorded protocol holds the resolved precision, never "auto"
    cfg = resolve_config(overrides=["eval.precision=auto"])
    assert EvalProtocol.from_config(cfg.eval, "", device="cpu").precision == "fp32"


def _cell(root, profile, name, per_seed, protocol="p1", spi=1.0, precision="fp32"):
    import statistics

    from haba_core import io

    rec = {
        "accuracy_per_seed": per_seed,
        "accuracy_mean": statistics.mean(per_seed),
        "accuracy_std": statistics.pstdev(per_seed),
        "protocol": {"id": protocol},
        "sec_per_iter": spi,
    }
    io.write_json(root / profile / "cells" / f"{name}.json", rec)
    cfg = resolve_config(overrides=["method.name=dm", f"method.precision={precision}"]).to_dict()
    io.write_json(root / profile / "runs" / name / "run" / "config.json", cfg)


def test_distill_precision_check_recomputes_the_gap_and_refuses_unlike_pairs(tmp_path):
    from bench.distill_precision import compare

    _cell(tmp_path, "cpu", "a", [0.70, 0.72, 0.74], spi=2.0)  # mean 0.72, std 0.01633
    _cell(tmp_path, "cpu_bf16", "a", [0.71, 0.73, 0.72], spi=1.0, precision="bf16")  # mean 0.72: gap 0
    _cell(tmp_path, "cpu", "b", [0.70, 0.70, 0.70])
    _cell(tmp_path, "cpu_bf16", "b", [0.69, 0.69, 0.69], precision="bf16")  # gap -0.01 > std 0: fails
    rows = {r["cell"]: r for r in compare(tmp_path, "cpu", "cpu_bf16")}
    assert rows["a"]["gap"] == pytest.approx(0.0, abs=1e-12) and rows["a"]["passes"]
    assert rows["a"]["fp32_std"] == pytest.approx((2 * 0.02**2 / 3) ** 0.5)
    assert rows["b"]["gap"] == pytest.approx(-0.01) and not rows["b"]["passes"]
    _cell(tmp_path, "cpu_bf16", "b", [0.70] * 3, protocol="p2", precision="bf16")
    with pytest.raises(SystemExit, match="protocols"):
        compare(tmp_path, "cpu", "cpu_bf16")
    _cell(tmp_path, "cpu_bf16", "b", [0.70] * 3, precision="bf16")
    from haba_core import io

    cfg = io.read_json_strict(tmp_path / "cpu_bf16" / "runs" / "b" / "run" / "config.json")
    io.write_json(tmp_path / "cpu_bf16" / "runs" / "b" / "run" / "config.json", {**cfg, "seed": 1})
    with pytest.raises(SystemExit, match=r"differ beyond precision: \['seed'\]"):
        compare(tmp_path, "cpu", "cpu_bf16")
    io.write_json(tmp_path / "cpu_bf16" / "runs" / "b" / "run" / "config.json", cfg)
    assert len(compare(tmp_path, "cpu", "cpu_bf16")) == 2
    # a reference that resolved `auto` to bf16 (cpu's DM cells since bf16 became DM's default) is no twin
    rec = io.read_json_strict(tmp_path / "cpu" / "cells" / "b.json")
    io.write_json(tmp_path / "cpu" / "cells" / "b.json", {**rec, "distill_precision": "bf16"})
    with pytest.raises(SystemExit, match="distilled in bf16, not fp32.*cpu_fp32"):
        compare(tmp_path, "cpu", "cpu_bf16")
    io.write_json(tmp_path / "cpu" / "cells" / "b.json", rec)  # without the field, the run's status.json says
    io.write_json(tmp_path / "cpu" / "runs" / "b" / "run" / "status.json", {"precision": "bf16"})
    with pytest.raises(SystemExit, match="distilled in bf16"):
        compare(tmp_path, "cpu", "cpu_bf16")


def test_distill_precision_takes_each_twin_from_the_first_reference_folder_that_has_it(tmp_path):
    from bench.distill_precision import compare

    _cell(tmp_path, "old", "a", [0.60] * 3)
    _cell(tmp_path, "old", "b", [0.70, 0.72, 0.74])
    _cell(tmp_path, "rerun", "a", [0.65] * 3)  # a rerun under newer defaults: it wins over "old" for a
    _cell(tmp_path, "fast", "a", [0.65] * 3, precision="bf16")
    _cell(tmp_path, "fast", "b", [0.72] * 3, precision="bf16")
    rows = {r["cell"]: r for r in compare(tmp_path, "rerun,old", "fast")}
    assert (rows["a"]["reference"], rows["a"]["fp32_mean"]) == ("rerun", pytest.approx(0.65))
    assert (rows["b"]["reference"], rows["b"]["fp32_mean"]) == ("old", pytest.approx(0.72))
    _cell(tmp_path, "fast", "c", [0.72] * 3, precision="bf16")
    with pytest.raises(SystemExit, match="c.json: no float32 twin in rerun, old"):
        compare(tmp_path, "rerun,old", "fast")


def test_the_precision_twins_differ_only_in_pinned_precision():
    from bench.profiles import CPU, PROFILES

    fp32, bf16 = PROFILES["cpu_fp32"], PROFILES["cpu_bf16"]
    want = [c for c in CPU.cells if c.method is not None]  # every distilled cell: DM, DC, DSA, MTT x 2 kinds x 2 IPCs
    assert [c.name for c in fp32.cells] == [c.name for c in bf16.cells] == [c.name for c in want] and len(want) == 16
    for c, a, b in zip(want, fp32.cells, bf16.cells, strict=True):
        assert a.overrides == (*c.overrides, "method.precision=fp32")
        assert b.overrides == (*c.overrides, "method.precision=bf16")


def test_method_precision_auto_resolves_per_device_and_the_run_records_it(tmp_path, monkeypatch):
    from haba_core import io
    from haba_core.engine import distill
    from workbench.testing import tiny_config

    with pytest.raises(ConfigError, match="method.precision='fp16' is not one of auto, fp32, bf16"):
        distill(tiny_config("method.name=dm", "method.precision=fp16"), tmp_path / "bad")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda n=native: n, raising=False)
        run = tmp_path / expected
        d = distill(tiny_config("method.name=dm", "method.precision=auto", "synset.kind=pixels", "iterations=1"), run)
        assert d.method.precision == expected
        assert io.read_json_strict(run / "status.json")["precision"] == expected
    # a backend without a precision option computes in float32, and says so
    assert distill(tiny_config("method.name=dc", "synset.kind=pixels", "iterations=1")).method.precision == "fp32"


def test_allocator_env_preloads_jemalloc_only_when_installed_and_wanted(tmp_path, monkeypatch):
    from haba_core import memory

    lib = tmp_path / "libjemalloc.so.2"
    monkeypatch.setattr(memory, "JEMALLOC_PATHS", (str(lib),))
    assert memory.allocator_env({"PATH": "/bin"}) == {"PATH": "/bin"}  # not installed: unchanged
    lib.write_bytes(b"")
    env = memory.allocator_env({"PATH": "/bin", "LD_PRELOAD": "/other.so"})
    assert env["LD_PRELOAD"] == f"{lib}:/other.so" and env["HABA_ALLOCATOR"] == "jemalloc"
    assert env["MALLOC_CONF"] == "dirty_decay_ms:-1,muzzy_decay_ms:-1"  # freed pages are kept, never re-faulted
    assert memory.allocator_env(env) == env  # idempotent
    assert memory.allocator_env({"MALLOC_CONF": "narenas:1"})["MALLOC_CONF"] == "narenas:1"  # a user's choice wins
    assert memory.allocator_env({"HABA_ALLOCATOR": "system"}) == {"HABA_ALLOCATOR": "system"}


@pytest.mark.skipif(
    __import__("haba_core.memory").memory.jemalloc_library() is None,
    reason="libjemalloc2 is not installed (make setup installs it)",
)
def test_haba_distill_restarts_under_jemalloc_and_records_it(tmp_path):
    """The real program: `python -m haba_core distill` runs under jemalloc (same pid, restarted once), unless
    HABA_ALLOCATOR=system; the run says which in status.json. Library calls of cli.main never restart."""
    import os
    import subprocess

    from haba_core import io
    from tests.conftest import distill_command

    for wanted, expected in (("", "jemalloc"), ("system", "system")):
        run = tmp_path / (expected or "default")
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "HABA_ALLOCATOR")}
        if wanted:
            env["HABA_ALLOCATOR"] = wanted
        p = subprocess.Popen(
            distill_command(run, 2, "pixels", "--budget-ipc", "1"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        status = io.read_json_strict(run / "status.json")
        assert status["allocator"] == expected
        assert status["pid"] == p.pid  # the restart replaced the process: front ends still track the right pid
    from haba_core.memory import active_allocator

    assert active_allocator() == "system"  # this test process (it called nothing that restarts)


class _Recorder(nn.Module):
    """A linear classifier that records every input batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.seen = nn.Linear(48, 5), []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("std", [False, True])
def test_test_pass_in_cpu_chunks_counts_like_whole_batches(std, monkeypatch):
    """The CPU test pass runs each test batch through the network in small chunks; the network sees exactly the
    images (standardized over the whole test batch, not the chunk) and the accuracy that whole batches give."""
    torch.manual_seed(0)
    net = _Recorder()
    images, labels = torch.randn(250, 3, 4, 4) * 3 + 1, torch.randint(0, 5, (250,))
    monkeypatch.delenv(training.TEST_CHUNK_ENV, raising=False)
    assert training.test_chunk("cpu", 100) == training.CPU_TEST_CHUNK < 100
    assert training.test_chunk("cuda", 100) == 100
    batches = []  # by hand: whole test batches of 100 (the last one 50), each standardized on its own
    for i in range(0, 250, 100):
        x = images[i : i + 100]
        batches.append((x - x.mean()) / x.std() if std else x)
    with torch.no_grad():
        correct = sum(
            int((net.fc(b.flatten(1)).argmax(1) == labels[i * 100 : i * 100 + 100]).sum())
            for i, b in enumerate(batches)
        )
    for chunk in (None, "7"):
        if chunk:
            monkeypatch.setenv(training.TEST_CHUNK_ENV, chunk)
        net.seen.clear()
        assert training.test_accuracy(net, images, labels, batch=100, std=std) == correct / 250
        assert max(len(x) for x in net.seen) == int(chunk or training.CPU_TEST_CHUNK)
        assert torch.allclose(torch.cat(net.seen), torch.cat(batches), atol=1e-6)
    assert training.test_chunk("cuda", 100) == 7
    for bad in ("0", "-3", "many"):
        monkeypatch.setenv(training.TEST_CHUNK_ENV, bad)
        with pytest.raises(ValueError, match="HABA_TEST_CHUNK must be a positive integer"):
            training.test_chunk("cpu", 100)


def test_distill_precision_takes_each_bf16_cell_from_the_first_fast_folder_that_has_it(tmp_path):
    from bench.distill_precision import compare

    _cell(tmp_path, "fp32", "a", [0.70] * 3)
    _cell(tmp_path, "fp32", "b", [0.70] * 3)
    _cell(tmp_path, "old_bf16", "a", [0.60] * 3, precision="bf16")  # before a fix: the rerun below shadows it
    _cell(tmp_path, "old_bf16", "b", [0.69] * 3, precision="bf16")
    _cell(tmp_path, "bf16_rerun", "a", [0.71] * 3, precision="bf16")
    rows = {r["cell"]: r for r in compare(tmp_path, "fp32", "bf16_rerun,old_bf16")}
    assert (rows["a"]["fast"], rows["a"]["bf16_mean"]) == ("bf16_rerun", pytest.approx(0.71))
    assert (rows["b"]["fast"], rows["b"]["bf16_mean"]) == ("old_bf16", pytest.approx(0.69))
