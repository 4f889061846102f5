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

Shared with ``bench.peers.mtt_code`` (same data, stub, buffer and clock hook): :func:`generated_cifar10`,
:func:`prepare_checkout`, :func:`ensure_buffer`, :func:`progress_hook`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from bench.peers import common

PEER = "haba"
SCRIPT = "distill_fac.py"
ROWS = ["mtt_haba", "eval_1", "eval_5"]
EVAL_NETWORKS = {"eval_1": 1, "eval_5": 5}
ROOT = Path(__file__).resolve().parents[2]

TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # CIFAR10's split
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DATA_SEED = 0

MAX_START_EPOCH = 2  # run script: 20; only picks the starting snapshot
EXPERT_EPOCHS = 2
BUFFER_EXPERTS = 10  # buffer.py's default save_interval: one file, as the official buffers are laid out
BUFFER_TRAIN_IMAGES = 256  # one batch_train batch an expert epoch: the buffer's values do not matter here
BUFFER_TEST_IMAGES = 256
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

HELP_WANDB = (
    "wandb replaced by a module that records nothing (common.fake_wandb): the script logs to wandb's servers and "
    "reads its arguments back from wandb.config._items"
)
HELP_ZCA = (
    "no --zca (the published CIFAR10 IPC 10 command passes it): ZCA whitening only preprocesses the data once, "
    "before distillation, and leaves the step's shapes and arithmetic as they are"
)
HELP_SNAPSHOTS = (
    "in the buffer run Tensor.cpu() of a CPU tensor returns a copy: buffer.py snapshots parameters with "
    "p.detach().cpu(), which on a CPU is the live parameter itself, so every saved epoch would alias the final one"
)
HELP_KIP_ZCA = (
    "args get kip_zca=False before utils.get_dataset: it reads args.kip_zca, which neither distill_fac.py nor "
    "buffer.py defines (AttributeError for CIFAR10 without --zca)"
)


def generated_cifar10_arrays(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """``n`` uint8 HWC 32x32x3 images and balanced labels, as torchvision's CIFAR10 holds them (``data``,
    ``targets``). Noise over a per-class colour (the same in both splits), so a network can learn something;
    seeded, about a second for 50,000 images."""
    palette = np.random.default_rng(DATA_SEED).integers(0, 256, size=(len(CIFAR10_CLASSES), 1, 1, 3), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CIFAR10_CLASSES))
    noise = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    data = (noise >> 1) + (palette[labels] >> 1)
    return data, labels.tolist()


def generated_cifar10(train_images: int = TRAIN_IMAGES, test_images: int = TEST_IMAGES) -> type:
    """A ``torchvision.datasets.CIFAR10`` subclass that generates its images instead of reading (or downloading)
    CIFAR10's files; ``__getitem__``, ``__len__`` and the transforms stay torchvision's, so the peer's loader pays
    the same per-image cost (PIL image, ``ToTensor``, ``Normalize``) as on the real set."""
    import torchvision
    from torchvision.datasets.vision import VisionDataset

    base = torchvision.datasets.CIFAR10
    while getattr(base, "_generated", False):  # replacing twice must not subclass our own class
        base = base.__mro__[1]

    class GeneratedCIFAR10(base):
        _generated = True

        def __init__(self, root, train=True, transform=None, target_transform=None, download=False) -> None:
            VisionDataset.__init__(self, str(root), transform=transform, target_transform=target_transform)
            self.train = train
            n = train_images if train else test_images
            self.data, self.targets = generated_cifar10_arrays(n, DATA_SEED + (0 if train else 1))
            self.classes = list(CIFAR10_CLASSES)
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return GeneratedCIFAR10


def use_generated_cifar10(train_images: int = TRAIN_IMAGES, test_images: int = TEST_IMAGES) -> str:
    """Replace ``torchvision.datasets.CIFAR10`` (the peers' ``utils.get_dataset`` looks it up at call time)."""
    import torchvision

    torchvision.datasets.CIFAR10 = generated_cifar10(train_images, test_images)
    return (
        f"torchvision.datasets.CIFAR10 replaced by generated, seeded CIFAR10-shaped data ({train_images:,} train / "
        f"{test_images:,} test uint8 32x32x3 images, 10 balanced classes, torchvision's own __getitem__ and the "
        "script's transforms): no CIFAR10 here and no internet"
    )


def stub_kornia() -> str | None:
    """A ``kornia`` module that only fails when used: both peers' ``utils.py`` import kornia, for ZCA alone."""
    if importlib.util.find_spec("kornia") is not None:
        return None
    mod = types.ModuleType("kornia")

    def missing(name: str):
        raise AttributeError(f"kornia.{name}: kornia is a stub here (ZCA is off in these rows)")

    mod.__getattr__ = missing
    sys.modules["kornia"] = mod
    return "stub kornia module: utils.py imports kornia only for ZCA whitening (off here), and it is not installed"


def prepare_checkout(checkout: Path, *, kip_zca: bool) -> tuple[types.ModuleType, list[str]]:
    """The checkout's ``utils`` module, imported first so the helpers can patch it before the script's
    ``from utils import ...`` binds the names, and the help lines of what was done."""
    help_lines = [line for line in [stub_kornia()] if line]
    sys.path.insert(0, str(checkout))
    import utils  # the checkout's

    if Path(utils.__file__).resolve().parent != checkout.resolve():
        raise SystemExit(f"`utils` came from {utils.__file__}, not from {checkout}")
    if kip_zca:
        original = utils.get_dataset

        def get_dataset(*a, args=None, **k):
            if args is not None and not hasattr(args, "kip_zca"):
                args.kip_zca = False
            return original(*a, args=args, **k)

        utils.get_dataset = get_dataset
        help_lines.append(HELP_KIP_ZCA)
    return utils, help_lines


@contextmanager
def snapshot_copies() -> Iterator[None]:
    """``Tensor.cpu()`` copies CPU tensors, as it does GPU ones (buffer run only: see :data:`HELP_SNAPSHOTS`)."""
    original = torch.Tensor.cpu

    def cpu(self, *a, **k):
        out = original(self, *a, **k)
        return out.clone() if out.data_ptr() == self.data_ptr() else out

    torch.Tensor.cpu = cpu
    try:
        yield
    finally:
        torch.Tensor.cpu = original


def buffer_file(buffer_path: Path) -> Path:
    """Where both peers' ``buffer.py`` put the first file for CIFAR10 without ZCA on the ConvNet."""
    return buffer_path / "CIFAR10_NO_ZCA" / "ConvNet" / "replay_buffer_0.pt"


def ensure_buffer(
    peer: str, checkout: Path, root: Path, *, experts: int, epochs: int, threads: int, kip_zca: bool
) -> tuple[Path, str]:
    """``--buffer_path`` holding ``experts`` expert trajectories of ``epochs`` epochs, made by the checkout's own
    ``buffer.py`` in a child process (so the timed process's heap does not carry the buffer run) on a generated
    set of :data:`BUFFER_TRAIN_IMAGES` training images, and kept under ``root`` for later runs (built in a
    ``.tmp`` folder and renamed, so an interrupted build is never taken for a buffer). Returns the path and the
    help line saying so."""
    name = f"buffer_{peer}_{experts}x{epochs}ep_{BUFFER_TRAIN_IMAGES}img"
    final = root / name
    line = (
        f"expert buffer made by the checkout's buffer.py on generated data: {experts} ConvNet experts x {epochs} "
        f"epochs (one replay_buffer_0.pt), its CIFAR10 stand-in cut to {BUFFER_TRAIN_IMAGES} train / "
        f"{BUFFER_TEST_IMAGES} test images, cached in the workdir ({final.name}); its values do not change the "
        "step's cost, only its shapes"
    )
    if buffer_file(final).is_file():
        return final, line
    tmp = root / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    spec = {
        "checkout": str(checkout),
        "argv": [
            "--dataset=CIFAR10",
            "--model=ConvNet",
            f"--num_experts={experts}",
            f"--train_epochs={epochs}",
            f"--save_interval={experts}",
            f"--buffer_path={tmp}",
            f"--data_path={tmp / 'data'}",
        ],
        "cwd": str(tmp),
        "threads": threads,
        "kip_zca": kip_zca,
    }
    t0 = time.perf_counter()
    code = "from bench.peers.haba_code import build_buffer_child; build_buffer_child()"
    subprocess.run([sys.executable, "-c", code, json.dumps(spec)], cwd=ROOT, check=True)
    print(f"[{peer}] buffer built in {time.perf_counter() - t0:.0f} s", flush=True)
    check_snapshots(buffer_file(tmp), experts, epochs)
    shutil.rmtree(tmp / "data", ignore_errors=True)
    tmp.rename(final)
    return final, line


def build_buffer_child() -> None:
    """Child process of :func:`ensure_buffer`: run ``buffer.py`` with the data and the snapshot fix."""
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec["threads"])
    checkout = Path(spec["checkout"])
    prepare_checkout(checkout, kip_zca=spec["kip_zca"])
    use_generated_cifar10(BUFFER_TRAIN_IMAGES, BUFFER_TEST_IMAGES)
    with snapshot_copies():
        common.run_script(checkout, "buffer.py", spec["argv"], Path(spec["cwd"]))


def check_snapshots(path: Path, experts: int, epochs: int) -> None:
    """The buffer has the expected trajectories and its snapshots differ (the aliasing fix worked)."""
    buffer = torch.load(path)
    if len(buffer) != experts or any(len(t) != epochs + 1 for t in buffer):
        raise SystemExit(f"{path}: {len(buffer)} experts of {[len(t) for t in buffer]} snapshots")
    first, last = buffer[0][0], buffer[0][-1]
    if all(torch.equal(a, b) for a, b in zip(first, last, strict=True)):
        raise SystemExit(f"{path}: the first and last snapshots are identical (aliased parameters)")


def progress_hook(clock: common.StepClock, calls: int) -> Callable[[dict], None]:
    """``on_log`` for :func:`common.fake_wandb`: a clock mark at each ``{"Progress": it}`` (the start of an outer
    iteration); :class:`common.StopPeer` once ``calls`` marks are taken, so the script stops there."""
    seen = [0]

    def on_log(d: dict) -> None:
        if "Progress" not in d:
            return
        clock.mark()
        seen[0] += 1
        if seen[0] >= calls:
            raise common.StopPeer

    return on_log


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


def workdir(path: str | None) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """The scratch folder (``--workdir``, kept for the buffer cache) or a temporary one."""
    if path:
        p = Path(path).resolve()
        p.mkdir(parents=True, exist_ok=True)
        return p, None
    tmp = tempfile.TemporaryDirectory(prefix="peer_haba_")
    return Path(tmp.name), tmp


def config_settings(config: dict) -> dict:
    """The shapes that matter, read back from the arguments the script ran with (its ``wandb.config``)."""
    ipc = config.get("ipc")
    return {
        "dataset": "CIFAR10-shaped, generated",
        "train_images": TRAIN_IMAGES,
        "test_images": TEST_IMAGES,
        "image_shape": [3, 32, 32],
        "classes": 10,
        "ipc": ipc,
        "model": config.get("model"),
        "net_width": 128,
        "net_depth": 3,
        "net_norm": "instancenorm (GroupNorm, one group a channel)",
        "net_act": "relu",
        "net_pooling": "avgpooling",
        "dsa": config.get("dsa"),
        "dsa_strategy": config.get("dsa_strategy"),
        "zca": config.get("zca"),
        "device": config.get("device"),
    }


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
