"""Datasets held in memory as normalized float32 tensors, and ``load_dataset``, the one way to get them.

A dataset *source* (registered in :data:`DATASETS`, see ``sources.py``) knows its static facts
(:class:`~haba_core.data.raw.DatasetInfo`) and how to decode its files into uint8 tensors. ``load_dataset`` then
does the part that is common to all of them, in this order: class-balanced ``train_limit`` / ``test_limit`` subsets, an
optional seeded class-balanced **validation split** carved out of the training images (``val_per_class``;
distillation and experts never see it, hyperparameters are chosen on it, never on the test set),
normalization ``(x / 255 - mean) / std`` per channel, and optional ZCA whitening fitted on the remaining
training images and applied to every split (see ``zca.py``). ZCA's reference variant (``zca_variant="kornia"``,
MTT's and HaBa's code: kornia's ``ZCAWhitening(eps=0.1)``) whitens the raw ``x / 255`` pixels with an
absolute eps, so the images are *not* mean/std-normalized first; ``"relative"`` whitens normalized pixels
with ``eps = reg * mean eigenvalue`` (KIP's choice, this project's earlier default).

Decoded uint8 splits and fitted ZCA transforms are kept in a small in-process LRU cache, so a second
``load_dataset`` with the same arguments only re-normalizes (fresh tensors every call: callers may modify
what they get without touching the cache).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from haba_core.data.raw import DatasetInfo, RawSplits, check_raw, check_root, data_record, only_root_read
from haba_core.data.zca import ZCA, fit_zca
from haba_core.errors import ConfigError, DatasetNotFoundError
from haba_core.registry import Registry


def _class_index(labels: Tensor, num_classes: int) -> list[Tensor]:
    """Per class, the (sorted) LongTensor of positions of that class in ``labels``."""
    return [torch.nonzero(labels == c, as_tuple=True)[0] for c in range(num_classes)]


def check_ipc(ipc: int, counts: list[int], what: str, fix: str) -> None:
    """Refuse (ConfigError) to draw ``ipc`` distinct images from every class when a class has fewer (``counts``:
    training images per class); ``what`` names the draw, ``fix`` says what to do instead."""
    least = min(counts)
    if ipc > least:
        raise ConfigError(
            f"{what} needs {ipc} distinct real training images of every class, but class {counts.index(least)} has "
            f"only {least} (after data.train_limit and data.val_per_class). {fix}"
        )


@dataclass(eq=False)
class Dataset:
    """A dataset in memory: normalized (then optionally ZCA-whitened) float32 images and int64 labels.

    images_train: (N, C, H, W) float32, labels_train: (N,) int64; likewise for test and val (the validation
    split held out of the training images; empty when none was asked for).
    ``zca`` is the fitted transform when ``info.zca`` (use ``zca.invert`` to display whitened images).
    """

    info: DatasetInfo
    images_train: Tensor
    labels_train: Tensor
    images_test: Tensor
    labels_test: Tensor
    zca: ZCA | None = None
    images_val: Tensor | None = None
    labels_val: Tensor | None = None
    source: dict = field(default_factory=dict)  # which files were read (raw.data_record): a run's data.json
    _by_class: list[Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.images_val is None:
            self.images_val = self.images_train.new_zeros((0, *self.images_train.shape[1:]))
            self.labels_val = self.labels_train.new_zeros((0,))
        for split in ("train", "test", "val"):
            images, labels = getattr(self, f"images_{split}"), getattr(self, f"labels_{split}")
            if images.ndim != 4 or tuple(images.shape[1:]) != self.info.image_shape:
                raise ConfigError(f"images_{split} must be (N, *{self.info.image_shape}), got {tuple(images.shape)}")
            if labels.shape != (images.shape[0],):
                raise ConfigError(f"labels_{split} must be ({images.shape[0]},), got {tuple(labels.shape)}")
        self._by_class = _class_index(self.labels_train, self.info.num_classes)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def device(self) -> torch.device:
        return self.images_train.device

    def indices_of_class(self, c: int) -> Tensor:
        """Positions in the training set of the images of class ``c``: (count_c,) int64, on the data's device."""
        return self._by_class[c]

    def class_counts(self) -> list[int]:
        return [int(idx.numel()) for idx in self._by_class]

    def _pick(self, c: int, n: int, generator: torch.Generator | None, replace: bool | None) -> Tensor:
        idx = self._by_class[c]
        count = idx.numel()
        if count == 0:
            raise ConfigError(f"class {c} has no training images")
        if replace is None:
            replace = n > count
        if not replace and n > count:
            raise ConfigError(f"class {c} has {count} training images, cannot draw {n} without replacement")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if replace:
            pos = torch.randint(count, (n,), generator=generator, device=gen_device)
        else:
            pos = torch.randperm(count, generator=generator, device=gen_device)[:n]
        return idx[pos.to(idx.device)]

    def sample_class(self, c: int, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` random real training images of class ``c``: (n, C, H, W); without replacement when n <= count."""
        return self.images_train[self._pick(c, n, generator, replace=None)]

    def sample_balanced(self, n_per_class: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n_per_class`` random training images of each class, class-major: (K * n, C, H, W), (K * n,)."""
        picks = [self._pick(c, n_per_class, generator, replace=None) for c in range(self.num_classes)]
        idx = torch.cat(picks)
        return self.images_train[idx], self.labels_train[idx]

    def subset_random(self, ipc: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The random-real-subset baseline: ``ipc`` distinct images per class, (K * ipc, C, H, W), (K * ipc,)."""
        picks = [self._pick(c, ipc, generator, replace=False) for c in range(self.num_classes)]
        idx = torch.cat(picks)
        return self.images_train[idx].clone(), self.labels_train[idx].clone()

    def to(self, device: torch.device | str) -> Dataset:
        """A Dataset whose tensors live on ``device`` (self if they already do)."""
        device = torch.device(device)
        if self.images_train.device == device:
            return self
        return Dataset(
            info=self.info,
            images_train=self.images_train.to(device),
            labels_train=self.labels_train.to(device),
            images_test=self.images_test.to(device),
            labels_test=self.labels_test.to(device),
            zca=self.zca,
            images_val=self.images_val.to(device),
            labels_val=self.labels_val.to(device),
            source=self.source,
        )

    def evaluated_on(self, split: str) -> Dataset:
        """This dataset with ``split`` ("test" or "val") in the test slots, for evaluation code that tests on
        ``images_test``. Choosing hyperparameters on "val" keeps the test set untouched."""
        if split == "test":
            return self
        if split != "val":
            raise ConfigError(f"eval.split must be 'test' or 'val', not {split!r}.")
        if self.labels_val.numel() == 0:
            raise ConfigError(
                "eval.split=val needs a validation split: set data.val_per_class (e.g. 500) so that many "
                "training images per class are held out of distillation."
            )
        return dataclasses.replace(self, images_test=self.images_val, labels_test=self.labels_val)

    def __repr__(self) -> str:
        c, h, w = self.info.image_shape
        return (
            f"Dataset({self.info.name!r}, train={len(self.labels_train)}, test={len(self.labels_test)}, "
            f"image={c}x{h}x{w}, classes={self.num_classes}, zca={self.info.zca}, device={self.device})"
        )


class DatasetSource(Protocol):
    """What a registered dataset factory returns (``DATASETS.create(name, **options)``).

    Sources are frozen dataclasses of their options, hence hashable: the load cache is keyed by them.
    """

    @property
    def info(self) -> DatasetInfo: ...

    def load(self, root: Path, download: bool) -> RawSplits: ...


DATASETS: Registry[Callable[..., DatasetSource]] = Registry("dataset")


def list_datasets() -> list[str]:
    return DATASETS.list()


def dataset_info(name: str = "fashion_mnist", **options: Any) -> DatasetInfo:
    """Static facts about dataset ``name`` (shape, classes, mean/std, class names) without loading its images."""
    return DATASETS.create(name, **options).info


class _LRU:
    """A tiny thread-safe LRU map; values are treated as read-only by their users."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: decoding can take seconds
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_CACHE = _LRU(maxsize=6)
ZCA_VARIANTS = ("kornia", "relative")


def clear_cache() -> None:
    """Forget every decoded dataset and fitted ZCA kept by ``load_dataset``."""
    _CACHE.clear()


def balanced_indices(labels: Tensor, num_classes: int, limit: int | None) -> Tensor | None:
    """Deterministic class-balanced subset: the first ``limit // K`` images of each class (the first
    ``limit % K`` classes get one more), in their original order. None when no limit applies."""
    if limit is None or limit >= labels.numel():
        return None
    if limit < num_classes:
        raise ConfigError(f"a limit of {limit} images cannot hold one image of each of the {num_classes} classes")
    quota, extra = divmod(limit, num_classes)
    picks = [idx[: quota + (c < extra)] for c, idx in enumerate(_class_index(labels, num_classes))]
    return torch.cat(picks).sort().values


def validation_indices(labels: Tensor, num_classes: int, per_class: int, seed: int = 0) -> Tensor:
    """A seeded class-balanced holdout: ``per_class`` random positions of each class (sorted), drawn from
    ``torch.Generator().manual_seed(seed)`` class by class, so the same seed always holds out the same images."""
    g = torch.Generator().manual_seed(int(seed))
    picks = []
    for c, idx in enumerate(_class_index(labels, num_classes)):
        if per_class >= idx.numel():
            raise ConfigError(
                f"data.val_per_class={per_class} would hold out every training image of class {c} "
                f"({idx.numel()} images); use a smaller value."
            )
        picks.append(idx[torch.randperm(idx.numel(), generator=g)[:per_class]])
    return torch.cat(picks).sort().values


def _normalize(images: Tensor, info: DatasetInfo) -> Tensor:
    """uint8 (N, C, H, W) -> float32 (x / 255 - mean) / std, per channel."""
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    out = images.to(torch.float32).div_(255.0)
    return out.sub_(mean).div_(std)


def _hashable(options: dict[str, Any]) -> bool:
    try:
        hash(tuple(sorted(options.items())))
    except TypeError:
        return False
    return True


def load_dataset(
    name: str = "fashion_mnist",
    root: str | Path = "data",
    zca: bool = False,
    train_limit: int | None = None,
    test_limit: int | None = None,
    download: bool = True,
    zca_reg: float = 0.1,
    cache: bool = True,
    zca_variant: str = "kornia",
    val_per_class: int = 0,
    val_seed: int = 0,
    root_only: bool = False,
    **options: Any,
) -> Dataset:
    """Load dataset ``name`` into memory as a :class:`Dataset` (CPU tensors; move with ``.to(device)``).

    root: folder holding the dataset's files (each source documents where it looks, and its fallbacks).
    root_only: read only from ``root``: a missing root is an error, a system copy is never read (``raw.py``).
    zca: ZCA-whiten, fitted on the training images kept after ``train_limit`` and the validation holdout.
    zca_variant: "kornia" (the reference: raw x / 255 pixels, absolute eps ``zca_reg``) or "relative"
        (normalized pixels, eps ``zca_reg`` x mean eigenvalue).
    val_per_class / val_seed: hold out that many training images per class (seeded) as the validation split,
        drawn from the whole training set, so every process with the same values holds out the same images.
    train_limit / test_limit: keep a deterministic class-balanced subset of that many images (of the training
        images left after the holdout).
    download: allow a torchvision download when the files are not found (never in tests).
    options: the source's own options, e.g. ``load_dataset("toy", channels=3, im_size=32)``.
    Raises DatasetNotFoundError (with instructions) when the files are missing and cannot be fetched.
    """
    source = DATASETS.create(name, **options)
    info: DatasetInfo = source.info
    root = Path(root).expanduser()
    if root_only and getattr(source, "system_dir", None):  # the system's copy is a fallback: not with root_only
        source = dataclasses.replace(source, system_dir=None)
    use_cache = cache and _hashable(options)
    key = (name.lower(), repr(source), str(root.resolve()))

    def read() -> tuple[RawSplits, dict]:
        check_root(root, root_only, name)
        try:
            raw = source.load(root, download)
        except DatasetNotFoundError as e:
            raise only_root_read(e, root) if root_only else e from None
        check_raw(raw, info)
        return raw, data_record(raw, name, root, root_only)

    raw, record = _CACHE.get_or_make(("raw", *key), read) if use_cache else read()

    if zca and zca_variant not in ZCA_VARIANTS:
        raise ConfigError(f"Unknown data.zca_variant {zca_variant!r}. Valid: {', '.join(ZCA_VARIANTS)}.")
    if isinstance(val_per_class, bool) or not isinstance(val_per_class, int) or val_per_class < 0:
        raise ConfigError(f"data.val_per_class must be an integer >= 0, got {val_per_class!r}.")
    # the reference ZCA whitens raw [0, 1] pixels: no mean/std normalization before it
    prepare = (
        (lambda x: x.to(torch.float32).div_(255.0))
        if zca and zca_variant == "kornia"
        else (lambda x: _normalize(x, info))
    )
    uint8 = {split: (getattr(raw, f"images_{split}"), getattr(raw, f"labels_{split}")) for split in ("train", "test")}
    if val_per_class:  # from the whole training set, before any limit: a train_limit (experts) never moves it
        images, labels = uint8["train"]
        held = validation_indices(labels, info.num_classes, val_per_class, val_seed)
        rest = torch.ones(labels.numel(), dtype=torch.bool)
        rest[held] = False
        uint8["val"], uint8["train"] = (images[held], labels[held]), (images[rest], labels[rest])
    for split, limit in (("train", train_limit), ("test", test_limit)):
        images, labels = uint8[split]
        keep = balanced_indices(labels, info.num_classes, limit)
        if keep is not None:
            uint8[split] = (images[keep], labels[keep])
    splits = {split: (prepare(x), y.clone()) for split, (x, y) in uint8.items()}

    fitted = None
    if zca:
        images_train = splits["train"][0]
        relative = zca_variant == "relative"

        def fit() -> ZCA:
            return fit_zca(images_train, reg=zca_reg, relative=relative)

        zkey = ("zca", *key, train_limit, float(zca_reg), zca_variant, val_per_class, val_seed)
        fitted = _CACHE.get_or_make(zkey, fit) if use_cache else fit()
        splits = {s: (fitted.apply(x), y) for s, (x, y) in splits.items()}

    val = splits.get("val", (None, None))
    return Dataset(
        info=dataclasses.replace(info, zca=bool(zca)),
        images_train=splits["train"][0],
        labels_train=splits["train"][1],
        images_test=splits["test"][0],
        labels_test=splits["test"][1],
        zca=fitted,
        images_val=val[0],
        labels_val=val[1],
        source=record,
    )


def dataset_from_config(d, **extra: Any) -> Dataset:
    """``load_dataset`` with the fields of a :class:`~haba_core.config.DataConfig`, each the keyword of the same
    name (``name`` first, ``options`` spread as the source's own); ``extra`` overrides."""
    kwargs = {f.name: getattr(d, f.name) for f in dataclasses.fields(d) if f.name not in ("name", "options")}
    return load_dataset(d.name, **{**kwargs, **extra}, **d.options)
