"""What the two MTT codes need to run here, shared by ``bench.peers.haba_code`` (the official HaBa code) and
``bench.peers.mtt_code`` (mtt-distillation), which descend from one code base: generated CIFAR10-shaped data behind
``torchvision.datasets.CIFAR10``, a stub for the ``kornia`` import only ZCA uses, their expert buffer made by their
own ``buffer.py`` (with CPU snapshots copied, not aliased), the clock hooked to their ``wandb.log({"Progress": it})``,
the scratch folder and the settings read back from their arguments. Each item of runtime help is a ``HELP_*`` line.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
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

ROOT = Path(__file__).resolve().parents[2]

TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # CIFAR10's split
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DATA_SEED = 0

MAX_START_EPOCH = 2  # run script: 20; only picks the starting snapshot
EXPERT_EPOCHS = 2
BUFFER_EXPERTS = 10  # buffer.py's default save_interval: one file, as the official buffers are laid out
BUFFER_TRAIN_IMAGES = 256  # one batch_train batch an expert epoch: the buffer's values do not matter here
BUFFER_TEST_IMAGES = 256

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
    utils = common.import_checkout_module(checkout.resolve(), "utils")
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
    code = "from bench.peers.trajectory_codes import build_buffer_child; build_buffer_child()"
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
