"""Synthetic-set parameterizations: ``pixels`` (plain images), ``haba`` (bases + hallucinators) and every
other kind a module of this package registers (each module here is imported, so a new kind is one new file)."""

import importlib
import pkgutil

from haba_core.synsets.base import SYNSETS, Synset, create_synset, list_synsets, load_synset, upsample_to
from haba_core.synsets.haba import HabaSynset, hallucinator_floats
from haba_core.synsets.pixels import PixelSynset

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # registers the kind it defines

__all__ = [
    "SYNSETS",
    "Synset",
    "PixelSynset",
    "HabaSynset",
    "create_synset",
    "list_synsets",
    "load_synset",
    "hallucinator_floats",
    "upsample_to",
]
