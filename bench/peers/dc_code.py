"""DatasetCondensation's official code (github.com/VICO-UoE/DatasetCondensation) timed on this machine, one outer
iteration at a time, for the side-by-side table: the checkout's own ``main_DM.py`` and ``main.py`` run as
``__main__`` (:func:`bench.peers.common.run_script`) on real Fashion-MNIST; none of their code is copied here and
none of their files is changed.

Rows (their ConvNet as their ``get_network`` builds it: width 128, depth 3, ReLU, instance norm as
``GroupNorm(128, 128)``, 2x2 average pooling; on 1x28x28 inputs their ``_make_layers`` treats the image as 32x32 and
the first convolution pads by 3 instead of 1, so the net sees 32x32 maps and its features are 128x4x4 = 2048):

- ``dm``: ``main_DM.py`` (method DM), FashionMNIST, ConvNet, ipc 10, batch_real 256, init real, their default DSA
  strategy ``color_crop_cutout_flip_scale_rotate``, lr_img 1.0, num_exp 1. One iteration: a fresh random net,
  then per class the mean embedding of 256 augmented real images against that of the 10 synthetic ones, one SGD
  step on the images.
- ``dc``: ``main.py --method DC``, FashionMNIST, ConvNet, ipc 1, batch_real 256, their defaults otherwise (init
  noise, lr_img 0.1, no augmentation). Loops from their ``get_loops(1)`` = (outer 1, inner 1): an iteration is one
  gradient-matching step on the images per class and never reaches the network update (their loop breaks after
  the last outer step).
- ``dsa``: ``main.py --method DSA``, the same settings plus ``--dsa_strategy color_crop_cutout_flip_scale_rotate``,
  which their readme's DSA command passes: ``main.py``'s default strategy is ``None``, with which ``DiffAugment``
  returns its input unchanged and the row would time DC again.

In ``dm`` and ``dsa`` their ``ParamDiffAug`` (``aug_mode`` ``S``) applies one augmentation of the six, drawn per
``DiffAugment`` call (so per class), the same one to the real and the synthetic batch.

    .venv/bin/python -m bench.peers.dc_code --row dm --checkout /work/peers/DatasetCondensation --json OUT \\
        --threads 1 --warmup 1 --iterations 2 --flops

Timing: both scripts call ``utils.get_network`` exactly once per distillation iteration (the random net to match
on), and during evaluation once per evaluated net. They bind it with ``from utils import get_network`` when they
start, so the ``utils`` module attribute is replaced (:func:`common.hooked` around the original) before the script
runs; each call marks the :class:`common.StepClock`. ``--num_eval 0`` keeps evaluation from calling it, and the hook
raises :class:`common.StopPeer` at the mark that ends the last measured iteration, so the script runs no further
iterations, final evaluation or saving.

Runtime help (each item also one line of the result's ``runtime_help``):

- data: the system's Fashion-MNIST files are linked into ``WORKDIR/data/FashionMNIST/raw``, unpacked there, and the
  folder passed as ``--data_path``. They call torchvision with ``download=True``: it reads unpacked files when they
  exist, and otherwise checks the archives against the originals' md5 sums, which Debian's recompressed archives
  (the same images) fail, so it would try to download (this machine has no network).
- ``--num_eval 0`` (their own option): their periodic evaluation, due at iteration 0, trains no networks. It is
  not part of the step being timed and would take hours on a CPU; with it empty only its prints and one
  visualisation image remain, before the first mark.
- ``--save_path WORKDIR/result``, the script run in ``WORKDIR``: that image goes to the scratch folder.
- ``utils.get_network`` wrapped to mark each iteration's start and to stop the script after the measured
  iterations (the nets it builds are theirs, unchanged).
- ``torch.set_num_threads(THREADS)`` before the script starts, to match the row of ours it is compared with.
- ``dm``, ``dsa``: ``ConvNet.forward`` and ``ConvNet.embed`` replaced by versions that flatten the features with
  ``.reshape`` where theirs call ``.view``. Their ``rand_crop`` returns a 1-channel batch with strides (784, 1, 28,
  1), which today's convolutions take as channels-last and answer in channels-last, so ``.view`` raises ("view size
  is not compatible with input tensor's size and stride"). ``.reshape`` returns the same values (a view where one
  is possible, else a copy of the n x 2048 features). ``dc`` does not augment, its features are contiguous and it
  runs their methods unchanged.
- ``dsa``: ``DiffAugment`` on a batch of one image (the ipc-1 synthetic image) runs under a torch function mode
  that clones the right-hand side of a tensor assignment when it shares memory with the target. Their Siamese
  augmentations copy the first sample's parameters to all (``randb[:] = randb[0]``), a no-op at batch 1 which
  today's torch refuses as an overlapping copy ("some elements of the input tensor and the written-to tensor refer
  to a single memory location"); the color, crop, cutout and flip augmentations all raise it. Batches of more than
  one image (the 256 real ones, ``dm``'s 10 synthetic ones) run without the mode.

``scipy.ndimage.interpolation`` (their ``utils`` imports ``rotate`` from it) still imports, with a deprecation
warning; nothing is needed there.
"""

from __future__ import annotations

import tempfile
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from bench.peers import common

ROWS = ["dm", "dc", "dsa"]
DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"  # main_DM.py's default; their readme passes it to main.py
BATCH_REAL = 256
IPC = {"dm": 10, "dc": 1, "dsa": 1}


def peer_argv(row: str, data_path: Path, save_path: Path) -> tuple[str, list[str]]:
    """The script and its command line for ``row``: the row's settings spelled out (also where they equal the
    script's defaults, so the result's ``argv`` says them), plus the runtime help's ``--num_eval 0`` and paths."""
    shared = [
        "--dataset", "FashionMNIST",
        "--model", "ConvNet",
        "--ipc", str(IPC[row]),
        "--batch_real", str(BATCH_REAL),
        "--num_exp", "1",
        "--num_eval", "0",
        "--data_path", str(data_path),
        "--save_path", str(save_path),
    ]  # fmt: skip
    if row == "dm":
        return "main_DM.py", [*shared, "--init", "real", "--dsa_strategy", DSA_STRATEGY, "--lr_img", "1.0"]
    if row == "dc":
        return "main.py", ["--method", "DC", *shared]
    return "main.py", ["--method", "DSA", *shared, "--dsa_strategy", DSA_STRATEGY]


def flatten_with_reshape(networks: types.ModuleType) -> None:
    """Runtime help: their ``ConvNet.forward``/``embed`` with the flattening done by ``.reshape`` (same values; theirs
    call ``.view``, which raises on the channels-last features a ``rand_crop``-augmented batch gets today)."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return features.reshape(features.size(0), -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(embed(self, x))

    networks.ConvNet.embed = embed
    networks.ConvNet.forward = forward


class CloneOverlappingAssignment(TorchFunctionMode):
    """``target[index] = value`` with ``value`` cloned first when it shares memory with ``target``, as torch's error
    for the overlapping copy advises (the values written are the same)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__setitem__:
            target, index, value = args
            shared = (
                isinstance(value, torch.Tensor)
                and value.untyped_storage().data_ptr() == target.untyped_storage().data_ptr()
            )
            if shared:
                args = (target, index, value.clone())
        return func(*args, **(kwargs or {}))


def batch_one_augment(diff_augment: Callable) -> Callable:
    """Runtime help: their ``DiffAugment``, run under :class:`CloneOverlappingAssignment` for a batch of one image
    (their Siamese ``t[:] = t[0]`` is a no-op there that today's torch refuses); larger batches call it as it is."""

    def wrapper(x, *args, **kwargs):
        if x.shape[0] != 1:
            return diff_augment(x, *args, **kwargs)
        with CloneOverlappingAssignment():
            return diff_augment(x, *args, **kwargs)

    wrapper.__wrapped__ = diff_augment
    return wrapper


def net_settings(utils: types.ModuleType, row: str) -> dict:
    """The shapes that matter for comparing with our rows, the net's read off one their ``get_network`` builds (after
    the run, so the timed iterations are untouched)."""
    width, depth, act, norm, pooling = utils.get_default_convnet_setting()
    net = utils.get_network.__wrapped__("ConvNet", 1, 10, (28, 28))
    conv = next(m for m in net.features if isinstance(m, torch.nn.Conv2d))
    norm_layer = next((m for m in net.features if isinstance(m, torch.nn.GroupNorm)), None)
    with torch.no_grad():
        first_maps = list(conv(torch.zeros(1, 1, 28, 28)).shape[2:])
        feature_shape = list(net.features(torch.zeros(1, 1, 28, 28)).shape[1:])
    settings = {
        "dataset": "FashionMNIST",
        "image_shape": [1, 28, 28],
        "num_classes": 10,
        "ipc": IPC[row],
        "model": "ConvNet",
        "net_width": width,
        "net_depth": depth,
        "net_act": act,
        "net_norm": norm
        + (f" (GroupNorm({norm_layer.num_groups}, {norm_layer.num_channels}))" if norm_layer is not None else ""),
        "net_pooling": pooling,
        "first_conv": f"{conv.kernel_size[0]}x{conv.kernel_size[1]}, padding {conv.padding[0]}: 28x28 -> "
        f"{first_maps[0]}x{first_maps[1]} maps",
        "feature_shape": feature_shape,
        "batch_real": BATCH_REAL,
        "dsa_strategy": None if row == "dc" else DSA_STRATEGY,
        "dsa_aug_mode": None
        if row == "dc"
        else f"{utils.ParamDiffAug().aug_mode}: one of the strategy's augmentations drawn per DiffAugment call (per "
        "class), the same for the real and the synthetic batch (shared seed)",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if row == "dm":
        settings.update({"method": "DM", "init": "real", "lr_img": 1.0, "embedding": "net.embed (features, flattened)"})
    else:
        outer, inner = utils.get_loops(IPC[row])
        settings.update(
            {"method": row.upper(), "outer_loop": outer, "inner_loop": inner, "init": "noise", "lr_img": 0.1}
        )
        settings["dis_metric"] = "ours (per-output cosine distance of the gradients, norm and bias gradients skipped)"
    return settings


def main() -> None:
    args = common.parse_args(__doc__.split("\n\n")[0], ROWS)
    checkout = Path(args.checkout).resolve()
    if not (checkout / "main_DM.py").is_file():
        raise SystemExit(f"{checkout} is not a DatasetCondensation checkout (no main_DM.py)")
    scratch = None if args.workdir else tempfile.TemporaryDirectory(prefix="dc_code_")
    workdir = Path(args.workdir or scratch.name).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data_path = common.fashion_mnist_root(workdir / "data")
    save_path = workdir / "result"
    save_path.mkdir(exist_ok=True)
    script, argv = peer_argv(args.row, data_path, save_path)

    torch.set_num_threads(args.threads)
    clock = common.StepClock(count_flops_at=args.warmup + args.iterations if args.flops else None)
    # one mark starts each iteration; the last one ends the last timed (or FLOP-counted) iteration
    marks_needed = args.warmup + args.iterations + (1 if args.flops else 0) + 1
    calls = 0

    def mark() -> None:
        nonlocal calls
        clock.mark()
        calls += 1
        if calls >= marks_needed:
            raise common.StopPeer

    utils = common.import_checkout_module(checkout, "utils")
    networks = common.import_checkout_module(checkout, "networks")
    utils.get_network = common.hooked(utils.get_network, mark)
    runtime_help = [
        f"data: {common.SYSTEM_FASHION_MNIST} linked into {data_path}/FashionMNIST/raw (--data_path) and unpacked "
        "there, so torchvision's download=True finds the files and downloads nothing (Debian's recompressed "
        "archives fail its md5 check of the originals)",
        "--num_eval 0 (their option): the periodic evaluation at iteration 0 trains no networks (not part of the "
        "timed step); only its prints and one visualisation image remain, before the first mark",
        f"--save_path {save_path}, run in {workdir}: outputs go to the scratch folder",
        "utils.get_network wrapped (before the script binds it) to mark each outer iteration's start; StopPeer at "
        "the mark after the last measured iteration, so no further iterations, final evaluation or saving",
        f"torch.set_num_threads({args.threads})",
    ]
    if args.row in ("dm", "dsa"):
        flatten_with_reshape(networks)
        runtime_help.append(
            "ConvNet.forward/embed flatten with .reshape instead of .view: rand_crop's 1-channel output has "
            "channels-last strides, today's convolutions keep that layout and .view raises on the features"
        )
    if args.row == "dsa":
        utils.DiffAugment = batch_one_augment(utils.DiffAugment)
        runtime_help.append(
            "DiffAugment on a batch of 1 (the ipc-1 synthetic image) runs under a torch function mode that clones an "
            "assignment's source when it shares the target's memory: their Siamese t[:] = t[0] is a no-op at batch "
            "1 that today's torch refuses as an overlapping copy (color, crop, cutout, flip)"
        )
    try:
        common.run_script(checkout, script, argv, cwd=workdir)
        if calls < marks_needed:
            raise SystemExit(f"{script} ended after {calls} of the {marks_needed} marks needed")
        result = common.write_result(
            args.json,
            peer="DatasetCondensation",
            row=args.row,
            checkout=checkout,
            script=script,
            argv=argv,
            clock=clock,
            warmup=args.warmup,
            runtime_help=runtime_help,
            settings=net_settings(utils, args.row),
            threads=args.threads,
        )
    finally:
        if scratch is not None:
            scratch.cleanup()
    print(f"dc_code {args.row}: median {result['median_s']} s of {result['steps_s']}, flops {result['flops']}")


if __name__ == "__main__":
    main()
