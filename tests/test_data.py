"""Tests for haba_core.data: registry, sources (on tiny fake files in each on-disk format), sampling, ZCA.

Nothing here touches the network: every load passes download=False or uses the generated ``toy`` dataset.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from haba_core.data import (
    DATASETS,
    Dataset,
    DatasetInfo,
    dataset_info,
    fit_zca,
    list_datasets,
    load_dataset,
    read_cifar_pickle,
    read_idx,
    sources,
)
from haba_core.data.zca import ZCA
from haba_core.errors import ConfigError, DatasetNotFoundError, HabaError, UnknownNameError

# ------------------------------------------------------------------------------------------- fake file writers


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


def fake_idx_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)  # balanced
    return images, labels


def write_idx_folder(folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    train_x, train_y = fake_idx_images(n_train, 0)
    test_x, test_y = fake_idx_images(n_test, 1)
    write_idx(folder / f"train-images-idx3-ubyte{ext}", train_x)
    write_idx(folder / f"train-labels-idx1-ubyte{ext}", train_y)
    write_idx(folder / f"t10k-images-idx3-ubyte{ext}", test_x)
    write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", test_y)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def cifar_rows(n: int, seed: int) -> np.ndarray:
    """(n, 3072) uint8 rows as in the CIFAR batches: 1024 R, 1024 G, 1024 B values, each row-major 32x32."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, n_per_batch: int = 10) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows, labels = [], []
    for i in range(1, 6):
        r, y = cifar_rows(n_per_batch, i), [(j + i) % 10 for j in range(n_per_batch)]
        write_pickle(
            folder / f"data_batch_{i}",
            {"batch_label": f"training batch {i} of 5", "data": r, "labels": y, "filenames": [f"{j}.png" for j in y]},
        )
        rows.append(r)
        labels += y
    test = cifar_rows(n_per_batch, 99)
    test_y = [j % 10 for j in range(n_per_batch)]
    write_pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": test, "labels": test_y})
    write_pickle(folder / "batches.meta", {"label_names": list(sources.CIFAR10_CLASSES), "num_vis": 3072})
    return {"train_rows": np.concatenate(rows), "train_y": np.array(labels), "test_rows": test, "test_y": test_y}


# ------------------------------------------------------------------------------------------------- registry


def test_registry_lists_all_datasets():
    assert list_datasets() == ["cifar10", "cifar100", "fashion_mnist", "mnist", "svhn", "toy"]
    assert DATASETS.list() == list_datasets()


def test_unknown_dataset_suggests_close_match():
    with pytest.raises(UnknownNameError, match="fashion_mnist"):
        load_dataset("fashion_mnsit")
    with pytest.raises(UnknownNameError, match="cifar10"):
        dataset_info("cifar_10")


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "cifar10", "cifar100", "svhn", "toy"])
def test_dataset_info_is_static_and_json_round_trips(name):
    info = dataset_info(name)
    assert info.name == name and len(info.class_names) == info.num_classes
    assert len(info.mean) == len(info.std) == info.channels
    assert info.image_shape == (info.channels, *info.im_size)
    back = DatasetInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert back == info


def test_dataset_info_facts():
    fm = dataset_info("fashion_mnist")
    assert fm.mean == (0.2861,) and fm.std == (0.3530,) and fm.class_names[0] == "T-shirt/top"
    assert fm.class_names[-1] == "Ankle boot" and fm.pixels_per_image == 784
    assert dataset_info("cifar100").num_classes == 100 and len(set(dataset_info("cifar100").class_names)) == 100
    assert dataset_info("cifar10").std == (0.2023, 0.1994, 0.2010)
    with pytest.raises(ConfigError, match="Unknown DatasetInfo fields"):
        DatasetInfo.from_dict({**fm.to_dict(), "bogus": 1})


# ------------------------------------------------------------------------------------------------------ toy


def test_toy_is_deterministic_and_balanced():
    a = load_dataset("toy", cache=False)
    b = load_dataset("toy", cache=False)
    assert torch.equal(a.images_train, b.images_train) and torch.equal(a.labels_test, b.labels_test)
    assert a.images_train.shape == (600, 1, 28, 28) and a.images_test.shape == (200, 1, 28, 28)
    assert a.images_train.dtype == torch.float32 and a.labels_train.dtype == torch.int64
    assert a.class_counts() == [60] * 10
    assert torch.bincount(a.labels_test).tolist() == [20] * 10
    # The generator itself, bypassing every cache, gives the pinned bytes (identical on every machine).
    from haba_core.data.toy import _generate_toy

    raw = _generate_toy.__wrapped__(1, (28, 28), 10, 60, 20, 0.15, 0)
    assert [int(t.to(torch.int64).sum()) for t in raw] == [51340550, 2700, 17100195, 900]
    # Normalized with its own statistics: about zero mean, unit std.
    assert abs(a.images_train.mean().item()) < 0.01 and abs(a.images_train.std().item() - 1) < 0.01


def test_toy_options_and_validation():
    d = load_dataset("toy", channels=3, im_size=32, num_classes=5, n_per_class=4, n_test_per_class=2)
    assert d.images_train.shape == (20, 3, 32, 32) and d.images_test.shape == (10, 3, 32, 32)
    assert d.info.channels == 3 and d.info.im_size == (32, 32) and d.num_classes == 5
    assert load_dataset("toy", im_size=(16, 20)).images_train.shape[-2:] == (16, 20)
    assert not torch.equal(load_dataset("toy", seed=1).images_train, load_dataset("toy").images_train)
    with pytest.raises(ConfigError):
        load_dataset("toy", num_classes=1)
    with pytest.raises(TypeError):
        load_dataset("toy", colour=3)  # unknown option


def test_toy_builds_fast():
    t = time.perf_counter()
    load_dataset("toy", channels=3, im_size=32, seed=123, cache=False)
    assert time.perf_counter() - t < 1.0


# ------------------------------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def toy() -> Dataset:
    return load_dataset("toy")


def test_class_index_is_correct(toy):
    all_idx = []
    for c in range(toy.num_classes):
        idx = toy.indices_of_class(c)
        assert idx.dtype == torch.int64 and (toy.labels_train[idx] == c).all()
        all_idx.append(idx)
    assert torch.cat(all_idx).sort().values.tolist() == list(range(len(toy.labels_train)))


def test_sample_class_returns_only_that_class(toy):
    g = torch.Generator().manual_seed(0)
    class_images = toy.images_train[toy.indices_of_class(3)]  # (60, 1, 28, 28)
    x = toy.sample_class(3, 10, g)
    assert x.shape == (10, 1, 28, 28)
    matches = (x.flatten(1)[:, None, :] == class_images.flatten(1)[None]).all(-1)  # (10, 60)
    assert (matches.sum(1) == 1).all()  # each sample is exactly one image of class 3
    assert matches.any(0).sum() == 10  # without replacement: 10 distinct images
    # More than the class holds: drawn with replacement, still only class 3.
    y = toy.sample_class(3, 100, g)
    assert y.shape == (100, 1, 28, 28)
    assert (y.flatten(1)[:, None, :] == class_images.flatten(1)[None]).all(-1).any(1).all()
    # Same generator seed, same draw.
    assert torch.equal(
        toy.sample_class(5, 7, torch.Generator().manual_seed(1)),
        toy.sample_class(5, 7, torch.Generator().manual_seed(1)),
    )


def test_sample_balanced_and_subset_random(toy):
    g = torch.Generator().manual_seed(0)
    x, y = toy.sample_balanced(4, g)
    assert x.shape == (40, 1, 28, 28) and y.tolist() == [c for c in range(10) for _ in range(4)]
    xs, ys = toy.subset_random(3, torch.Generator().manual_seed(2))
    assert xs.shape == (30, 1, 28, 28) and torch.bincount(ys).tolist() == [3] * 10
    xs2, _ = toy.subset_random(3, torch.Generator().manual_seed(2))
    assert torch.equal(xs, xs2)
    xs2.zero_()  # a copy, not a view of the dataset
    assert toy.images_train.abs().sum() > 0
    with pytest.raises(ConfigError, match="without replacement"):
        toy.subset_random(61, g)


def test_to_device_keeps_content(toy):
    assert toy.to("cpu") is toy
    assert toy.device == torch.device("cpu")
    assert "toy" in repr(toy)


def test_limits_are_balanced_and_deterministic():
    full = load_dataset("toy")
    d = load_dataset("toy", train_limit=95, test_limit=30)
    assert len(d.labels_train) == 95 and len(d.labels_test) == 30
    counts = d.class_counts()
    assert counts == [10] * 5 + [9] * 5  # 95 = 10 x 9 + 5: the first 5 classes get one more
    assert torch.bincount(d.labels_test).tolist() == [3] * 10
    # The first images of each class, in the original order.
    keep = torch.cat([full.indices_of_class(c)[: counts[c]] for c in range(10)]).sort().values
    assert torch.equal(d.images_train, full.images_train[keep])
    assert torch.equal(load_dataset("toy", train_limit=95).images_train, d.images_train)
    with pytest.raises(ConfigError, match="one image of each"):
        load_dataset("toy", train_limit=5)
    assert len(load_dataset("toy", train_limit=10**6).labels_train) == 600


def test_cache_hands_out_fresh_tensors():
    a = load_dataset("toy", n_per_class=5)
    a.images_train.zero_()
    b = load_dataset("toy", n_per_class=5)
    assert b.images_train.abs().sum() > 0


# ------------------------------------------------------------------------------------------ MNIST family (IDX)


def test_read_idx_plain_and_gz(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr)
    write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "a"), arr) and np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(HabaError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "a").read_bytes()[:-3])
    with pytest.raises(HabaError, match="bytes"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("folder,gz", [("FashionMNIST/raw", True), ("fashion_mnist", False)])
def test_fashion_mnist_from_root(tmp_path, folder, gz):
    data = write_idx_folder(tmp_path / folder, gz=gz)
    d = load_dataset("fashion_mnist", root=tmp_path, download=False, system_dir=None)
    assert d.images_train.shape == (40, 1, 28, 28) and d.images_test.shape == (20, 1, 28, 28)
    assert d.labels_train.tolist() == data["train_y"].tolist()
    expected = (torch.from_numpy(data["test_x"]).float()[:, None] / 255 - 0.2861) / 0.3530
    assert torch.allclose(d.images_test, expected, atol=1e-6)
    assert d.info == dataset_info("fashion_mnist")


def test_fashion_mnist_from_system_dir(tmp_path):
    """The Debian lookup (``system_dir``) is used when root has nothing."""
    write_idx_folder(tmp_path / "debian", n_train=30, n_test=10)
    d = load_dataset("fashion_mnist", root=tmp_path / "empty", download=False, system_dir=str(tmp_path / "debian"))
    assert len(d.labels_train) == 30 and len(d.labels_test) == 10


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion_mnist", root=tmp_path, download=False, system_dir=None)
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and "download=True" in msg


def test_mnist_from_root(tmp_path):
    data = write_idx_folder(tmp_path / "MNIST" / "raw", n_train=50, n_test=10, gz=False)
    d = load_dataset("mnist", root=tmp_path, download=False)
    assert d.images_train.shape == (50, 1, 28, 28) and d.labels_test.tolist() == data["test_y"].tolist()
    expected = (torch.from_numpy(data["train_x"][:1]).float()[:, None] / 255 - 0.1307) / 0.3081
    assert torch.allclose(d.images_train[:1], expected, atol=1e-6)
    with pytest.raises(DatasetNotFoundError, match="MNIST"):
        load_dataset("mnist", root=tmp_path / "empty", download=False)


# -------------------------------------------------------------------------------------------------- CIFAR


def test_cifar10_from_pickled_batches(tmp_path):
    data = write_cifar10(tmp_path)
    d = load_dataset("cifar10", root=tmp_path, download=False)
    assert d.images_train.shape == (50, 3, 32, 32) and d.images_test.shape == (10, 3, 32, 32)
    assert d.labels_train.tolist() == data["train_y"].tolist() and d.labels_test.tolist() == data["test_y"]
    # Channel-major rows: pixel (c, h, w) of image n is row[n, c * 1024 + h * 32 + w].
    row = data["train_rows"][7].astype(np.float32) / 255
    mean, std = dataset_info("cifar10").mean, dataset_info("cifar10").std
    for c, h, w in [(0, 0, 0), (1, 5, 9), (2, 31, 30)]:
        expected = (row[c * 1024 + h * 32 + w] - mean[c]) / std[c]
        assert d.images_train[7, c, h, w].item() == pytest.approx(expected, abs=1e-5)


def test_cifar100_from_pickled_files(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, test = cifar_rows(200, 0), cifar_rows(100, 1)
    fine_train, fine_test = list(range(100)) * 2, list(range(100))
    write_pickle(folder / "train", {"data": train, "fine_labels": fine_train, "coarse_labels": [0] * 200})
    write_pickle(folder / "test", {"data": test, "fine_labels": fine_test, "coarse_labels": [0] * 100})
    write_pickle(folder / "meta", {"fine_label_names": list(sources.CIFAR100_CLASSES)})
    d = load_dataset("cifar100", root=tmp_path, download=False, train_limit=100)
    assert d.images_train.shape == (100, 3, 32, 32) and d.class_counts() == [1] * 100
    assert d.labels_test.tolist() == fine_test and d.info.num_classes == 100


def test_cifar_missing_and_hostile_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", root=tmp_path, download=False)
    with pytest.raises(DatasetNotFoundError, match="cifar-100"):
        load_dataset("cifar100", root=tmp_path, download=False)

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    write_pickle(tmp_path / "evil", {"data": Evil()})
    with pytest.raises(HabaError, match="refusing to unpickle"):
        read_cifar_pickle(tmp_path / "evil")


# --------------------------------------------------------------------------------------------------- SVHN


def test_svhn_from_mat_files(tmp_path):
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 20)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # (H, W, C, N) as in the .mat files
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # digits 1..10, 10 meaning 0
        sio.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        if split == "train":
            x_train, y_train = x, y
    d = load_dataset("svhn", root=tmp_path, download=False)
    assert d.images_train.shape == (30, 3, 32, 32) and d.images_test.shape == (20, 3, 32, 32)
    assert d.labels_train.tolist() == [(i % 10 + 1) % 10 for i in range(30)]
    mean, std = dataset_info("svhn").mean, dataset_info("svhn").std
    n, c, h, w = 4, 2, 3, 17
    assert d.images_train[n, c, h, w].item() == pytest.approx((x_train[h, w, c, n] / 255 - mean[c]) / std[c], abs=1e-5)
    assert y_train[0, 0] == 1 and d.labels_train[0] == 1
    with pytest.raises(DatasetNotFoundError, match="train_32x32.mat"):
        load_dataset("svhn", root=tmp_path / "empty", download=False)


# ---------------------------------------------------------------------------------------------------- ZCA


def _offdiag_ratio(x: torch.Tensor) -> float:
    """Mean |off-diagonal| / mean diagonal of the covariance of flattened x."""
    flat = x.flatten(1).double()
    cov = torch.cov(flat.T)
    diag = cov.diagonal()
    off = cov - torch.diag(diag)
    return (off.abs().sum() / (cov.numel() - diag.numel()) / diag.mean()).item()


def test_zca_whitens_and_round_trips():
    d = load_dataset("toy", channels=1, im_size=12, n_per_class=100)  # 144-dim, 1000 images
    x = d.images_train
    zca = fit_zca(x, reg=0.1)
    w = zca.apply(x)
    assert w.shape == x.shape and w.dtype == torch.float32
    before, after = _offdiag_ratio(x), _offdiag_ratio(w)
    assert after < 0.2 * before, (before, after)
    assert torch.allclose(zca.invert(w), x, atol=1e-3)
    again = ZCA.from_state(zca.state())
    assert torch.allclose(again.apply(x[:5]), w[:5]) and again.reg == 0.1 and again.relative
    with pytest.raises(ConfigError, match="fitted on 144-dim"):
        zca.apply(torch.zeros(2, 1, 28, 28))


def test_load_dataset_with_relative_zca():
    plain = load_dataset("toy", n_per_class=20)
    d = load_dataset("toy", n_per_class=20, zca=True, zca_variant="relative")
    assert d.info.zca and not plain.info.zca and d.zca is not None and d.zca.relative
    assert d.images_train.shape == plain.images_train.shape and d.images_test.shape == plain.images_test.shape
    assert torch.allclose(d.images_test, d.zca.apply(plain.images_test), atol=1e-5)
    assert DatasetInfo.from_dict(d.info.to_dict()).zca


def test_reference_zca_is_kornias_on_raw_pixels(tmp_path):
    """The default ZCA follows MTT/HaBa: kornia's ZCAWhitening(eps=0.1) fitted on raw x / 255 pixels (no
    mean/std normalization), unbiased covariance, absolute eps. Recomputed here with numpy from the formula."""
    import numpy as np

    raw = DATASETS.create("toy", n_per_class=20).load(tmp_path, False)
    d = load_dataset("toy", n_per_class=20, zca=True)  # zca_variant="kornia" is the default
    assert not d.zca.relative and d.zca.reg == 0.1
    x = raw.images_train.reshape(len(raw.images_train), -1).numpy().astype(np.float64) / 255.0
    mean = x.mean(0, keepdims=True)
    cov = (x - mean).T @ (x - mean) / (len(x) - 1)
    u, sv, _ = np.linalg.svd(cov)
    transform = u @ np.diag(1.0 / np.sqrt(sv + 0.1)) @ u.T
    t = raw.images_test.reshape(len(raw.images_test), -1).numpy().astype(np.float64) / 255.0
    expected = ((t - mean) @ transform).reshape(raw.images_test.shape)
    np.testing.assert_allclose(d.images_test.numpy(), expected, atol=1e-4)
    with pytest.raises(ConfigError, match="zca_variant"):
        load_dataset("toy", n_per_class=20, zca=True, zca_variant="kornea")


def test_validation_split_is_seeded_balanced_and_held_out():
    full = load_dataset("toy", n_per_class=20)
    d = load_dataset("toy", n_per_class=20, val_per_class=4, val_seed=1)
    assert torch.bincount(d.labels_val).tolist() == [4] * 10
    assert d.class_counts() == [16] * 10 and len(d.labels_train) + len(d.labels_val) == len(full.labels_train)
    # held out: no validation image is among the training images, and together they are the full set
    joined = torch.cat([d.images_train, d.images_val]).flatten(1)
    assert torch.unique(joined, dim=0).shape[0] == torch.unique(full.images_train.flatten(1), dim=0).shape[0]
    train_rows = {tuple(r.tolist()) for r in d.images_train.flatten(1)[:, :8]}
    assert not any(tuple(r.tolist()) in train_rows for r in d.images_val.flatten(1)[:, :8])
    again = load_dataset("toy", n_per_class=20, val_per_class=4, val_seed=1)
    other = load_dataset("toy", n_per_class=20, val_per_class=4, val_seed=2)
    assert torch.equal(again.images_val, d.images_val) and not torch.equal(other.images_val, d.images_val)
    assert torch.equal(d.evaluated_on("val").images_test, d.images_val)
    assert d.evaluated_on("test").images_test is d.images_test
    with pytest.raises(ConfigError, match="val_per_class"):
        full.evaluated_on("val")
    with pytest.raises(ConfigError, match="val_per_class"):
        load_dataset("toy", n_per_class=20, val_per_class=20)


def test_a_train_limit_keeps_the_same_holdout_and_takes_its_subset_from_the_rest():
    """Experts train on a limited subset; their holdout must be the distillation's (same images), or they would
    learn from the images the distillation is validated on."""
    d = load_dataset("toy", n_per_class=20, val_per_class=4, val_seed=1)
    lim = load_dataset("toy", n_per_class=20, val_per_class=4, val_seed=1, train_limit=50)
    assert torch.equal(lim.images_val, d.images_val) and torch.equal(lim.labels_val, d.labels_val)
    # the limit's first-of-each-class subset, taken from the images left after the holdout
    first = torch.cat([d.images_train[d.labels_train == c][:5] for c in range(10)])
    order = torch.cat([torch.nonzero(d.labels_train == c).flatten()[:5] for c in range(10)]).sort().indices
    assert len(lim.labels_train) == 50 and torch.equal(lim.images_train, first[order])


# ------------------------------------------------------------------------------------------ real Fashion-MNIST


@pytest.mark.slow
@pytest.mark.skipif(
    sources.find_idx_files(sources.DEBIAN_FASHION_MNIST) is None,
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_from_debian(tmp_path):
    t = time.perf_counter()
    d = load_dataset("fashion_mnist", root=tmp_path, download=False, cache=False)
    seconds = time.perf_counter() - t
    assert d.images_train.shape == (60000, 1, 28, 28) and d.images_test.shape == (10000, 1, 28, 28)
    assert d.class_counts() == [6000] * 10 and torch.bincount(d.labels_test).tolist() == [1000] * 10
    assert abs(d.images_train.mean().item()) < 0.01 and abs(d.images_train.std().item() - 1) < 0.01
    assert seconds < 10, seconds
    print(f"real Fashion-MNIST loaded in {seconds:.2f} s")


# ------------------------------------------------------------------------- torchvision fallback (faked, offline)


class _FakeTorchvisionSet:
    """Stands in for a torchvision dataset constructed with download=True: bulk .data/.targets, no network."""

    def __init__(self, root, train=True, download=False, split=None):
        assert download, "the fallback is only used to download"
        n = 20 if (train and split is None) or split == "train" else 10
        rng = np.random.default_rng(n)
        self.data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)  # CIFAR: NHWC numpy
        self.targets = [i % 10 for i in range(n)]
        self.labels = np.array(self.targets)  # SVHN keeps (N, 3, 32, 32) and .labels
        if split is not None:
            self.data = np.ascontiguousarray(self.data.transpose(0, 3, 1, 2))


class _FakeMnistSet:
    def __init__(self, root, train=True, download=False):
        n = 30 if train else 10
        self.data = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8)
        self.targets = torch.arange(n) % 10


def test_torchvision_fallback_converts_in_bulk(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd, "CIFAR10", _FakeTorchvisionSet)
    monkeypatch.setattr(tvd, "SVHN", _FakeTorchvisionSet)
    monkeypatch.setattr(tvd, "FashionMNIST", _FakeMnistSet)
    c = load_dataset("cifar10", root=tmp_path, download=True, cache=False)
    fake = _FakeTorchvisionSet(None, train=True, download=True)
    assert c.images_train.shape == (20, 3, 32, 32) and c.labels_test.shape == (10,)
    expected = (fake.data[3, 4, 5, 1] / 255 - 0.4822) / 0.1994  # NHWC pixel (h=4, w=5, c=1)
    assert c.images_train[3, 1, 4, 5].item() == pytest.approx(expected, abs=1e-5)
    assert load_dataset("svhn", root=tmp_path, download=True, cache=False).images_train.shape == (20, 3, 32, 32)
    f = load_dataset("fashion_mnist", root=tmp_path, download=True, system_dir=None, cache=False)
    assert f.images_train.shape == (30, 1, 28, 28)


def test_failed_download_is_reported(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(tvd, "FashionMNIST", offline)
    with pytest.raises(DatasetNotFoundError, match="network unreachable") as err:
        load_dataset("fashion_mnist", root=tmp_path, download=True, system_dir=None)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda_and_sample_with_either_generator(toy):
    d = toy.to("cuda")
    assert d.images_train.is_cuda and d.indices_of_class(0).is_cuda
    x = d.sample_class(2, 5, torch.Generator().manual_seed(0))
    y = d.sample_class(2, 5, torch.Generator(device="cuda").manual_seed(0))
    assert x.is_cuda and y.is_cuda and x.shape == y.shape == (5, 1, 28, 28)
    assert torch.equal(x.cpu(), toy.sample_class(2, 5, torch.Generator().manual_seed(0)))
