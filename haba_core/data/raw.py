"""A dataset's static facts (:class:`DatasetInfo`) and what ``load_dataset`` reads: the decoded splits
(:class:`RawSplits`), their check against those facts, and the record of which files they came from (each file's
path, size and sha256), which a run keeps in its folder (``data.json``) so that "which data did this run see" has an
answer.

The data root: ``data.root`` is where a dataset's files are looked up first (and where a download goes). Without
``data.root_only`` a source may fall back to a copy elsewhere (Debian's Fashion-MNIST); the record then says so and
a note is logged. With ``root_only`` (what ``haba distill --data-root`` sets) the root is the only place read: a
missing root is an error, and the system's copy is never looked at.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from haba_core.errors import ConfigError, DatasetNotFoundError, HabaError

log = logging.getLogger("haba_core")


@dataclass(frozen=True)
class DatasetInfo:
    """What a run config or a synset file records about its dataset (JSON-serializable via ``to_dict``)."""

    name: str
    channels: int
    im_size: tuple[int, int]  # (H, W)
    num_classes: int
    mean: tuple[float, ...]  # per channel, of x / 255
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    zca: bool = False  # whether the images are ZCA-whitened (see load_dataset for the variant)

    def __post_init__(self) -> None:
        # Accept lists (as JSON gives them back) but store tuples, so infos compare and hash reliably.
        object.__setattr__(self, "im_size", tuple(int(s) for s in self.im_size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if len(self.im_size) != 2:
            raise ConfigError(f"DatasetInfo.im_size must be (H, W), got {self.im_size}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(f"DatasetInfo {self.name!r}: mean/std need {self.channels} values each")
        if len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"DatasetInfo {self.name!r}: {len(self.class_names)} class names for {self.num_classes} classes"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return (self.channels, *self.im_size)

    @property
    def pixels_per_image(self) -> int:
        """C * H * W: the floats one stored image costs (the unit of storage budgets)."""
        return self.channels * self.im_size[0] * self.im_size[1]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"Unknown DatasetInfo fields {unknown}; expected {sorted(names)}")
        return cls(**d)


@dataclass(frozen=True)
class RawSplits:
    """Decoded files before normalization: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images_train: Tensor
    labels_train: Tensor
    images_test: Tensor
    labels_test: Tensor
    origin: str = ""  # where the data was read from, for messages and logs
    files: tuple[Path, ...] = ()  # every file decoded (none for generated data)


def check_root(root: Path, root_only: bool, name: str) -> None:
    """With ``root_only``, a data root that is not a folder is an error that says what to do."""
    if root_only and not root.is_dir():
        raise DatasetNotFoundError(
            f"The data root {root} (data.root, --data-root) does not exist, so {name} cannot be read from it. Create "
            "it and put the dataset's files there, fix the path, or drop --data-root to use the default lookup "
            "(./data, then a system copy such as Debian's dataset-fashion-mnist)."
        )


def only_root_read(e: DatasetNotFoundError, root: Path) -> DatasetNotFoundError:
    """``e`` (files not found) with what ``root_only`` changed: no system copy was looked at."""
    return DatasetNotFoundError(
        f"{e}\nOnly {root} was read (data.root_only, which --data-root sets); drop --data-root to use the default "
        "lookup (./data, then a system copy such as Debian's)."
    )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def data_record(raw: RawSplits, name: str, root: Path, root_only: bool) -> dict:
    """Which files were read (path, bytes, sha256), from which root; a note is logged when they lie outside it."""
    files = [{"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in raw.files]
    outside = [f["path"] for f in files if not Path(f["path"]).is_relative_to(root.resolve())]
    record = {"dataset": name, "root": str(root), "root_only": root_only, "origin": raw.origin, "files": files}
    if outside:
        record["outside_root"] = True
        log.warning(
            "note: %s: data.root %s holds none of its files; read %s instead (recorded with their sha256 in the "
            "run's data.json). Pass --data-root to read only from a folder you name.",
            name,
            root,
            raw.origin,
        )
    return record


def check_raw(raw: RawSplits, info: DatasetInfo) -> None:
    """Fail early, naming the files, when decoded data does not match ``info`` (the source's DatasetInfo)."""
    for split in ("train", "test"):
        images, labels = getattr(raw, f"images_{split}"), getattr(raw, f"labels_{split}")
        where = f"{info.name} {split} split ({raw.origin})"
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != info.image_shape:
            raise HabaError(
                f"{where}: expected uint8 images (N, *{info.image_shape}), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise HabaError(
                f"{where}: expected {images.shape[0]} int64 labels, got {labels.dtype} {tuple(labels.shape)}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= info.num_classes):
            raise HabaError(f"{where}: labels outside [0, {info.num_classes})")
