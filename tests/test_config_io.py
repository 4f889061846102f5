import pytest
import torch

from haba_core import io
from haba_core.config import RunConfig, apply_overrides, resolve_config
from haba_core.errors import CheckpointError, ConfigError, UnknownNameError


def test_defaults_round_trip():
    cfg = RunConfig()
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.data.name == "fashion_mnist" and cfg.synset.kind == "haba" and cfg.method_name == "dm"


def test_overrides_and_method_shorthand(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("synset:\n  n_hallucinators: 3\nmethod:\n  name: dm\n")
    cfg = resolve_config(
        files=[f], overrides=["method.lr_img=100", "synset.single_channel=true", "eval.nets=convnet,mlp"]
    )
    assert cfg.synset.params == {"n_hallucinators": 3, "single_channel": True, "freeze_hallucinators": False}
    assert cfg.method_params == {"lr_img": 100}
    assert cfg.eval.nets == ("convnet", "mlp")


def test_synset_kind_options_live_in_params_validated_by_the_kind(tmp_path):
    # the kind's options, resolved with its defaults; the shorthand synset.X and the full path agree
    assert RunConfig().synset.params == {"n_hallucinators": 5, "single_channel": False, "freeze_hallucinators": False}
    a = resolve_config(overrides=["synset.n_hallucinators=2"]).synset
    b = resolve_config(overrides=["synset.params.n_hallucinators=2"]).synset
    assert a == b and a.params["n_hallucinators"] == 2
    # another kind's options are dropped: a HaBa preset switched to pixels stores none
    f = tmp_path / "haba.yaml"
    f.write_text("synset:\n  kind: haba\n  n_hallucinators: 3\n")
    assert resolve_config(files=[f], overrides=["synset.kind=pixels"]).synset.params == {}
    assert resolve_config(files=[f], overrides=["synset.kind=fred"]).to_dict()["synset"]["params"] == {
        "selection": "variance"
    }
    # values are checked by the kind's dataclass
    with pytest.raises(ConfigError, match="n_hallucinators=0 is out of range"):
        resolve_config(overrides=["synset.n_hallucinators=0"])
    with pytest.raises(ConfigError, match="Unknown synset option synset.halucinators.*'synset.n_hallucinators'"):
        resolve_config(overrides=["synset.params.halucinators=2"])
    with pytest.raises(ConfigError, match="'synset.budget_ipc'"):  # a typo of a general field is hinted too
        resolve_config(overrides=["synset.budget_ipcc=2"])


def test_configs_written_before_synset_params_still_read(tmp_path):
    # run folders and experiment files from before synset.params hold the options beside "kind"
    old = RunConfig().to_dict()
    old["synset"] = {k: v for k, v in old["synset"].items() if k != "params"}
    old["synset"].update(kind="haba", n_hallucinators=3, single_channel=True)
    cfg = RunConfig.from_dict(old)
    assert cfg.synset.params == {"n_hallucinators": 3, "single_channel": True, "freeze_hallucinators": False}
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    # an old-layout file sets a value; an override given after it still wins
    f = tmp_path / "old.yaml"
    f.write_text("synset:\n  n_hallucinators: 3\n")
    assert resolve_config(files=[f], overrides=["synset.n_hallucinators=4"]).synset.params["n_hallucinators"] == 4


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError, match="synset.n_hallucinators"):
        resolve_config(overrides=["synset.n_halucinators=2"])
    with pytest.raises(UnknownNameError, match="Unknown synset 'hab'.*'haba'"):
        resolve_config(overrides=["synset.kind=hab"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["nonsense"])


def test_atomic_json_and_jsonl(tmp_path):
    io.write_json(tmp_path / "a.json", {"x": 1})
    assert io.read_json_strict(tmp_path / "a.json") == {"x": 1}
    assert not list(tmp_path.glob(".*tmp"))
    io.append_jsonl(tmp_path / "m.jsonl", {"step": 1})
    with open(tmp_path / "m.jsonl", "a") as fh:
        fh.write('{"step": 2, "lo')  # torn line from a crash
    assert io.read_jsonl_strict(tmp_path / "m.jsonl") == [{"step": 1}]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CheckpointError, match="corrupted"):
        io.read_json_strict(tmp_path / "bad.json")


def test_flatten_state_round_trip():
    state = {
        "a": torch.ones(2),
        "opt": {"state": {0: {"m": torch.zeros(3)}}, "groups": [{"lr": 0.1, "params": [0]}]},
        "t": (1, torch.arange(3)),
    }
    skel, tensors = io.flatten_state(state)
    back = io.unflatten_state(skel, tensors)
    assert torch.equal(back["a"], state["a"]) and 0 in back["opt"]["state"]
    assert back["opt"]["groups"][0]["lr"] == 0.1 and isinstance(back["t"], tuple)
