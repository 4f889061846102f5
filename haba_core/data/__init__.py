"""Datasets: a registry of sources, in-memory normalized tensors, ZCA whitening.

``load_dataset("fashion_mnist")`` -> :class:`Dataset`; ``dataset_info(name)`` for the static facts;
``list_datasets()`` for the registered names (fashion_mnist, mnist, cifar10, cifar100, svhn, toy).
"""

from haba_core.data import sources, toy  # noqa: F401  (registers the datasets)
from haba_core.data.datasets import (
    DATASETS,
    Dataset,
    DatasetInfo,
    RawSplits,
    clear_cache,
    dataset_from_config,
    dataset_info,
    list_datasets,
    load_dataset,
)
from haba_core.data.formats import read_cifar_pickle, read_idx, read_svhn_mat
from haba_core.data.zca import ZCA, fit_zca

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "RawSplits",
    "ZCA",
    "clear_cache",
    "dataset_from_config",
    "dataset_info",
    "fit_zca",
    "list_datasets",
    "load_dataset",
    "read_cifar_pickle",
    "read_idx",
    "read_svhn_mat",
]
