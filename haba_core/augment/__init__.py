"""Data augmentation for distillation: Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021)."""

from haba_core.augment.dsa import (
    DSA,
    DSA_DEFAULT,
    DSA_MODES,
    DSA_OPS,
    DSAParams,
    apply_dsa,
    dsa,
    parse_strategy,
    sample_dsa_params,
)

__all__ = [
    "DSA",
    "DSA_DEFAULT",
    "DSA_MODES",
    "DSA_OPS",
    "DSAParams",
    "apply_dsa",
    "dsa",
    "parse_strategy",
    "sample_dsa_params",
]
