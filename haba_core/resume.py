"""``haba distill --resume``: the command's settings against the run's saved config.

A resumed run continues as it was made. Only where the data is read from (``--data-root``), what it runs on
(``--device``), how far it goes (``--iterations``) and where else it logs (``--log``: the sinks only observe) may
change, and they do; any other setting the command names that differs from the saved one is a conflict, refused with
every difference listed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from haba_core import io
from haba_core import runfolder as RF
from haba_core.config import RunConfig, apply_overrides, config_path, flatten, load_config_file, resolve_config
from haba_core.errors import HabaError

# settings that may differ from a resumed run's config: where to look and what to run on, how far to go, and the
# logger sinks (they observe the run, never change it)
RESUMABLE = ("iterations", "device", "data.root", "data.root_only", "loggers")


def resumed_config(run_dir: Path, files: list[str], overrides: dict, sets: list[str]) -> RunConfig:
    """The saved config of ``run_dir`` with the command's :data:`RESUMABLE` settings applied; raises HabaError
    when the command asks for anything else that differs (``overrides``: flag settings by dotted key; ``sets``:
    ``--set`` lines; ``files``: experiment files)."""
    saved = RunConfig.from_dict(io.read_json_strict(Path(run_dir) / RF.CONFIG)).to_dict()  # older layouts read too
    # what the command asks for, resolved as for a new run, compared with the saved run
    asked = apply_overrides(apply_overrides(resolve_config(files=files).to_dict(), overrides), sets)
    keys = [*overrides, *(s.split("=", 1)[0].strip() for s in sets)]
    for f in files:  # every key an experiment file sets
        keys += list(flatten(load_config_file(f)))
    requested = {".".join(path): _lookup(asked, path) for path in map(config_path, dict.fromkeys(keys))}
    conflicts = resume_conflicts(saved, requested)
    if conflicts:
        raise HabaError(
            f"--resume continues {run_dir} as it was made; these settings conflict with it: "
            + "; ".join(conflicts)
            + ". Drop them to resume (only --iterations, --device, --data-root and --log may change), "
            "or distill into a new --run-dir."
        )
    changes = {key: value for key, value in requested.items() if key in RESUMABLE}
    return RunConfig.from_dict(apply_overrides(saved, changes))


def resume_conflicts(saved: dict, requested: dict) -> list[str]:
    """``key: saved -> requested`` for every requested setting that differs from the saved run's."""
    out = []
    for key, value in requested.items():
        if key in RESUMABLE:
            continue
        parts = key.split(".")
        node = _lookup(saved, parts)
        if node is None and len(parts) == 3 and parts[1] == "params":  # the saved run used the default
            node = _default_param(parts[0], saved.get(parts[0], {}).get("name"), parts[2])
        if node != value and not (isinstance(node, list) and list(value or []) == node):
            out.append(f"{key}: the run has {node!r}, the command asks for {value!r}")
    RunConfig.from_dict(saved)  # an unreadable saved config fails here, with its own message
    return out


def _lookup(d: dict, path: list[str]):
    """``d[p0][p1]...``, or None where the path leaves the nested dicts."""
    node: object = d
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _default_param(section: str, name: str | None, key: str):
    """The default of ``method.params.KEY`` / ``net.params.KEY`` for the named method or net (None if unknown)."""
    try:
        if section == "method":
            from haba_core.methods import METHODS

            fields = {f.name: f.default for f in dataclasses.fields(METHODS.get(name or "dm").Config)}
        else:
            from haba_core.nets.registry import net_options

            fields = net_options(name or "convnet")
    except HabaError:
        return None
    return fields.get(key)
