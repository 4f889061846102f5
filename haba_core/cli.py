"""Command line: ``python -m haba_core {distill,experts,evaluate,budget,export,options} ...`` (``evaluate`` in
``haba_core.cli_evaluate``). A flag that sets a config option takes its help from the option's field
(``haba_core.options``), and ``haba options`` lists every option ``--set`` takes the same way.

Errors that haba_core raises on purpose are printed as one ``error: ...`` line (exit code 2), and so is a full or
read-only disk; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from haba_core import io
from haba_core import runfolder as RF
from haba_core.cli_evaluate import add_evaluate_parser
from haba_core.errors import HabaError

if TYPE_CHECKING:
    from haba_core.config import RunConfig


def _registered(registry) -> str:
    """``name (label: help), ...`` of a registry's entries, for help texts: a new entry shows up by itself."""
    return "; ".join(f"{n} ({registry.help(n)})" if registry.help(n) else n for n in registry.list())


def _help(cls: type, name: str) -> str:
    """A flag's help from the declaration of the config field it sets: its help, range or choices, default."""
    from haba_core.options import option_specs

    spec = option_specs(cls)[name]
    return f"{spec.describe()}; default {spec.default}".replace("%", "%%")  # argparse formats help with %


def _add_common_distill(p: argparse.ArgumentParser) -> None:
    from haba_core.config import SynsetConfig
    from haba_core.data import DATASETS
    from haba_core.methods import METHODS
    from haba_core.synsets import SYNSETS

    p.add_argument("--dataset", help=f"dataset (default fashion_mnist): {_registered(DATASETS)}")
    p.add_argument("--method", help=f"DD objective: {_registered(METHODS)}")
    p.add_argument("--synset", help=f"synset kind: {_registered(SYNSETS)}")
    p.add_argument("--budget-ipc", type=float, help=_help(SynsetConfig, "budget_ipc"))
    p.add_argument("--n-bases", type=int, help=_help(SynsetConfig, "n_bases"))
    p.add_argument("--basis-size", type=_basis_size_arg, help=_help(SynsetConfig, "basis_size"))
    _add_synset_options(p)


def _add_synset_options(p: argparse.ArgumentParser) -> None:
    """``--<option>`` for every synset kind's own option (``synset.<option>``): a new kind's flags appear by
    themselves."""
    from haba_core.synsets.base import SYNSETS, option_fields

    for name, (f, kinds) in option_fields().items():
        what = f"{'/'.join(map(SYNSETS.label, kinds))} option: {_help(SYNSETS.get(kinds[0]).Config, name)}"
        flag = "--" + name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action="store_true", default=None, help=what)
        else:
            p.add_argument(flag, type=type(f.default) if isinstance(f.default, (int, float)) else str, help=what)


def _basis_size_arg(text: str) -> int | str:
    return text.lower() if text.lower() in ("auto", "full") else int(text)


def _names(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``: a flag that takes several names at once."""
    return [n.strip() for n in text.split(",") if n.strip()]


def _config_overrides(a: argparse.Namespace) -> dict:
    from haba_core.synsets.base import option_fields

    o = {}
    for flag, key in [
        ("dataset", "data.name"),
        ("method", "method.name"),
        ("synset", "synset.kind"),
        ("budget_ipc", "synset.budget_ipc"),
        ("n_bases", "synset.n_bases"),
        ("basis_size", "synset.basis_size"),
        *((name, f"synset.{name}") for name in option_fields()),
        ("iterations", "iterations"),
        ("seed", "seed"),
        ("device", "device"),
        ("data_root", "data.root"),
    ]:
        v = getattr(a, flag, None)
        if v is not None:
            o[key] = v
    if getattr(a, "data_root", None) is not None:  # a root the user names is the only place read
        o["data.root_only"] = True
    if getattr(a, "log", None):  # --log tensorboard --log wandb, or --log tensorboard,wandb
        o["loggers"] = a.log
    return o


def _distill_config(a: argparse.Namespace, run_dir: Path | None) -> RunConfig:
    """The RunConfig ``distill`` runs: a resumed run's, a prepared folder's, or the files, flags and overrides."""
    from haba_core.config import RunConfig, apply_overrides, resolve_config
    from haba_core.loggers import require

    if run_dir is not None and a.resume and (run_dir / RF.CONFIG).exists():
        from haba_core.resume import resumed_config

        require(a.log or ())  # the sinks the command adds
        return resumed_config(run_dir, a.config or [], _config_overrides(a), a.set or [])
    if run_dir is not None and RF.is_prepared(run_dir):  # prepared by a front end (config.json + queued status)
        flags = [*_config_overrides(a), *(a.set or []), *(a.config or [])]
        if flags or a.eval:
            raise HabaError(
                f"{run_dir} is a prepared run with its own config.json; start it without config flags "
                f"(got {', '.join(map(str, flags)) or '--eval'}), or distill into a new --run-dir."
            )
        return RunConfig.from_dict(io.read_json_strict(run_dir / RF.CONFIG))
    cfg = resolve_config(files=a.config or [], overrides=[])
    d = apply_overrides(cfg.to_dict(), _config_overrides(a))
    d = apply_overrides(d, a.set or [])
    if a.eval:
        d["eval_at_end"] = True
    cfg = RunConfig.from_dict(d)
    require(cfg.loggers)  # a sink the command names needs its package now, not a warning in the run's log later
    return cfg


def cmd_distill(a: argparse.Namespace) -> int:
    from haba_core.cost import print_estimate
    from haba_core.engine import distill
    from haba_core.errors import ResourceError

    if a.run_dir is None and not a.dry_run:
        raise HabaError("distill needs --run-dir, the run folder to create or resume (only --dry-run runs without).")
    run_dir = None if a.run_dir is None else Path(a.run_dir)
    cfg = _distill_config(a, run_dir)
    from haba_core.budget import plan_from_config
    from haba_core.data import dataset_info

    planned = plan_from_config(dataset_info(cfg.data.name, **cfg.data.options), cfg.synset)  # fails before data
    if planned.basis_note:
        print(f"note: {planned.basis_note}", file=sys.stderr)
    if a.dry_run:  # nothing is written and nothing distilled: the storage and the measured cost
        print(planned.describe())
        print()
        print_estimate(cfg, sys.stdout)
        return 0
    if a.estimate:
        est = print_estimate(cfg, sys.stderr)  # stdout stays the run's JSON summary
        if not est.fits:
            raise ResourceError(
                f"{est.problems[0]} Not started (--estimate); run without --estimate to try anyway (the probe's peak "
                "is a measurement, not a bound)."
            )
    d = distill(cfg, run_dir, resume=a.resume, progress=not a.quiet, handle_signals=True)
    status = io.read_json_strict(run_dir / RF.STATUS)
    print(
        json.dumps(
            {
                "run_dir": str(run_dir),
                "state": status["state"],
                "step": d.step,
                "sec_per_iter": d.seconds_per_iteration(),
                "storage": d.plan.to_dict(),
            },
            indent=2,
        )
    )
    return 0 if status["state"] == "finished" else 3


def cmd_budget(a: argparse.Namespace) -> int:
    from haba_core.budget import plan_from_config
    from haba_core.config import RunConfig, apply_overrides
    from haba_core.data import dataset_info

    info = dataset_info(a.dataset)
    d = apply_overrides(RunConfig().to_dict(), _config_overrides(a))  # validated like distill's synset.*
    p = plan_from_config(info, RunConfig.from_dict(d).synset)
    print(json.dumps(p.to_dict(), indent=2) if a.json else p.describe())
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from haba_core.synsets import load_synset

    n = load_synset(a.synset).export(a.out, source=str(a.synset))
    print(f"wrote {n} images to {a.out}")
    return 0


def cmd_options(a: argparse.Namespace) -> int:
    """Every option ``--set`` takes, by section, with its default and what its field declares (help, range or
    choices); ``NAME ...`` keeps the sections whose title has one of them (``eval``, ``mtt``, ``fred``)."""
    from haba_core.config import RunConfig
    from haba_core.methods import METHODS
    from haba_core.options import option_specs
    from haba_core.synsets import SYNSETS

    sections = {"run": (RunConfig, "")}  # title -> (dataclass, key prefix)
    sections |= {s.name: (s.nested, f"{s.name}.") for s in option_specs(RunConfig).values() if s.nested}
    sections |= {f"synset kind {k}": (SYNSETS.get(k).Config, "synset.") for k in SYNSETS.list()}
    sections |= {f"method {m}": (METHODS.get(m).Config, "method.") for m in METHODS.list()}
    for title, (cls, prefix) in sections.items():
        if a.names and not set(a.names) & set(title.split()):
            continue
        print(f"{title}:")
        for spec in option_specs(cls).values():
            if spec.nested is None:
                print(f"  {prefix}{spec.name} = {spec.default!r}: {spec.describe()}")
    return 0


def cmd_experts(a: argparse.Namespace) -> int:
    """Train MTT expert trajectories (skips finished experts, resumes unfinished ones)."""
    from haba_core.methods.experts import resolve_expert_config, train_experts

    fields = {
        "dataset": a.dataset,
        "epochs": a.epochs,
        "zca": True if a.zca else None,
        "seed": a.seed,
        "data_root": a.data_root,
        "data.root_only": True if a.data_root else None,  # a root the user names is the only place read
        "device": a.device,
        "lr": a.lr,
        "batch": a.batch,
        "train_limit": a.train_limit,
    }
    cfg = resolve_expert_config(a.set or [], **fields)
    t0 = time.time()
    log = None if a.quiet else print
    if a.executor == "ray":  # one task per expert on a Ray cluster; finished files land in --out here
        import dataclasses

        from haba_core.executors import make_executor

        root = str(Path(cfg.data.root).resolve())  # workers start elsewhere
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=root))
        with make_executor("ray", workers=a.workers, address=a.address) as ex:
            paths = train_experts(cfg, a.out, a.num_experts, log=log, executor=ex, retries=a.retries)
    else:
        paths = train_experts(cfg, a.out, a.num_experts, workers=a.workers, log=log)
    print(
        json.dumps(
            {
                "out": str(a.out),
                "experts": [str(p) for p in paths],
                "wall_s": round(time.time() - t0, 1),
                "config": cfg.to_dict(),
            },
            indent=2,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="haba", description="Dataset distillation by factorization.")
    sub = p.add_subparsers(dest="command", required=True)

    from haba_core.config import DataConfig, RunConfig
    from haba_core.loggers import REQUIREMENTS, SINKS
    from haba_core.methods.experts import ExpertConfig

    d = sub.add_parser("distill", help="distill a synthetic set into a run folder")
    _add_common_distill(d)
    d.add_argument("--iterations", type=int, help=_help(RunConfig, "iterations"))
    d.add_argument("--run-dir", help="run folder to create (or to resume); required unless --dry-run")
    d.add_argument("--seed", type=int, help=_help(RunConfig, "seed"))
    d.add_argument("--device", help=_help(RunConfig, "device"))
    d.add_argument("--data-root", help="where datasets are looked up (default ./data)")
    d.add_argument("--config", action="append", help="YAML/JSON experiment file(s), applied in order")
    overrides = "dotted override, e.g. method.lr_img=100 (`haba options` lists every key)"
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help=overrides)
    d.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    d.add_argument("--eval", action="store_true", help="evaluate the final set (eval.* settings)")
    sinks = f"also log to (repeatable or comma-separated; pip install -r {REQUIREMENTS}): {_registered(SINKS)}"
    d.add_argument("--log", action="extend", type=_names, metavar="SINK", help=sinks)
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    dry_run = (
        "print the storage breakdown and the measured cost (s/iteration, total time, peak memory: a few iterations "
        "in a separate process) and exit without distilling or writing anything"
    )
    d.add_argument("--dry-run", action="store_true", help=dry_run)
    estimate = "measure the cost first (as --dry-run); refuse to start when its peak memory exceeds what is available"
    d.add_argument("--estimate", action="store_true", help=estimate)
    d.set_defaults(func=cmd_distill)

    add_evaluate_parser(sub)

    from haba_core.data import DATASETS
    from haba_core.synsets import SYNSETS

    b = sub.add_parser("budget", help="print what a storage budget buys")
    b.add_argument("--dataset", default="fashion_mnist", help=_registered(DATASETS))
    b.add_argument("--synset", default="haba", choices=SYNSETS.list(), help=_registered(SYNSETS))
    b.add_argument("--budget-ipc", type=float, default=1.0)
    b.add_argument("--n-bases", type=int, help="plan this many bases per class instead of solving")
    b.add_argument("--basis-size", type=_basis_size_arg, help="auto (default), full, or an integer >= 3")
    _add_synset_options(b)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_budget)

    x = sub.add_parser("export", help="write every image a synset yields to a safetensors file")
    x.add_argument("--synset", required=True)
    x.add_argument("--out", required=True)
    x.set_defaults(func=cmd_export)

    t = sub.add_parser("experts", help="train MTT expert trajectories on real data")
    t.add_argument("--dataset", default="fashion_mnist")
    t.add_argument("--out", required=True, help="expert folder (created; rerun the command to resume it)")
    t.add_argument("--num-experts", type=int, default=10)
    t.add_argument("--epochs", type=int, help=_help(ExpertConfig, "epochs"))
    t.add_argument("--zca", action="store_true", help="ZCA-whiten the data (must match the distillation)")
    t.add_argument("--workers", type=int, default=1, help="experts trained at once (processes; cores are shared)")
    t.add_argument("--seed", type=int, help=_help(ExpertConfig, "seed"))
    t.add_argument("--lr", type=float, help=_help(ExpertConfig, "lr"))
    t.add_argument("--batch", type=int, help=_help(ExpertConfig, "batch"))
    t.add_argument("--train-limit", type=int, help=_help(DataConfig, "train_limit"))
    t.add_argument("--data-root", help="where datasets are looked up (default ./data)")
    t.add_argument("--device", help=_help(ExpertConfig, "device"))
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. net.width=64, dsa_strategy=none")
    t.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    t.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: --workers processes here; ray: one task per expert on a Ray cluster",
    )
    t.add_argument("--address", help="Ray cluster address (e.g. auto, ray://host:10001); none starts a local Ray")
    t.add_argument("--retries", type=int, default=1, help="ray: extra attempts for a failed expert (default 1)")
    t.set_defaults(func=cmd_experts)

    o = sub.add_parser("options", help="list every option --set takes: default, help, range or choices")
    o.add_argument("names", nargs="*", help="only these sections: run, data, synset, haba, eval, a kind, a method")
    o.set_defaults(func=cmd_options)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HabaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only disk met outside haba_core.io's writers: the same clear answer
        if e.errno not in io.DISK_ERRNOS:
            raise
        print(f"error: {io.disk_error(e, e.filename or Path.cwd())}", file=sys.stderr)
        return 2
