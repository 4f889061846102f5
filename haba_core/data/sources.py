"""Dataset sources: where each registered dataset's files are looked for (the readers of their formats are
``haba_core.data.formats``; the generated ``toy`` set is ``haba_core.data.toy``).

Every source is a frozen dataclass of its options (so it is hashable, the load cache's key) with a static
``info`` (:class:`DatasetInfo`) and ``load(root, download) -> RawSplits`` returning uint8 (N, C, H, W) images.
Lookup order, first hit wins:

- ``fashion_mnist``: IDX files (``train-images-idx3-ubyte[.gz]`` ...) in ``root/FashionMNIST/raw/``,
  ``root/fashion_mnist/`` or ``root/fashion-mnist/``; then Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist/``, option ``system_dir``); then a torchvision download.
- ``mnist``: IDX files in ``root/MNIST/raw/`` or ``root/mnist/``; then a torchvision download.
- ``cifar10`` / ``cifar100``: the python-pickle batches in ``root/cifar-10-batches-py/`` /
  ``root/cifar-100-python/`` (read by us, so files need not match torchvision's md5s); then a torchvision download.
- ``svhn``: ``train_32x32.mat`` / ``test_32x32.mat`` in ``root/`` (torchvision's layout) or ``root/svhn/``;
  then a torchvision download. Reading ``.mat`` files needs scipy.

The IDX and CIFAR readers are ours: they decode whole files at once with numpy (no per-image PIL pipeline),
which reads Fashion-MNIST in about half a second. Mean/std follow the DC / MTT code's conventions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from haba_core.data.datasets import DATASETS
from haba_core.data.formats import IDX_NAMES, find_idx_files, read_cifar_batches, read_idx_splits, read_svhn_mat
from haba_core.data.raw import DatasetInfo, RawSplits
from haba_core.errors import DatasetNotFoundError

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
    castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
    elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
    man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck
    pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
    skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
    tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)
SVHN_CLASSES = MNIST_CLASSES  # digits; the .mat files label digit 0 as 10, we map it back to 0


# ------------------------------------------------------------------------------------------------ helpers


def _not_found(what: str, looked: list[Path | str], how: list[str], download_error: BaseException | None) -> str:
    lines = [f"{what} was not found. Looked in: " + ", ".join(str(p) for p in looked) + "."]
    lines.append("To get it, do one of:")
    lines += [f"  - {h}" for h in how]
    if download_error is not None:
        lines.append(f"The download failed: {type(download_error).__name__}: {download_error}")
    return "\n".join(lines)


def _torchvision_download(make: Any) -> tuple[Any, BaseException | None]:
    """Run ``make()`` (a torchvision dataset constructor with download=True); return (result, error)."""
    try:
        return make(), None
    except Exception as e:  # no network, bad checksum, disk full: reported in the not-found message
        return None, e


def _uint8_nchw(data: Any) -> Tensor:
    t = torch.as_tensor(np.asarray(data), dtype=torch.uint8)
    return t.unsqueeze(1) if t.ndim == 3 else t


# ------------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class _IdxSource:
    """MNIST-layout datasets: IDX files in a few folders under root, then torchvision."""

    # Per-dataset constants (ClassVar: not options, so not dataclass fields).
    name: ClassVar[str] = ""
    display: ClassVar[str] = ""
    folders: ClassVar[tuple[str, ...]] = ()  # under root, tried in order
    torchvision_class: ClassVar[str] = ""
    torchvision_folder: ClassVar[str] = ""
    mean: ClassVar[tuple[float, ...]] = (0.0,)
    std: ClassVar[tuple[float, ...]] = (1.0,)
    classes: ClassVar[tuple[str, ...]] = ()

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.name, 1, (28, 28), len(self.classes), self.mean, self.std, self.classes)

    def _system_dirs(self) -> list[Path]:
        return []

    def _how(self, root: Path) -> list[str]:
        return [
            f"put {', '.join(n + '[.gz]' for n in IDX_NAMES.values())} in {root / self.torchvision_folder / 'raw'}",
            "allow download (download=True) on a machine with network access",
        ]

    def load(self, root: Path, download: bool) -> RawSplits:
        candidates = [root / f for f in self.folders] + self._system_dirs()
        for folder in candidates:
            if find_idx_files(folder) is not None:
                return read_idx_splits(folder)
        error = None
        if download:
            import torchvision.datasets as tvd

            cls = getattr(tvd, self.torchvision_class)
            sets, error = _torchvision_download(lambda: [cls(str(root), train=t, download=True) for t in (True, False)])
            if sets is not None:
                train, test = sets
                return RawSplits(
                    _uint8_nchw(train.data),
                    torch.as_tensor(train.targets, dtype=torch.int64),
                    _uint8_nchw(test.data),
                    torch.as_tensor(test.targets, dtype=torch.int64),
                    origin=f"torchvision {self.torchvision_class} in {root}",
                    files=tuple(sorted((root / self.torchvision_folder / "raw").glob("*-ubyte"))),
                )
        else:
            candidates.append("(download disabled)")
        raise DatasetNotFoundError(_not_found(self.display, candidates, self._how(root), error))


@DATASETS.register("fashion_mnist", label="Fashion-MNIST", help="10 clothing classes, 1x28x28")
@dataclass(frozen=True)
class FashionMNIST(_IdxSource):
    """Fashion-MNIST (Xiao et al. 2017): 10 clothing classes, 1x28x28, 60000 train / 10000 test.

    system_dir: where Debian's ``dataset-fashion-mnist`` package puts the IDX files; None skips that lookup.
    """

    system_dir: str | None = DEBIAN_FASHION_MNIST
    name = "fashion_mnist"
    display = "Fashion-MNIST"
    folders = ("FashionMNIST/raw", "fashion_mnist", "fashion-mnist")
    torchvision_class = "FashionMNIST"
    torchvision_folder = "FashionMNIST"
    mean = (0.2861,)
    std = (0.3530,)
    classes = FASHION_MNIST_CLASSES

    def _system_dirs(self) -> list[Path]:
        return [Path(self.system_dir)] if self.system_dir else []

    def _how(self, root: Path) -> list[str]:
        return [
            f"apt-get install dataset-fashion-mnist (Debian/Ubuntu; installs the files in {DEBIAN_FASHION_MNIST})",
            *super()._how(root),
        ]


@DATASETS.register("mnist", label="MNIST", help="10 digits, 1x28x28")
@dataclass(frozen=True)
class MNIST(_IdxSource):
    """MNIST digits: 10 classes, 1x28x28, 60000 train / 10000 test."""

    name = "mnist"
    display = "MNIST"
    folders = ("MNIST/raw", "mnist")
    torchvision_class = "MNIST"
    torchvision_folder = "MNIST"
    mean = (0.1307,)
    std = (0.3081,)
    classes = MNIST_CLASSES


@dataclass(frozen=True)
class _CifarSource:
    """CIFAR python-pickle batches in root/<folder>/, then torchvision."""

    name: ClassVar[str] = ""
    display: ClassVar[str] = ""
    folder: ClassVar[str] = ""
    train_files: ClassVar[tuple[str, ...]] = ()
    test_files: ClassVar[tuple[str, ...]] = ()
    label_key: ClassVar[str] = ""
    torchvision_class: ClassVar[str] = ""
    archive: ClassVar[str] = ""
    mean: ClassVar[tuple[float, ...]] = ()
    std: ClassVar[tuple[float, ...]] = ()
    classes: ClassVar[tuple[str, ...]] = ()

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.name, 3, (32, 32), len(self.classes), self.mean, self.std, self.classes)

    def load(self, root: Path, download: bool) -> RawSplits:
        folder = root / self.folder
        paths = tuple(folder / f for f in self.train_files + self.test_files)
        if all(p.is_file() for p in paths):
            train = read_cifar_batches([folder / f for f in self.train_files], self.label_key)
            test = read_cifar_batches([folder / f for f in self.test_files], self.label_key)
            return RawSplits(*train, *test, origin=str(folder), files=paths)
        error = None
        looked: list[Path | str] = [folder]
        if download:
            import torchvision.datasets as tvd

            cls = getattr(tvd, self.torchvision_class)
            sets, error = _torchvision_download(lambda: [cls(str(root), train=t, download=True) for t in (True, False)])
            if sets is not None:
                train, test = sets
                return RawSplits(
                    torch.from_numpy(np.ascontiguousarray(train.data.transpose(0, 3, 1, 2))),  # NHWC -> NCHW
                    torch.as_tensor(train.targets, dtype=torch.int64),
                    torch.from_numpy(np.ascontiguousarray(test.data.transpose(0, 3, 1, 2))),
                    torch.as_tensor(test.targets, dtype=torch.int64),
                    origin=f"torchvision {self.torchvision_class} in {root}",
                    files=tuple(p for p in paths if p.is_file()),
                )
        else:
            looked.append("(download disabled)")
        how = [
            f"download {self.archive} (python version) from https://www.cs.toronto.edu/~kriz/cifar.html and "
            f"extract it in {root} (giving {folder}/ with {', '.join(self.train_files + self.test_files)})",
            "allow download (download=True) on a machine with network access",
        ]
        raise DatasetNotFoundError(_not_found(self.display, looked, how, error))


@DATASETS.register("cifar10", label="CIFAR-10", help="10 classes, 3x32x32")
@dataclass(frozen=True)
class CIFAR10(_CifarSource):
    """CIFAR-10: 10 classes, 3x32x32, 50000 train / 10000 test."""

    name = "cifar10"
    display = "CIFAR-10"
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"
    torchvision_class = "CIFAR10"
    archive = "cifar-10-python.tar.gz"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2023, 0.1994, 0.2010)
    classes = CIFAR10_CLASSES


@DATASETS.register("cifar100", label="CIFAR-100", help="100 classes, 3x32x32")
@dataclass(frozen=True)
class CIFAR100(_CifarSource):
    """CIFAR-100 (fine labels): 100 classes, 3x32x32, 50000 train / 10000 test."""

    name = "cifar100"
    display = "CIFAR-100"
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    torchvision_class = "CIFAR100"
    archive = "cifar-100-python.tar.gz"
    mean = (0.5071, 0.4866, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    classes = CIFAR100_CLASSES


@DATASETS.register("svhn", label="SVHN", help="street-view digits, 3x32x32")
@dataclass(frozen=True)
class SVHN:
    """SVHN cropped digits: 10 classes, 3x32x32, 73257 train / 26032 test (the 'extra' split is not used)."""

    name: ClassVar[str] = "svhn"

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("svhn", 3, (32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), SVHN_CLASSES)

    def load(self, root: Path, download: bool) -> RawSplits:
        files = ("train_32x32.mat", "test_32x32.mat")
        looked: list[Path | str] = [root, root / "svhn"]
        for folder in looked:
            if all((folder / f).is_file() for f in files):
                train = read_svhn_mat(folder / files[0])
                test = read_svhn_mat(folder / files[1])
                return RawSplits(*train, *test, origin=str(folder), files=(folder / files[0], folder / files[1]))
        error = None
        if download:
            import torchvision.datasets as tvd

            sets, error = _torchvision_download(
                lambda: [tvd.SVHN(str(root), split=s, download=True) for s in ("train", "test")]
            )
            if sets is not None:
                train, test = sets
                return RawSplits(
                    torch.from_numpy(np.ascontiguousarray(train.data)),  # already (N, 3, 32, 32), labels 0..9
                    torch.as_tensor(train.labels, dtype=torch.int64),
                    torch.from_numpy(np.ascontiguousarray(test.data)),
                    torch.as_tensor(test.labels, dtype=torch.int64),
                    origin=f"torchvision SVHN in {root}",
                    files=tuple(root / f for f in files if (root / f).is_file()),
                )
        else:
            looked.append("(download disabled)")
        how = [
            f"download {' and '.join(files)} from http://ufldl.stanford.edu/housenumbers/ into {root}",
            "allow download (download=True) on a machine with network access",
        ]
        raise DatasetNotFoundError(_not_found("SVHN", looked, how, error))
