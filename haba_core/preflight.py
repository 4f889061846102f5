"""What a run asks of its data and of the machine, checked once the data is loaded and before anything large is
allocated (the synthetic set, the networks, the first batch).

- **Bounds from the data.** A per-class real batch (a method's fields marked :data:`PER_CLASS_REAL`, e.g.
  ``method.batch_real``) larger than the smallest class is clamped to it, with a note, as the reference code does:
  DC's and DM's ``get_images(c, n)`` take a permutation of the class cut at ``n``. Starting the bases from real
  images (``synset.init=real``) needs ``n_bases`` distinct images of every class, or it is refused.
- **Memory.** A lower bound of what the run will still allocate (the synthetic set with its gradient, the largest
  batch of real images, the synthetic images one update keeps activations for, the evaluation's test batch; each
  as images times the largest activation one image leaves in the network) is compared with what the device can
  give (:func:`haba_core.devices.memory_available`: free GPU memory, or ``MemAvailable`` and the cgroup's limit).
  A run that cannot fit is refused with the setting to lower; one that may fit runs (the bound is a bound).
- **Disk.** A note when the disk holding the run folder has less room than the run's snapshots and checkpoints.
- **Precision.** A note when the run asks for bf16 (``eval.precision`` or ``method.precision``) on a device that
  computes it only by emulation (a CPU without AVX512-BF16 or AMX: ``haba_core.bf16``), where it is no faster
  than float32.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from haba_core.config import RunConfig
from haba_core.data.datasets import check_ipc
from haba_core.devices import memory_available
from haba_core.errors import ResourceError
from haba_core.io import free_bytes
from haba_core.methods import METHODS
from haba_core.methods.base import per_class_real_fields
from haba_core.nets import create_net

log = logging.getLogger("haba_core")
GB = 2**30


def fit_to_data(cfg: RunConfig, dataset, plan) -> tuple[RunConfig, list[str]]:
    """``cfg`` with every per-class real batch of its method clamped to the smallest class of ``dataset``, and the
    notes saying so; raises ConfigError when ``synset.init=real`` needs more distinct images than a class has."""
    counts = dataset.class_counts()
    least, c = min(counts), counts.index(min(counts))
    if cfg.synset.init == "real":
        fix = "Lower synset.n_bases (or synset.budget_ipc), or use synset.init=noise."
        check_ipc(plan.n_bases, counts, f"synset.init=real (each of {plan.n_bases} bases per class)", fix)
    method = METHODS.get(cfg.method_name).make_config(cfg.method_params)
    params, notes = dict(cfg.method_params), []
    for name in per_class_real_fields(type(method)):
        asked = getattr(method, name)
        if asked > least:
            params[name] = least
            notes.append(
                f"method.{name}={asked} is more real images than class {c} of {dataset.info.name} holds ({least}); "
                f"using {least} (the whole class, as the reference code does)."
            )
    return (cfg.replace(method={**cfg.method, "params": params}) if notes else cfg), notes


def activation_bytes(net: str, net_params: dict, info) -> int:
    """The largest output one image (float32) leaves in any layer of network ``net``: bytes."""
    model = create_net(net, info.channels, info.num_classes, info.im_size, **net_params).eval()
    sizes: list[int] = []

    def record(module, inputs, output) -> None:
        if torch.is_tensor(output):
            sizes.append(output.numel())

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *info.image_shape))
    finally:
        for h in hooks:
            h.remove()
    return 4 * max(sizes, default=info.channels * info.im_size[0] * info.im_size[1])


def memory_parts(cfg: RunConfig, dataset, plan) -> tuple[tuple[int, str], list[tuple[int, str]]]:
    """What the run will still allocate, each as (bytes, what and which setting): the synthetic set with its
    gradient (held throughout), then the passes (one at a time), largest first. A lower bound: every pass counts
    only the largest activation an image leaves in the network."""
    info = dataset.info
    act = activation_bytes(cfg.net.get("name", "convnet"), dict(cfg.net.get("params", {})), info)
    method_cls = METHODS.get(cfg.method_name)
    method = method_cls.make_config(cfg.method_params)
    n_syn = plan.n_bases * info.num_classes
    held = method_cls.held_images(method, n_syn)
    also = ", method.syn_steps or method.batch_syn" if held > n_syn else ""
    what = f"the synthetic set and its gradient ({plan.floats_total:,} floats; synset.n_bases or synset.budget_ipc)"
    synset = (8 * plan.floats_total, what)
    passes = [(held * act, f"the activations of {held:,} synthetic images in one update (synset.n_bases{also})")]
    for name in per_class_real_fields(type(method)):
        n = getattr(method, name)
        passes.append((n * act, f"a batch of {n:,} real images (method.{name})"))
    if cfg.eval_every or cfg.eval_at_end:
        n = min(cfg.eval.test_batch, len(dataset.labels_test))
        worst = max(activation_bytes(e, {}, info) for e in cfg.eval.nets)
        passes.append((n * worst, f"a test batch of {n:,} images (eval.test_batch)"))
    return synset, sorted(passes, reverse=True)


def check_memory(cfg: RunConfig, dataset, plan, device: torch.device) -> None:
    """Refuse (ResourceError) a run whose lower bound of memory still to allocate exceeds what ``device`` can give."""
    synset, passes = memory_parts(cfg, dataset, plan)
    needed = synset[0] + (passes[0][0] if passes else 0)
    free, where = memory_available(device)
    if free is None or needed <= free:
        return
    size, what = max([synset, *passes[:1]])
    raise ResourceError(
        f"This run needs at least {needed / GB:.1f} GB more memory, but {where}. The largest part is {what}: "
        f"{size / GB:.1f} GB. Lower that setting, or run on a machine with more memory (nothing large was "
        "allocated yet)."
    )


def disk_notes(cfg: RunConfig, plan, run_dir: str | Path | None) -> list[str]:
    """A note when the run folder's disk has less room than the run's snapshots and checkpoints will take."""
    if run_dir is None:
        return []
    snapshots = (cfg.iterations // cfg.snapshot_every + 2) if cfg.snapshot_every else 1
    need = 4 * plan.floats_total * (snapshots + 2 * 3)  # two checkpoints, each the set, its momentum and more
    free = free_bytes(run_dir)
    if need <= free:
        return []
    return [
        f"the run will write about {need / 2**20:.1f} MB of snapshots and checkpoints to {run_dir}, but its disk has "
        f"{free / 2**20:.1f} MB free: make room, raise snapshot_every, or choose a --run-dir on another disk."
    ]


def precision_notes(cfg: RunConfig, device: torch.device) -> list[str]:
    """A note for each of the run's precisions set to bf16 where ``device`` would not choose it (``auto``)."""
    from haba_core import protocol

    asked = {"eval.precision": cfg.eval.precision, "method.precision": cfg.method_params.get("precision")}
    bf16 = [k for k, v in asked.items() if v == "bf16"]
    if not bf16 or protocol.resolve_precision("auto", device) == "bf16":
        return []
    how = (
        "so bf16 is emulated (float32 arithmetic rounded to bf16, the numbers of a native CPU): no faster than float32"
        if device.type == "cpu"
        else "so bf16 may be slow or fail here"
    )
    asked_for = " and ".join(f"{k}=bf16" for k in bf16)
    return [
        f"{asked_for}: this {device.type} has no native bf16, {how}; set auto (float32 here) unless the run must "
        "share a bf16 protocol."
    ]


def preflight(cfg: RunConfig, dataset, plan, device: torch.device, run_dir=None) -> tuple[RunConfig, list[str]]:
    """Every check above, in order: the config to run (clamped to the data) and the notes, each also logged as
    ``note: ...`` (Python's logging prints it on stderr when nothing else is configured)."""
    cfg, notes = fit_to_data(cfg, dataset, plan)
    check_memory(cfg, dataset, plan, device)
    notes += disk_notes(cfg, plan, run_dir)
    notes += precision_notes(cfg, device)
    for note in notes:
        log.warning("note: %s", note)
    return cfg, notes
