"""``haba evaluate``: the cross-architecture evaluation of a run folder from the command line
(``haba_core.evaluate.evaluate_run`` on an executor), recorded in the run's ``eval_job.json`` from start to exit
code so the app shows how it ended. The ``haba`` command itself is ``haba_core.cli``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from haba_core import io
from haba_core import runfolder as RF
from haba_core.errors import HabaError


def add_evaluate_parser(sub) -> None:
    """The ``evaluate`` subcommand on ``haba``'s subparsers ``sub``."""
    e = sub.add_parser("evaluate", help="train fresh networks on a run's synset and test them")
    e.add_argument("--run", required=True, help="run folder")
    e.add_argument("--synset", help="synset file (default: the run's final set, else its latest snapshot)")
    from haba_core.nets import NETS

    e.add_argument("--nets", help=f"comma-separated architectures (e.g. convnet,resnet18) of: {', '.join(NETS.list())}")
    e.add_argument("--seeds", type=int, help="networks per architecture")
    e.add_argument("--epochs", type=int)
    e.add_argument("--device")
    e.add_argument("--baseline", choices=["random"], help="also evaluate a random real subset at the same storage")
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="override eval.*, e.g. eval.pairing=all")
    e.add_argument(
        "--batched",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train an architecture's seeds as one grouped network (default: on CUDA only)",
    )
    e.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: this machine (--workers processes); ray: a Ray cluster (--address)",
    )
    e.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local: processes (threads = cores // workers); ray, no --address: local CPUs",
    )
    e.add_argument("--address", help="Ray cluster address (e.g. auto, ray://host:10001); none starts a local Ray")
    e.add_argument("--retries", type=int, default=1, help="extra attempts for a failed task (default 1)")
    e.add_argument("--test-limit", type=int, help="test on a class-balanced subset of this many test images")
    e.add_argument("--threads", type=int, help="torch threads per task (default: cores // workers)")
    e.set_defaults(func=cmd_evaluate)


def cmd_evaluate(a: argparse.Namespace) -> int:
    """Evaluate a run folder; ``eval_job.json`` records this process from start to exit code (the app reads it)."""
    run = Path(a.run)
    if not (run / RF.CONFIG).exists():
        raise HabaError(f"{run} is not a run folder (no config.json); pass --run with a folder made by distill.")
    with RF.recording_evaluation(run) as outcome:
        outcome["exit_code"] = _evaluate(a, run, outcome)
    return outcome["exit_code"]


def _evaluate(a: argparse.Namespace, run: Path, outcome: dict) -> int:
    from haba_core.config import RunConfig, apply_overrides
    from haba_core.evaluate import evaluate_run
    from haba_core.executors import make_executor
    from haba_core.nets import NETS
    from haba_core.reports import matrix_markdown

    cfg = RunConfig.from_dict(io.read_json_strict(run / RF.CONFIG))
    ev = apply_overrides(cfg.to_dict(), a.set or [])["eval"]
    if a.nets is not None:
        ev["nets"] = [n.strip() for n in a.nets.split(",") if n.strip()]
        if not ev["nets"]:
            raise HabaError("--nets is empty; name at least one architecture, e.g. --nets convnet,resnet18.")
    if a.seeds is not None:
        ev["seeds"] = a.seeds
    if a.epochs is not None:
        ev["epochs"] = a.epochs
    ecfg = RunConfig.from_dict({**cfg.to_dict(), "eval": ev}).eval  # validated: --seeds 0 is an error
    if a.test_limit is not None and a.test_limit < 1:
        raise HabaError(f"--test-limit={a.test_limit} is out of range; use an integer >= 1.")
    if a.test_limit:  # a class-balanced subset of the test set (recorded with the results)
        cfg = RunConfig.from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "test_limit": a.test_limit}})
    for name in ecfg.nets:
        NETS.get(name)  # unknown names fail here, with close matches, before any work
    RF.update_eval_job(run, nets=list(ecfg.nets), seeds=ecfg.seeds, epochs=ecfg.epochs)  # what this process runs
    path = Path(a.synset) if a.synset else RF.synset_path(run)
    if not path.exists():
        snaps = list(RF.snapshots(run).values())
        if not snaps:
            raise HabaError(f"{run} has no synset.safetensors and no snapshots yet; let the run reach a snapshot.")
        path = snaps[-1]
    if a.retries < 0 or a.workers < 1 or (a.threads is not None and a.threads < 1):
        raise HabaError("--retries must be >= 0, --workers and --threads >= 1.")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    with make_executor(a.executor, workers=a.workers, address=a.address, threads=a.threads) as executor:
        result = evaluate_run(
            run,
            cfg,
            ecfg,
            path,
            baseline=a.baseline,
            executor=executor,
            retries=a.retries,
            batched=a.batched,
            device=a.device,
            log=print,
        )
    for name in ("synset", "random_real"):
        if name in result:
            print(f"{name}:", result[name]["summary"])
    print(matrix_markdown(result))
    print(f"wrote {run / RF.EVALUATION} and {run / RF.MATRIX_CSV} ({result['wall_s']:.1f} s)")
    if result["failed"]:
        tasks = ", ".join(f["task"] for f in result["failed"])
        outcome["error"] = (
            f"{len(result['failed'])} evaluation task(s) failed after {a.retries + 1} attempt(s) each ({tasks}); "
            f"finished cells are kept in {run / RF.EVAL_DIR / 'cells'}. Evaluate again (the same command, or Launch "
            "evaluation in the app) to compute only what is missing."
        )
        print(f"error: {outcome['error']}", file=sys.stderr)
        return 4
    return 0
