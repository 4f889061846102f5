"""Synthetic-set parameterizations: ``pixels`` (plain images) and ``haba`` (bases + hallucinators)."""

from haba_core.synsets import haba, pixels  # noqa: F401  (registers the kinds)
from haba_core.synsets.base import SYNSETS, Synset, create_synset, list_synsets, load_synset, upsample_to
from haba_core.synsets.haba import HabaSynset, hallucinator_floats
from haba_core.synsets.pixels import PixelSynset

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
