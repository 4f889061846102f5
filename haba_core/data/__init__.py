"""Datasets: a registry of sources, in-memory normalized tensors, ZCA whitening.

``load_dataset("fashion_mnist")`` -> :class:`Dataset`; ``dataset_info(name)`` for the static facts;
``list_datasets()`` for the registered names. Each module of this package is imported (its sources register
themselves with ``@DATASETS.register``), so a new dataset is one new file here.
"""

import importlib
import pkgutil

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

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

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
