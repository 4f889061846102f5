"""haba_core: dataset distillation by factorization (HaBa) over DC, DSA, DM and MTT, in PyTorch.

Public API (imported lazily, so ``import haba_core`` is cheap)::

    from haba_core import distill, resolve_config, load_synset, evaluate_synset, load_dataset
    cfg = resolve_config(overrides=["method.name=dm", "synset.kind=haba", "synset.budget_ipc=1"])
    run = distill(cfg, "runs/demo")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "distill": "haba_core.engine",
    "Distiller": "haba_core.engine",
    "RunConfig": "haba_core.config",
    "resolve_config": "haba_core.config",
    "evaluate_synset": "haba_core.evaluate",
    "random_real_baseline": "haba_core.evaluate",
    "load_dataset": "haba_core.data",
    "dataset_info": "haba_core.data",
    "list_datasets": "haba_core.data",
    "create_net": "haba_core.nets",
    "list_nets": "haba_core.nets",
    "create_synset": "haba_core.synsets",
    "list_synsets": "haba_core.synsets",
    "load_synset": "haba_core.synsets",
    "create_method": "haba_core.methods",
    "list_methods": "haba_core.methods",
    "plan": "haba_core.budget",
    "solve": "haba_core.budget",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'haba_core' has no attribute {name!r}")
