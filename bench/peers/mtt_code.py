"""mtt-distillation (``distill.py``) timed on this machine: its MTT outer iteration on pixels, the peer of our
MTT step without HaBa.

Row:

- ``mtt_pixels``: one outer iteration of ``distill.py`` at CIFAR10 IPC 10 with the README's CIFAR-10 IPC 10
  settings (its hyper-parameter table, issue #7): ``syn_steps`` 30, ``expert_epochs`` 2, ``lr_lr`` 1e-5,
  ``lr_teacher`` 0.01, ``batch_syn`` the whole set of 100 images (the default), DSA and ConvNet (defaults),
  ``pix_init`` real; timed from the ``wandb.log({"Progress": it})`` the script calls at the start of every
  iteration. Departures, none of which changes the step's arithmetic: no ``--zca`` (ZCA only whitens the data
  once, before distillation), ``max_start_epoch`` 2 instead of 20 (it only picks which buffer snapshot a step
  starts from; 2 lets a 4-epoch expert buffer do), and ``lr_img`` 1000 instead of the table's 10^5, which the
  author calls a typo (issue #31: it makes the learnable step size explode; 100 or 1000 are stable).
  ``--num_eval 0`` (its own option) empties the evaluation that ``distill.py`` runs at iteration 0 (its
  evaluation pool always holds iteration 0); the image saving of iteration 0 still runs, so ``--warmup`` must
  be at least 1: iteration 0 is never timed.

    .venv/bin/python -m bench.peers.mtt_code --row mtt_pixels --checkout /work/peers/mtt-distillation \\
        --json /tmp/x.json --threads 1 --warmup 1 --iterations 2 --flops [--workdir runs/peers]

Runtime help (each item is also one line of the result's ``runtime_help``; the data, stub, buffer and clock
helpers are ``bench.peers.haba_code``'s):

- wandb is replaced by a module that records nothing (``common.fake_wandb``): the script logs to wandb's servers
  and reads its own arguments back from ``wandb.config._items``.
- ``torchvision.datasets.CIFAR10`` is replaced by a subclass that serves generated, seeded CIFAR10-shaped data
  (50,000 train / 10,000 test uint8 32x32x3 images, 10 balanced classes) through torchvision's own
  ``__getitem__`` and the script's transforms: there is no CIFAR10 here and no internet.
- a stub ``kornia`` stands in when kornia is not installed: ``utils.py`` imports it only for ZCA whitening.
- the expert buffer is made by the checkout's own ``buffer.py``: 10 ConvNet experts of 4 epochs, in a child
  process whose CIFAR10 stand-in holds only 256 train and 256 test images, cached in the workdir (values
  irrelevant to the step's cost; with 10 experts, or one more than the iterations run, no buffer file is re-read
  inside the measured iterations).
- in that buffer run ``Tensor.cpu()`` of a CPU tensor returns a copy: ``buffer.py`` snapshots the parameters
  with ``p.detach().cpu()``, which on a CPU is the live parameter itself (every saved epoch would alias the
  final parameters).
- ``Tensor.cuda()`` returns the tensor itself when torch has no CUDA: ``distill.py`` saves the images of
  iteration 0 through ``image_syn.cuda()``, which a CPU-only torch refuses; nothing else calls it.
- ``--num_eval 0`` (see above); the script is stopped (``common.StopPeer`` from the clock hook) at the start of
  the iteration after the measured ones.
- outputs (the buffer, ``logged_files``) go to the scratch workdir (``--workdir`` or a temporary folder).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
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

PEER = "mtt"
SCRIPT = "distill.py"
ROWS = ["mtt_pixels"]

# the README's CIFAR-10 IPC 10 row, less --zca, with max_start_epoch lowered and lr_img 10^5 -> 1000 (docstring)
MTT_ARGV = [
    "--dataset=CIFAR10",
    "--ipc=10",
    "--syn_steps=30",
    f"--expert_epochs={EXPERT_EPOCHS}",
    f"--max_start_epoch={MAX_START_EPOCH}",
    "--lr_img=1000",
    "--lr_lr=1e-05",
    "--lr_teacher=0.01",
    "--num_eval=0",
]
HELP_CUDA = (
    "Tensor.cuda() returns the tensor itself when torch has no CUDA: distill.py saves the images of iteration 0 "
    "through image_syn.cuda(), which a CPU-only torch refuses (only that saving block calls it; iteration 0 is "
    "a warm-up iteration)"
)


@contextmanager
def cuda_is_identity() -> Iterator[None]:
    """``Tensor.cuda`` as a no-op on a machine without CUDA (see :data:`HELP_CUDA`)."""
    original = torch.Tensor.cuda
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def main() -> None:
    a = common.parse_args(__doc__.splitlines()[0], ROWS)
    if a.warmup < 1:
        raise SystemExit("--warmup must be at least 1: distill.py saves its images in iteration 0")
    checkout = Path(a.checkout).resolve()
    torch.set_num_threads(a.threads)
    work, tmp = workdir(a.workdir)
    try:
        run(a, checkout, work)
    finally:
        if tmp is not None:
            tmp.cleanup()


def run(a, checkout: Path, work: Path) -> None:
    counted = 1 if a.flops else 0
    iterations_run = a.warmup + a.iterations + counted
    experts = max(BUFFER_EXPERTS, iterations_run + 1)  # no buffer file is re-read inside the measured iterations
    epochs = MAX_START_EPOCH + EXPERT_EPOCHS
    buffer_path, buffer_line = ensure_buffer(
        PEER, checkout, work, experts=experts, epochs=epochs, threads=a.threads, kip_zca=False
    )

    _, prep_help = prepare_checkout(checkout, kip_zca=False)
    help_lines = [HELP_WANDB, use_generated_cifar10(), *prep_help, HELP_ZCA]
    help_lines += [
        f"max_start_epoch {MAX_START_EPOCH} instead of the README's 20: it only picks which buffer snapshot a step "
        "starts from",
        "lr_img 1000 instead of the README table's 10^5, a typo by its author's word (issue #31: the step size "
        "explodes); learning rates do not change the step's arithmetic",
        buffer_line,
        HELP_SNAPSHOTS,
        "--num_eval 0 (its own option): distill.py's evaluation pool always holds iteration 0; with no networks "
        "to train the evaluation is empty, and the first one after it comes at its default eval_it 100",
        HELP_CUDA,
        "the script is stopped at the start of the iteration after the measured ones",
        "outputs (expert buffer, logged_files) go to the scratch workdir",
    ]
    clock = common.StepClock(count_flops_at=a.warmup + a.iterations if a.flops else None)
    wandb = common.fake_wandb(on_log=progress_hook(clock, iterations_run + 1))
    argv = [*MTT_ARGV, f"--buffer_path={buffer_path}", f"--data_path={work / 'data'}"]
    (work / "data").mkdir(exist_ok=True)
    with cuda_is_identity():
        common.run_script(checkout, SCRIPT, argv, work)

    marks = len([m for m in clock.marks if m == m])
    if marks < iterations_run + 1:
        raise SystemExit(f"the script ended after {marks} clock marks, {iterations_run + 1} expected")
    config = dict(wandb.config._items)
    settings = config_settings(config)
    settings.update(
        {
            "syn_steps": config["syn_steps"],
            "batch_syn": config["batch_syn"] or 10 * config["ipc"],
            "expert_epochs": config["expert_epochs"],
            "max_start_epoch": config["max_start_epoch"],
            "lr_img": config["lr_img"],
            "lr_teacher": config["lr_teacher"],
            "lr_lr": config["lr_lr"],
            "texture": config["texture"],
            "buffer_experts": experts,
            "buffer_epochs": epochs,
            "buffer_train_images": BUFFER_TRAIN_IMAGES,
        }
    )
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
    )
    print(json.dumps({k: result.get(k) for k in ("row", "steps_s", "median_s", "flops")}))


if __name__ == "__main__":
    main()
