"""Every DD backend x every synset on toy data, the DC distance against hand-computed values, the presets."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from haba_core.config import DataConfig, resolve_config
from haba_core.engine import Callback, Distiller
from haba_core.errors import ConfigError
from haba_core.methods import METHODS, list_methods
from haba_core.methods.dc import distance_wb, loops_for_ipc, match_loss
from haba_core.methods.expert_set import write_synthetic_experts
from haba_core.methods.experts import ExpertConfig
from haba_core.synsets import list_synsets

BASE = [
    "data.name=toy",
    "net.width=16",
    "haba.extractor_width=16",
    "haba.batch=32",
    "synset.budget_ipc=null",
    "synset.n_bases=2",
    "synset.n_hallucinators=2",
    "iterations=2",
    "snapshot_every=0",
    "checkpoint_every=0",
]
METHOD_SETS = {
    "dc": ["method.batch_real=16", "method.outer_loop=2", "method.inner_loop=1"],
    "dsa": ["method.batch_real=16", "method.outer_loop=2", "method.inner_loop=1"],
    "dm": ["method.batch_real=16"],
    "mtt": ["method.syn_steps=3", "method.expert_epochs=1", "method.max_start_epoch=2", "method.batch_syn=8"],
}


@pytest.fixture(scope="module")
def expert_dir(tmp_path_factory):
    """Synthetic (untrained) toy experts for ConvNet width 16: enough for MTT's mechanics."""
    from haba_core.data import dataset_info

    out = tmp_path_factory.mktemp("experts")
    cfg = ExpertConfig(data=DataConfig(name="toy"), epochs=3, net={"name": "convnet", "params": {"width": 16}})
    write_synthetic_experts(out, cfg, dataset_info("toy"), num_experts=2)
    return out


def method_config(method, kind, expert_dir, *extra):
    sets = BASE + [f"method.name={method}", f"synset.kind={kind}"] + METHOD_SETS.get(method, [])
    if method == "mtt":
        sets.append(f"method.expert_dir={expert_dir}")
    return resolve_config(overrides=sets + list(extra))


def test_every_backend_is_registered():
    assert {"dc", "dsa", "dm", "mtt"} <= set(list_methods())


@pytest.mark.parametrize("basis_size", [None, 4])  # full size, and the reduced size that changes how kinds render
@pytest.mark.parametrize("kind", list_synsets())
@pytest.mark.parametrize("method", list_methods())
def test_backend_x_synset_runs_and_learns(method, kind, basis_size, expert_dir):
    steps = []

    class Keep(Callback):
        def on_step(self, d, step, logs):
            steps.append(logs)

    d = Distiller(method_config(method, kind, expert_dir, f"synset.basis_size={basis_size or 'null'}"), [Keep()])
    before = {k: v.detach().clone() for k, v in d.synset.state_dict().items()}
    d.run()
    assert len(steps) == 2
    for logs in steps:
        assert math.isfinite(logs["loss"]) and logs["loss"] >= 0
        assert logs["peak_rss_mb"] > 0
    after = d.synset.state_dict()
    for name in before:  # every learnable tensor of the kind (bases; HaBa's hallucinators) moved
        if name in dict(d.synset.named_parameters()):
            assert not torch.equal(before[name], after[name]), name


@pytest.mark.parametrize("method", ["dc", "dsa", "dm", "mtt"])
def test_matching_loss_reaches_bases_and_hallucinators(method, expert_dir):
    """With HaBa's constraint off, the backend's own loss must give gradients to bases and hallucinators."""
    d = Distiller(method_config(method, "haba", expert_dir, "haba.enabled=false", "iterations=1"))
    d.run()
    s = d.synset
    assert s.bases.grad is not None and s.bases.grad.abs().sum() > 0
    for p in s.hallucinator_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    if method == "mtt":
        assert d.method.syn_lr.grad is not None and d.method.syn_lr.grad != 0


@pytest.mark.parametrize("method", ["dc", "dsa", "dm", "mtt"])
def test_frozen_hallucinators_stay_at_their_initialisation(method, expert_dir):
    """``synset.freeze_hallucinators``: the hallucinators keep the seeded values they start from (the same as an
    unfrozen set of the same seed starts from) while the bases learn through them, with the constraint on."""
    cfg = method_config(method, "haba", expert_dir, "synset.freeze_hallucinators=true")
    free = Distiller(
        cfg.replace(synset=dataclasses.replace(cfg.synset, params={**cfg.synset.params, "freeze_hallucinators": False}))
    )
    d = Distiller(cfg)
    start = [p.detach().clone() for p in d.synset.hallucinator_parameters()]
    for p, q in zip(start, free.synset.hallucinator_parameters(), strict=True):
        assert torch.equal(p, q)  # the initialisation is the unfrozen one's
    bases = d.synset.bases.detach().clone()
    assert [g["name"] for g in d.optimizer.param_groups if "name" in g] == ["bases"] + (
        ["syn_lr"] if method == "mtt" else []
    )
    d.run()
    for p, q in zip(start, d.synset.hallucinator_parameters(), strict=True):
        assert torch.equal(p, q) and p.grad is None
    assert not torch.equal(bases, d.synset.bases)
    assert d.synset.config()["freeze_hallucinators"] is True
    assert d.synset.storage().floats_hallucinators == free.synset.storage().floats_hallucinators


def test_dc_distance_hand_computed():
    # conv gradient (out=2, in=1, 1, 2): row 0 parallel (1 - 1 = 0), row 1 orthogonal (1 - 0 = 1)
    g_real = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 2.0]]]])
    g_syn = torch.tensor([[[[3.0, 0.0]]], [[[5.0, 0.0]]]])
    assert distance_wb(g_real, g_syn).item() == pytest.approx(1.0, abs=1e-5)
    # linear (out=2, in=2): rows are output units; row 0 opposite (1 - (-1) = 2), row 1 at 45 degrees
    lr = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    ls = torch.tensor([[-2.0, 0.0], [1.0, 1.0]])
    assert distance_wb(lr, ls).item() == pytest.approx(2.0 + 1 - 1 / math.sqrt(2), abs=1e-5)
    # 1-d tensors (biases, norm parameters) count zero, as the official code
    b_real, b_syn = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert distance_wb(b_real, b_syn).item() == 0.0
    assert distance_wb(b_real, b_syn, match_bias=True).item() == pytest.approx(1.0, abs=1e-5)
    # the matching loss sums the layers
    total = match_loss([g_syn, ls, b_syn], [g_real, lr, b_real])
    assert total.item() == pytest.approx(1.0 + 3 - 1 / math.sqrt(2), abs=1e-5)


def test_dc_distance_gradient():
    g_real = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    g_syn = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: distance_wb(g_real, s), (g_syn,))


def test_dc_loops_by_ipc():
    assert loops_for_ipc(1) == (1, 1)
    assert loops_for_ipc(10) == (10, 50)
    assert loops_for_ipc(50) == (50, 10)
    assert loops_for_ipc(3) == (10, 50)  # in between: the next listed IPC up
    assert loops_for_ipc(200) == (50, 10)


def reference_get_loops(budget_ipc: float) -> tuple[int, int]:
    """DatasetCondensation's ``get_loops`` table, keyed by the budget rounded up to whole images per class and
    then up to the next IPC the table lists (it defines 1, 10, 20, 30, 40, 50)."""
    table = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
    ipc = math.ceil(budget_ipc)
    return table[min([k for k in table if k >= ipc] or [50])]


@pytest.mark.parametrize("budget", [1, 1.5, 10, 12])
def test_dc_loops_follow_the_storage_budget_for_every_kind(budget, expert_dir, tmp_path):
    """At one budget, pixels and HaBa (many more, smaller bases) run the same loops, the reference's for that
    budget; the resolved pair is recorded in the run's config."""
    loops = set()
    for kind in ("pixels", "haba"):
        d = Distiller(
            method_config(
                "dc",
                kind,
                expert_dir,
                "method.outer_loop=null",
                "method.inner_loop=null",
                "synset.n_bases=null",
                f"synset.budget_ipc={budget}",
            )
        )
        loops.add(d.method.loops())
        assert (d.cfg.method_params["outer_loop"], d.cfg.method_params["inner_loop"]) == d.method.loops()
    assert loops == {reference_get_loops(budget)}


def test_dc_loops_without_a_budget_follow_what_is_stored(expert_dir):
    # 2 full-size bases x 2 hallucinators on toy data store a little over 2 images per class: budget 3 -> 10/50
    d = Distiller(method_config("dc", "haba", expert_dir, "method.outer_loop=null", "method.inner_loop=null"))
    assert 2 < d.plan.ipc_equivalent < 3 and d.method.loops() == reference_get_loops(d.plan.ipc_equivalent)
    d = Distiller(
        method_config(
            "dc", "pixels", expert_dir, "method.outer_loop=null", "method.inner_loop=null", "synset.n_bases=1"
        )
    )
    assert d.method.loops() == (1, 1)


def test_dc_loops_set_in_the_config_win(expert_dir, tmp_path):
    d = Distiller(method_config("dc", "pixels", expert_dir, "method.outer_loop=3", "method.inner_loop=0"))
    assert d.method.loops() == (3, 0)


def test_a_run_folder_records_the_resolved_loops(expert_dir, tmp_path):
    from haba_core import io
    from haba_core.engine import distill

    cfg = method_config(
        "dc",
        "haba",
        expert_dir,
        "method.outer_loop=null",
        "method.inner_loop=null",
        "synset.n_bases=null",
        "synset.budget_ipc=1",
        "iterations=1",
    )
    distill(cfg, tmp_path / "run")
    saved = io.read_json_strict(tmp_path / "run" / "config.json")["method"]["params"]
    assert (saved["outer_loop"], saved["inner_loop"]) == (1, 1)
    distill(cfg.replace(iterations=2), tmp_path / "run", resume=True)  # the recorded config resumes as it is


def test_dsa_without_a_strategy_is_a_clear_error(expert_dir):
    with pytest.raises(ConfigError, match="method dc"):
        Distiller(method_config("dsa", "pixels", expert_dir, "dsa_strategy=none"))


def test_dc_same_seed_same_result(expert_dir):
    cfg = method_config("dsa", "haba", expert_dir, "iterations=1")
    a = Distiller(cfg).run().synset.state_dict()
    b = Distiller(cfg).run().synset.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_dc_bf16_runs_every_convolution_in_bf16_and_matches_in_float32(method, expert_dir):
    from torch.utils._python_dispatch import TorchDispatchMode

    class ConvDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen: set[torch.dtype] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution.default and len(args[0]) > 1:  # not a new net's 1-image probe
                self.seen.add(args[0].dtype)
            return func(*args, **(kwargs or {}))

    losses = {}
    for precision in ("fp32", "bf16"):  # outer_loop 2: the matching passes and the inner loop's training
        d = Distiller(method_config(method, "pixels", expert_dir, f"method.precision={precision}"))
        with ConvDtypes() as mode:
            losses[precision] = d.iterate()[method]
        assert mode.seen == {torch.float32 if precision == "fp32" else torch.bfloat16}, precision
        assert d.method.precision == precision
        assert all(p.dtype == torch.float32 for p in d.synset.parameters())
    assert losses["bf16"] != losses["fp32"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)  # the same distance, in float32 on bf16 grads


PRESETS = sorted(Path(__file__).resolve().parents[1].glob("configs/**/*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_presets_are_valid_configs(path):
    """Every shipped preset resolves, names a registered method and only its hyperparameters, as numbers."""
    cfg = resolve_config(files=[path])
    params = METHODS.get(cfg.method_name).make_config(cfg.method_params)
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        if f.name.startswith(("lr", "momentum", "min_")) and v is not None:
            assert isinstance(v, (int, float)) and not isinstance(v, bool), (f.name, v)  # YAML's "1e-05" is a str


def test_paper_presets_cover_every_backend_dataset_and_ipc():
    names = {p.name for p in PRESETS}
    for ds in ("cifar10", "cifar100", "svhn"):
        for m in ("dc", "dsa", "dm", "mtt"):
            for ipc in (1, 10, 50):
                assert f"{ds}_{m}_ipc{ipc}.yaml" in names
    for m in ("dc", "dsa", "dm", "mtt"):
        assert f"fmnist_cpu_{m}.yaml" in names


@pytest.mark.parametrize(
    ("kind", "official"),
    [("pixels", (0.5, 0.5)), ("haba", (0.95, 0.9))],  # mtt-distillation's distill.py; HaBa's distill_fac.py
)
def test_mtt_momenta_are_each_official_code_s(kind, official, expert_dir):
    """``optimizer_img``/``optimizer_style`` and ``optimizer_lr`` of the official code the set's kind comes from;
    explicit values win, and the resolved momenta are recorded in the run's config."""
    d = Distiller(method_config("mtt", kind, expert_dir))
    by_name = {g["name"]: g["momentum"] for g in d.optimizer.param_groups}
    expected = {"bases": official[0], "syn_lr": official[1]}
    if kind == "haba":
        expected["hallucinators"] = official[0]
    assert by_name == expected
    assert (d.cfg.method_params["momentum"], d.cfg.method_params["momentum_lr"]) == official
    d = Distiller(method_config("mtt", kind, expert_dir, "method.momentum=0.7", "method.momentum_lr=0.2"))
    assert {g["name"]: g["momentum"] for g in d.optimizer.param_groups}["syn_lr"] == 0.2
    assert {g["name"]: g["momentum"] for g in d.optimizer.param_groups}["bases"] == 0.7
