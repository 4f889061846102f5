"""The official HaBa code (``DatasetFactorization``, ``distill_fac.py``) timed on this machine: its MTT+HaBa outer
iteration and its evaluation of a hallucinated set, at the settings of our own rows (``bench.profile_mtt``,
``bench.speed``'s ``eval``).

Rows:

- ``mtt_haba``: one outer iteration of ``distill_fac.py`` at the settings of ``run_cifar10_ipc10_style5.sh``
  (CIFAR10, IPC 10, ``n_style`` 5, ``syn_steps`` 30, ``expert_epochs`` 2, ``lr_img`` 100, ``lr_lr`` 1e-5,
  ``lr_teacher`` 0.001, ``lr_style`` 100, ``pix_init`` real, the four ``lambda_*`` of the script; DSA and ConvNet
  by default; ``batch_syn`` defaults to the 100 bases), timed from the ``wandb.log({"Progress": it})`` the script
  calls at the start of every iteration. Two departures, neither of which changes the step's arithmetic:
  no ``--zca`` (ZCA only whitens the data once, before distillation) and ``max_start_epoch`` 2 instead of 20
  (it only picks which buffer snapshot a step starts from; 2 lets a 4-epoch expert buffer do).
- ``eval_1`` / ``eval_5``: the official evaluation of a hallucinated set, run by ``distill_fac.py`` itself with
  ``--Iteration 0`` (its evaluation pool is then iteration 0), ``--num_eval`` networks and ``--epoch_eval_train
  50``: for each network a fresh ConvNet is trained by ``utils.evaluate_synset(mode='style_translator')`` on the
  100 bases (IPC 10) x 5 style translators at 3x32x32 (``StyleTranslatorSharedDataset``: 100 images an epoch,
  each base through a random translator; 51 epochs, as ``range(Epoch + 1)`` runs; lr_net the script's step size
  at iteration 0, ``lr_teacher`` 0.001) and tested once on the 10,000 generated test images (``testloader``:
  batches of 128, two loader worker processes, as ``get_dataset`` builds it). One measured iteration is the row's
  work, 1 or 5 networks one after another as the official ``num_eval`` loop runs them, so ``median_s`` is the
  wall seconds of that whole evaluation (training + test) and compares with ours; ``--warmup`` and
  ``--iterations`` count such groups (``bench.peer_speed`` passes 0 and 1). The result adds ``networks`` (each
  timed network's wall, training and test-pass seconds and its test accuracy) and ``train_s`` / ``test_s``
  (medians over them). ``--flops`` counts one more network and reports it times the row's networks (every
  network does the same work: same shapes, epochs and test set) as ``flops``, the one network as
  ``flops_one_network``. The script is stopped once the last network's ``evaluate_synset`` returns (before its
  image saving and its first distillation step). The set is the one the script holds at iteration 0 (bases
  initialised from real images, fresh translators): the same shapes as a distilled one.

    .venv/bin/python -m bench.peers.haba_code --row mtt_haba --checkout /work/peers/DatasetFactorization \\
        --json /tmp/x.json --threads 1 --warmup 1 --iterations 2 --flops [--workdir runs/peers]

Runtime help (each item is also one line of the result's ``runtime_help``):

- wandb is replaced by a module that records nothing (``common.fake_wandb``): the script logs to wandb's servers
  and reads its own arguments back from ``wandb.config._items``.
- ``torchvision.datasets.CIFAR10`` is replaced by a subclass that serves generated, seeded CIFAR10-shaped data
  (50,000 train / 10,000 test uint8 32x32x3 images, 10 balanced classes, ``classes`` as CIFAR10's), through
  torchvision's own ``__getitem__`` and the script's transforms: there is no CIFAR10 here and no internet.
- a stub ``kornia`` stands in when kornia is not installed: ``utils.py`` imports it only for ZCA whitening,
  which these rows do not use.
- ``utils.get_dataset`` reads ``args.kip_zca``, an option neither ``distill_fac.py`` nor ``buffer.py`` defines
  (CIFAR10 without ``--zca`` raises AttributeError): the args get ``kip_zca=False``.
- the expert buffer is made by the checkout's own ``buffer.py`` (see :func:`ensure_buffer`): 10 ConvNet experts
  (one ``replay_buffer_0.pt``, the script's default ``save_interval``) of 4 epochs each, in a child process whose
  CIFAR10 stand-in holds only 256 train and 256 test images (one training batch an epoch), cached in the
  workdir. The buffer's values do not change the step's cost, only its shapes (and with 10 experts, or one more
  than the iterations run, no buffer file is re-read inside the measured iterations).
- in that buffer run ``Tensor.cpu()`` of a CPU tensor returns a copy: ``buffer.py`` snapshots the parameters
  with ``p.detach().cpu()``, which on a CPU is the live parameter itself, so every saved epoch would alias the
  final parameters.
- ``mtt_haba``: the script is stopped (``common.StopPeer`` from the clock hook) at the start of the iteration
  after the measured ones; its default ``Iteration`` 15000 puts its first evaluation and image saving at
  iteration 13500, so none falls inside them. Eval rows: see above.
- outputs (the buffer, ``logged_files``) go to the scratch workdir (``--workdir`` or a temporary folder).

The data, the stub, the buffer and the clock hook are ``bench.peers.trajectory_codes``'s, shared with
``bench.peers.mtt_code``.
"""

from __future__ import annotations

import json
import statistics
import time
import types
from pathlib import Path

import torch

from bench.peers import common
from bench.peers.trajectory_codes import (
    BUFFER_EXPERTS,
    BUFFER_TRAIN_IMAGES,
    EXPERT_EPOCHS,
    HELP_SNAPSHOTS,
    HELP_WANDB,
    HELP_ZCA,
    MAX_START_EPOCH,
    config_settings,
    ensure_buffer,
    prepare_checkout,
    progress_hook,
    use_generated_cifar10,
    workdir,
)

PEER = "haba"
SCRIPT = "distill_fac.py"
ROWS = ["mtt_haba", "eval_1", "eval_5"]
EVAL_NETWORKS = {"eval_1": 1, "eval_5": 5}

EPOCH_EVAL_TRAIN = 50

# run_cifar10_ipc10_style5.sh, less --zca (see the docstring) and with max_start_epoch lowered
HABA_ARGV = [
    "--dataset=CIFAR10",
    "--ipc=10",
    "--n_style=5",
    "--syn_steps=30",
    f"--expert_epochs={EXPERT_EPOCHS}",
    f"--max_start_epoch={MAX_START_EPOCH}",
    "--lr_img=100",
    "--lr_lr=1e-5",
    "--pix_init=real",
    "--lr_teacher=0.001",
    "--lr_style=100",
    "--lambda_club_content=0.1",
    "--lambda_contrast_content=0.1",
    "--lambda_cls_content=1.",
    "--lambda_likeli_content=0.1",
]


class EvalTimer:
    """Times the official evaluation from inside. One measured *iteration* is the row's work: ``per`` networks one
    after another (``evaluate_synset`` calls, as the ``num_eval`` loop makes them), so ``median_s`` compares with
    our own evaluation of as many networks; the clock is marked at the entry of the first network of each group.
    With ``counted`` the network after the measured groups runs under the FLOP counter (one network: every
    network does the same work, so the row's FLOPs are ``per`` times its count). ``epoch`` in test mode is timed
    too (the test pass). Only the clock is read; after the last network it raises :class:`common.StopPeer`."""

    def __init__(self, clock: common.StepClock, per: int, groups: int, counted: bool) -> None:
        self.clock = clock
        self.per = per
        self.timed = per * groups
        self.total = self.timed + (1 if counted else 0)
        self.networks: list[dict] = []
        self._test_s = 0.0

    def install(self, utils: types.ModuleType) -> None:
        evaluate, epoch = utils.evaluate_synset, utils.epoch

        def evaluate_synset(*a, **k):
            i = len(self.networks)
            if i % self.per == 0 or i == self.timed:  # a group starts, or the counted network
                self.clock.mark()
            self._test_s = 0.0
            t0 = time.perf_counter()
            out = evaluate(*a, **k)
            wall = time.perf_counter() - t0
            self.networks.append(
                {
                    "wall_s": round(wall, 4),
                    "train_s": round(wall - self._test_s, 4),
                    "test_s": round(self._test_s, 4),
                    "acc_test": float(out[2]),
                }
            )
            if len(self.networks) == self.total:
                self.clock.mark()
                raise common.StopPeer
            return out

        def timed_epoch(mode, *a, **k):
            if mode != "test":
                return epoch(mode, *a, **k)
            t0 = time.perf_counter()
            try:
                return epoch(mode, *a, **k)
            finally:
                self._test_s += time.perf_counter() - t0

        utils.evaluate_synset, utils.epoch = evaluate_synset, timed_epoch  # evaluate_synset calls utils.epoch


def main() -> None:
    a = common.parse_args(__doc__.splitlines()[0], ROWS)
    checkout = Path(a.checkout).resolve()
    torch.set_num_threads(a.threads)
    work, tmp = workdir(a.workdir)
    try:
        run(a, checkout, work)
    finally:
        if tmp is not None:
            tmp.cleanup()


def run(a, checkout: Path, work: Path) -> None:
    eval_row = a.row in EVAL_NETWORKS
    per = EVAL_NETWORKS.get(a.row, 1)  # networks an iteration (eval rows)
    groups = a.warmup + a.iterations  # iterations run before the counted one
    counted = 1 if a.flops else 0
    iterations_run = groups + counted  # outer iterations (step row) or networks past the groups (eval rows)
    experts = max(BUFFER_EXPERTS, iterations_run + 1)  # no buffer file is re-read inside the measured iterations
    epochs = MAX_START_EPOCH + EXPERT_EPOCHS
    buffer_path, buffer_line = ensure_buffer(
        PEER, checkout, work, experts=experts, epochs=epochs, threads=a.threads, kip_zca=True
    )

    utils, prep_help = prepare_checkout(checkout, kip_zca=True)
    help_lines = [HELP_WANDB, use_generated_cifar10(), *prep_help, HELP_ZCA]
    help_lines += [
        f"max_start_epoch {MAX_START_EPOCH} instead of the run script's 20: it only picks which buffer snapshot a "
        "step starts from",
        buffer_line,
        HELP_SNAPSHOTS,
    ]
    clock = common.StepClock(count_flops_at=groups if a.flops else None)
    argv = [*HABA_ARGV, f"--buffer_path={buffer_path}", f"--data_path={work / 'data'}"]
    timer = None
    if eval_row:
        timer = EvalTimer(clock, per, groups, bool(a.flops))
        argv += ["--Iteration=0", f"--num_eval={timer.total}", f"--epoch_eval_train={EPOCH_EVAL_TRAIN}"]
        timer.install(utils)
        wandb = common.fake_wandb()
        help_lines.append(
            f"--Iteration 0 puts distill_fac.py's evaluation at iteration 0; --num_eval {timer.total} ("
            f"{groups} x {per} networks{' + 1 FLOP-counted' if a.flops else ''}), --epoch_eval_train "
            f"{EPOCH_EVAL_TRAIN}; evaluate_synset and utils.epoch are wrapped only to read the clock, and the script "
            "is stopped once the last network's evaluate_synset returns (before its image saving and its first "
            "distillation step); the expert buffer is there only because the script loads one before its loop"
        )
    else:
        wandb = common.fake_wandb(on_log=progress_hook(clock, iterations_run + 1))
        help_lines.append(
            "the script is stopped at the start of the iteration after the measured ones; its default Iteration "
            "15000 puts its first evaluation and image saving at iteration 13500, so none falls inside them"
        )
    help_lines.append("outputs (expert buffer, logged_files) go to the scratch workdir")
    (work / "data").mkdir(exist_ok=True)
    common.run_script(checkout, SCRIPT, argv, work)

    marks = len([m for m in clock.marks if m == m])
    if marks < iterations_run + 1:
        raise SystemExit(f"the script ended after {marks} clock marks, {iterations_run + 1} expected")
    config = dict(wandb.config._items)
    settings = config_settings(config)
    if eval_row:
        settings.update(
            {
                "bases": [10, config["ipc"], 3, 32, 32],
                "n_style": config["n_style"],
                "networks_an_iteration": per,
                "epoch_eval_train": config["epoch_eval_train"],
                "epochs_trained": config["epoch_eval_train"] + 1,
                "train_images_an_epoch": 10 * config["ipc"],
                "batch_train": config["batch_train"],
                "test_batch": 128,
                "test_loader_workers": 2,
                "lr_net": config["lr_teacher"],
            }
        )
    else:
        settings.update(
            {
                "n_style": config["n_style"],
                "syn_steps": config["syn_steps"],
                "batch_syn": config["batch_syn"] or 10 * config["ipc"],
                "expert_epochs": config["expert_epochs"],
                "max_start_epoch": config["max_start_epoch"],
                "lambdas": {k: config[k] for k in sorted(config) if k.startswith("lambda_")},
                "lr_img": config["lr_img"],
                "lr_style": config["lr_style"],
                "lr_teacher": config["lr_teacher"],
                "lr_lr": config["lr_lr"],
            }
        )
    settings.update({"buffer_experts": experts, "buffer_epochs": epochs, "buffer_train_images": BUFFER_TRAIN_IMAGES})
    extra = {}
    if timer is not None:  # per-network detail; the FLOPs of the row's networks from the one counted
        timed = timer.networks[a.warmup * per : timer.timed]
        extra["networks"] = timed
        extra["train_s"] = statistics.median(n["train_s"] for n in timed)
        extra["test_s"] = statistics.median(n["test_s"] for n in timed)
        if clock.flops is not None:
            extra["flops_one_network"] = clock.flops
            extra["flops"] = clock.flops * per
    result = common.write_result(
        a.json,
        peer=PEER,
        row=a.row,
        checkout=checkout,
        script=SCRIPT,
        argv=argv,
        clock=clock,
        warmup=a.warmup,
        runtime_help=help_lines,
        settings=settings,
        threads=a.threads,
        extra=extra,
    )
    keys = ("row", "steps_s", "median_s", "flops", "train_s", "test_s")
    print(json.dumps({k: result[k] for k in keys if k in result}))


if __name__ == "__main__":
    main()
