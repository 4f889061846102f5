"""Knowledge about an option lives on its field, and a method declares what it needs.

Every config, method and synset field is declared with ``haba_core.options.option`` (help, range, choices);
validation, the CLI's help and the New run page read that declaration and nothing else. A method that declares
expert trajectories (``Method.expert_field``) is handled as MTT is, by the page, its check and the bench, without
its name being compared anywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from streamlit.testing.v1 import AppTest

from bench.cell import cell_overrides, experts_dir
from bench.profiles import PROFILES, Cell
from haba_core import cli
from haba_core.config import RunConfig, resolve_config
from haba_core.errors import ConfigError
from haba_core.methods import METHODS
from haba_core.methods.dm import DM, DMConfig
from haba_core.methods.experts import ExpertConfig
from haba_core.options import option, option_specs
from haba_core.synsets import SYNSETS
from haba_core.validate import checked_fields
from workbench import newrun as NR
from workbench import runs as R

ROOT = Path(__file__).resolve().parents[1]


def config_classes() -> list[type]:
    """Every dataclass whose fields are options: the run config and its sections, every registered method's and
    synset kind's ``Config``, the experts' config."""
    out, todo = [], [RunConfig, ExpertConfig]
    todo += [METHODS.get(m).Config for m in METHODS.list()] + [SYNSETS.get(k).Config for k in SYNSETS.list()]
    while todo:
        cls = todo.pop(0)
        if cls not in out:
            out.append(cls)
            todo += [s.nested for s in option_specs(cls).values() if s.nested is not None]
    return out


@pytest.mark.parametrize("cls", config_classes(), ids=lambda c: c.__name__)
def test_every_field_declares_its_help_and_every_number_its_range(cls):
    for spec in option_specs(cls).values():
        assert spec.help.strip(), f"{cls.__name__}.{spec.name} has no help"
        if spec.kinds & {"int", "float"} and spec.parse is None:  # every number is checked (a parse checks its own)
            assert spec.range_text(), f"{cls.__name__}.{spec.name} declares no range"
            assert spec.default is None or spec.in_range(spec.default), f"{cls.__name__}.{spec.name}'s default"
        if spec.choices:
            assert spec.default in spec.choices or isinstance(spec.default, tuple), f"{cls.__name__}.{spec.name}"


def test_every_config_class_is_covered():
    names = {c.__name__ for c in config_classes()}
    assert {"RunConfig", "DataConfig", "SynsetConfig", "HabaLossConfig", "EvalConfig", "ExpertConfig"} <= names
    assert {"DMConfig", "DCConfig", "DSAConfig", "MTTConfig", "HabaOptions", "FredOptions"} <= names


def test_an_option_without_help_is_refused():
    with pytest.raises(TypeError, match="needs its help"):
        option(1, help="")


# -- validation reads the declaration, not the name ------------------------------------------------------------
@dataclass(frozen=True)
class Declared:
    widgets: int = option(3, help="a count whose name no rule ever matched", ge=2, lt=10)
    scale: float | None = option(None, help="a positive number", gt=0)
    mode: Literal["a", "b"] = option("a", help="one of two")


def check(**params):
    return checked_fields(Declared, params, "toy.", lambda key, hint: f"Unknown toy.{key}.{hint}")


def test_validation_rejects_a_value_outside_its_declared_range():
    assert check(widgets=9.0, scale=0.5, mode="b") == {"widgets": 9, "scale": 0.5, "mode": "b"}
    with pytest.raises(ConfigError, match=r"toy.widgets=1 is out of range; use an integer in \[2, 10\)\."):
        check(widgets=1)
    with pytest.raises(ConfigError, match=r"toy.widgets=10 is out of range"):
        check(widgets=10)
    with pytest.raises(ConfigError, match=r"toy.scale=0 is out of range; use a number > 0\."):
        check(scale=0)
    with pytest.raises(ConfigError, match=r"toy.scale='x' is not a number; use a number > 0\."):
        check(scale="x")
    with pytest.raises(ConfigError, match="toy.mode='c' is not one of a, b; use one of them."):
        check(mode="c")
    with pytest.raises(ConfigError, match="Unknown toy.mod. Did you mean 'toy.mode'"):
        check(mod="a")


def test_config_fields_are_checked_from_their_declaration():
    with pytest.raises(ConfigError, match=r"haba.temperature=0 is out of range; use a number > 0\."):
        resolve_config(overrides={"haba.temperature": 0})
    with pytest.raises(ConfigError, match="synset.init='nois' is not one of real, noise"):
        resolve_config(overrides={"synset.init": "nois"})
    with pytest.raises(ConfigError, match="method.unroll='slow' is not one of fast, reference"):
        METHODS.get("mtt").make_config({"unroll": "slow"})
    assert resolve_config(overrides={"dsa_strategy": None}).dsa_strategy == ""  # its declared meaning of null


# -- the CLI's help and options listing ------------------------------------------------------------------------
def test_cli_help_and_options_listing_come_from_the_fields(capsys):
    assert cli.main(["options", "mtt", "eval"]) == 0
    out = capsys.readouterr().out
    assert "method mtt:" in out and "method dm:" not in out and "eval:" in out
    assert (
        f"method.syn_steps = 30: {option_specs(METHODS.get('mtt').Config)['syn_steps'].help} (an integer >= 1)" in out
    )
    assert "eval.split = 'test': " in out and "(one of test, val)" in out
    distill = cli.build_parser()._subparsers._group_actions[0].choices["distill"]
    helps = {a.dest: a.help for a in distill._actions}
    assert option_specs(RunConfig)["iterations"].help in helps["iterations"] and "integer >= 1" in helps["iterations"]
    assert (
        "HaBa option: " + option_specs(SYNSETS.get("haba").Config)["n_hallucinators"].help in helps["n_hallucinators"]
    )


# -- a method that declares experts, registered under a name no front end knows ----------------------------------
@dataclass(frozen=True)
class TrajectoryConfig(DMConfig):
    trajectories: str | None = option(None, help="the folder of expert trajectories this backend reads")
    mode: Literal["near", "far"] = option("far", help="a choice the New run page shows as a select box")


class TrajectoryDM(DM):
    """DM that declares expert trajectories (and ignores them): what it needs is all the front ends see."""

    Config = TrajectoryConfig
    label = "Trajectory DM"
    help = "DM declaring experts, registered by a test"
    expert_field = "trajectories"


@pytest.fixture
def trajectory_method():
    METHODS.register("trajectory_dm")(TrajectoryDM)
    try:
        yield "trajectory_dm"
    finally:
        METHODS.unregister("trajectory_dm")


def test_every_method_needing_experts_names_a_field_of_its_config():
    for name in METHODS.list():
        cls = METHODS.get(name)
        assert cls.needs_experts() == (cls.expert_field is not None)
        if cls.needs_experts():
            assert cls.expert_field in {f.name for f in dataclasses.fields(cls.Config)}, name
    assert METHODS.get("mtt").needs_experts() and not METHODS.get("dm").needs_experts()


def test_a_method_declaring_experts_is_treated_as_mtt_without_its_name(trajectory_method, tmp_path):
    # the form model: its experts field and the "train experts first" check
    assert NR.needs_experts(trajectory_method) and not NR.needs_experts("dm")
    assert NR.expert_field(trajectory_method).key == "method.params.trajectories"
    base = NR.preset_config(None)
    d = NR.build_config(base, {"method.name": trajectory_method, "method.params.trajectories": str(tmp_path)})
    errors = NR.check(d, experts_dir=tmp_path).errors
    assert f"Trajectory DM needs expert trajectories; {tmp_path} holds none yet. Train experts first." in errors
    # the bench: the cell waits for its dataset's experts and is pointed at them through the declared field
    profile, out = PROFILES["smoke"], tmp_path / "out"
    cell = Cell("ipc1_trajectory_dm", 1, trajectory_method)
    assert cell.needs_experts and not Cell("ipc1_dm", 1, "dm").needs_experts and not Cell("real", 1, None).needs_experts
    assert f"method.trajectories={experts_dir(out, cell.dataset)}" in cell_overrides(profile, cell, out)
    mtt = Cell("ipc1_mtt", 1, "mtt")
    assert f"method.expert_dir={experts_dir(out, mtt.dataset)}" in cell_overrides(profile, mtt, out)


def test_new_run_page_reads_choices_and_experts_from_the_declarations(trajectory_method, tmp_path, monkeypatch):
    monkeypatch.setenv(R.RUNS_ENV, str(tmp_path / "runs"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.selectbox(key="new.v.method.name").set_value(trajectory_method).run()
    assert not at.exception, [e.value for e in at.exception]
    mode = at.selectbox(key="new.v.method.params.mode")  # a Literal field: a select box with its values
    assert list(mode.options) == ["near", "far"] and mode.value == "far"
    for key, spec in {s.key: s for s in NR.field_specs()}.items():
        if spec.choices and spec.kind == "str":
            assert list(at.selectbox(key=f"new.v.{key}").options) == list(spec.choices), key
    empty = tmp_path / "no_experts"
    empty.mkdir()
    at.text_input(key="new.v.method.params.trajectories").input(str(empty)).run()
    assert "Trajectory DM expert trajectories" in "\n".join(m.value for m in at.markdown)
    assert "Trajectory DM needs expert trajectories" in "\n".join(str(e.value) for e in at.error)
    assert at.button(key="new.launch").disabled
