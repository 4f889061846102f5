"""The file formats the dataset sources read (``haba_core.data.sources``): IDX (LeCun's MNIST format, plain or
gzipped), CIFAR's pickled "python version" batches (unpickled with an allow-list: numpy arrays and plain values
only) and SVHN's cropped-digits ``.mat``. Each reader returns uint8 images (N, C, H, W) and int64 labels (N,)."""

from __future__ import annotations

import gzip
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from haba_core.data.raw import RawSplits
from haba_core.errors import DatasetNotFoundError, HabaError

# ----------------------------------------------------------------------------------------------- IDX (MNIST family)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_NAMES = {
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
    for key, stem in IDX_NAMES.items():
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
        raise DatasetNotFoundError(f"{folder} does not hold the four IDX files {sorted(IDX_NAMES.values())}")
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
