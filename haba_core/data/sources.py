"""Dataset sources: where each registered dataset's files are looked for, and our readers for their formats.

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
- ``toy``: generated from a fixed seed, nothing on disk.

The IDX and CIFAR readers are ours: they decode whole files at once with numpy (no per-image PIL pipeline),
which reads Fashion-MNIST in about half a second. Mean/std follow the DC / MTT code's conventions.
"""

from __future__ import annotations

import gzip
import math
import pickle
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from haba_core.data.datasets import DATASETS, DatasetInfo, RawSplits
from haba_core.errors import ConfigError, DatasetNotFoundError, HabaError

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
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


# ----------------------------------------------------------------------------------------------- IDX (MNIST family)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_NAMES = {
    "images_train": "train-images-idx3-ubyte",
    "labels_train": "train-labels-idx1-ubyte",
    "images_test": "t10k-images-idx3-ubyte",
    "labels_test": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped (``.gz``) or plain, into an array of its shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        buf = f.read()
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES:
        raise HabaError(f"{path} is not an IDX file (bad magic number {buf[:4].hex()})")
    ndim = buf[3]
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[buf[2]])
    offset = 4 + 4 * ndim
    expected = offset + math.prod(dims) * dtype.itemsize
    if len(buf) != expected:
        raise HabaError(f"{path}: IDX header says {dims} ({expected} bytes) but the file has {len(buf)} bytes")
    return np.frombuffer(buf, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def find_idx_files(folder: str | Path) -> dict[str, Path] | None:
    """The four MNIST-layout IDX files in ``folder`` (each plain or ``.gz``), or None if any is missing."""
    folder = Path(folder)
    found = {}
    for key, stem in _IDX_NAMES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def read_idx_splits(folder: str | Path) -> RawSplits:
    """Decode the four IDX files in ``folder`` into uint8 (N, 1, H, W) images and int64 labels."""
    files = find_idx_files(folder)
    if files is None:
        raise DatasetNotFoundError(f"{folder} does not hold the four IDX files {sorted(_IDX_NAMES.values())}")
    arrays = {key: read_idx(path) for key, path in files.items()}
    out = {}
    for split in ("train", "test"):
        images, labels = arrays[f"images_{split}"], arrays[f"labels_{split}"]
        if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != (images.shape[0],):
            raise HabaError(
                f"{folder}: {split} IDX files hold images {images.dtype} {images.shape} and labels {labels.shape}; "
                "expected uint8 (N, H, W) and (N,)"
            )
        out[f"images_{split}"] = torch.from_numpy(images).unsqueeze(1)  # (N, 1, H, W)
        out[f"labels_{split}"] = torch.from_numpy(labels.astype(np.int64))
    return RawSplits(**out, origin=str(folder), files=tuple(files.values()))


# ------------------------------------------------------------------------------------------------ CIFAR pickles

# The CIFAR "python version" batches are pickled dicts of a numpy array and lists. Pickle can run arbitrary
# code, so we unpickle with an allow-list of the few globals those files reference (numpy's array
# reconstruction); anything else is refused. The file is one the user downloaded into their data root.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.dtypes", "UInt8DType"),
    ("numpy.dtypes", "Int64DType"),
    ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise HabaError(f"refusing to unpickle {module}.{name}: not part of the CIFAR batch format")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = module.replace("numpy.core", "numpy._core", 1)  # numpy 2 moved numpy.core to numpy._core
        return super().find_class(module, name)


def read_cifar_pickle(path: str | Path) -> dict[str, Any]:
    """Load one CIFAR python batch (a dict) with string keys; only numpy arrays and plain values are allowed."""
    with open(path, "rb") as f:
        try:
            obj = _ArrayOnlyUnpickler(f, encoding="latin1").load()  # the files were written by Python 2
        except HabaError as e:
            raise HabaError(f"{path}: {e}") from None
        except Exception as e:  # truncated or foreign file
            raise HabaError(f"{path} is not a CIFAR python batch: {e}") from e
    if not isinstance(obj, dict):
        raise HabaError(f"{path} is not a CIFAR python batch (holds a {type(obj).__name__})")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar_batches(paths: list[Path], label_key: str) -> tuple[Tensor, Tensor]:
    """Concatenate CIFAR python batches: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    images, labels = [], []
    for path in paths:
        batch = read_cifar_pickle(path)
        if "data" not in batch or label_key not in batch:
            raise HabaError(f"{path}: a CIFAR batch needs keys 'data' and {label_key!r}, found {sorted(batch)}")
        data = np.asarray(batch["data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32))  # rows are 1024 R, then 1024 G, then 1024 B values
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


# ------------------------------------------------------------------------------------------------ SVHN .mat


def read_svhn_mat(path: str | Path) -> tuple[Tensor, Tensor]:
    """SVHN's cropped-digits ``.mat``: X (32, 32, 3, N) uint8, y (N, 1) in 1..10 -> (N, 3, 32, 32), labels 0..9."""
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise HabaError("reading SVHN's .mat files needs scipy: pip install scipy") from e
    mat = loadmat(str(path))
    images = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)).astype(np.uint8))  # (N, C, H, W)
    labels = mat["y"].astype(np.int64).reshape(-1)
    labels[labels == 10] = 0
    return torch.from_numpy(images), torch.from_numpy(labels)


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
            f"put {', '.join(n + '[.gz]' for n in _IDX_NAMES.values())} in {root / self.torchvision_folder / 'raw'}",
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
                    _uint8_nchw(train.data), torch.as_tensor(train.targets, dtype=torch.int64),
                    _uint8_nchw(test.data), torch.as_tensor(test.targets, dtype=torch.int64),
                    origin=f"torchvision {self.torchvision_class} in {root}",
                    files=tuple(sorted((root / self.torchvision_folder / "raw").glob("*-ubyte"))),
                )  # fmt: skip
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


# ------------------------------------------------------------------------------------------------ toy


@lru_cache(maxsize=8)
def _generate_toy(
    channels: int, size: tuple[int, int], num_classes: int, n_train: int, n_test: int, noise: float, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class c is an oriented sinusoidal grating (angle, frequency fixed by c) plus a Gaussian blob at a
    class-specific place, tinted per class on RGB. Each image draws its own phase, contrast, blob jitter,
    brightness and pixel noise, so a classifier must learn orientation/frequency/position, not memorize pixels.
    Returns uint8 images (N, C, H, W) and int64 labels, train then test, each shuffled."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    k = num_classes
    cls = torch.arange(k, dtype=torch.float64)
    angle = math.pi * cls / k  # K evenly spaced orientations
    freq = 2.0 + (cls % 3)  # cycles per image; neighbours in angle differ in frequency too
    spot = 2 * math.pi * ((cls * 3) % k) / k
    blob_x, blob_y = 0.5 * torch.cos(spot), 0.5 * torch.sin(spot)
    ch = torch.arange(channels, dtype=torch.float64)
    tint = 0.65 + 0.35 * torch.cos(2 * math.pi * (cls[:, None] / k + ch[None, :] / max(channels, 1)))  # (K, C)
    if channels == 1:
        tint = torch.ones(k, 1, dtype=torch.float64)
    ys = torch.linspace(-1, 1, h, dtype=torch.float64).view(1, h, 1)
    xs = torch.linspace(-1, 1, w, dtype=torch.float64).view(1, 1, w)

    def make(n_per_class: int) -> tuple[Tensor, Tensor]:
        labels = torch.arange(k).repeat_interleave(n_per_class)  # (N,)
        n = labels.numel()
        phase = torch.rand(n, generator=g, dtype=torch.float64).view(n, 1, 1) * 2 * math.pi
        contrast = 0.6 + 0.4 * torch.rand(n, generator=g, dtype=torch.float64).view(n, 1, 1)
        jitter = 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
        bright = 0.05 * torch.randn(n, generator=g, dtype=torch.float64).view(n, 1, 1, 1)
        pixel_noise = noise * torch.randn(n, channels, h, w, generator=g, dtype=torch.float64)
        a, f = angle[labels].view(n, 1, 1), freq[labels].view(n, 1, 1)
        proj = xs * torch.cos(a) + ys * torch.sin(a)  # (N, H, W), in [-sqrt 2, sqrt 2]
        grating = torch.sin(math.pi * f * proj + phase) * contrast
        bx = (blob_x[labels] + jitter[:, 0]).view(n, 1, 1)
        by = (blob_y[labels] + jitter[:, 1]).view(n, 1, 1)
        blob = torch.exp(-((xs - bx) ** 2 + (ys - by) ** 2) / (2 * 0.25**2))
        pattern = 0.22 * grating + 0.3 * blob - 0.1  # (N, H, W)
        img = 0.5 + pattern.unsqueeze(1) * tint[labels].view(n, channels, 1, 1) + bright + pixel_noise
        img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        order = torch.randperm(n, generator=g)
        return img[order].contiguous(), labels[order]

    return (*make(n_train), *make(n_test))


@DATASETS.register("toy", label="toy", help="generated, for tests and demos (seconds)")
@dataclass(frozen=True)
class Toy:
    """A small generated dataset for tests and demos, identical on every machine (fixed seed), learnable by a
    ConvNet in a few epochs. Options: channels, im_size (int or (H, W)), num_classes, n_per_class (train),
    n_test_per_class, noise (pixel noise std, on the [0, 1] scale), seed."""

    channels: int = 1
    im_size: int | tuple[int, int] = 28
    num_classes: int = 10
    n_per_class: int = 60
    n_test_per_class: int = 20
    noise: float = 0.15
    seed: int = 0
    _size: tuple[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        size = (self.im_size, self.im_size) if isinstance(self.im_size, int) else tuple(self.im_size)
        if len(size) != 2 or min(size) < 4:
            raise ConfigError(f"toy im_size must be an int or (H, W) of at least 4, got {self.im_size!r}")
        if self.channels < 1 or self.num_classes < 2 or self.n_per_class < 1 or self.n_test_per_class < 1:
            raise ConfigError("toy needs channels >= 1, num_classes >= 2 and at least one image per class")
        object.__setattr__(self, "_size", (int(size[0]), int(size[1])))

    def _generate(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return _generate_toy(
            self.channels, self._size, self.num_classes, self.n_per_class, self.n_test_per_class,
            float(self.noise), self.seed,
        )  # fmt: skip

    @property
    def info(self) -> DatasetInfo:
        images = self._generate()[0].to(torch.float64) / 255  # (N, C, H, W)
        mean = images.mean(dim=(0, 2, 3))
        std = images.std(dim=(0, 2, 3))
        return DatasetInfo(
            "toy", self.channels, self._size, self.num_classes,
            tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std),
            tuple(f"class_{c}" for c in range(self.num_classes)),
        )  # fmt: skip

    def load(self, root: Path, download: bool) -> RawSplits:
        return RawSplits(*self._generate(), origin=f"generated {self!r}")
