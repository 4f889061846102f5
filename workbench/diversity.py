"""How different the hallucinations of one basis are, measured (HaBa's contrastive constraint pushes them apart).

For a class with bases b_i and hallucinators h_j, the images x_ij = h_j(b_i) are compared:
- *within a basis*: mean over bases i of the mean over hallucinator pairs (j, j') of a distance d(x_ij, x_ij');
- *between bases* (a reference scale): mean over hallucinators j of the mean over basis pairs (i, i').
Two distances (``haba_core.diversity``): RMS pixel distance in the normalized space, and ``1 - cos`` of the
embeddings of a fixed, seeded, randomly initialised ConvNet (the kind DM matches statistics of).
"""

from __future__ import annotations

from itertools import combinations

import torch

from haba_core.diversity import cosine_distances, pair_mean, random_feature_net, rms_distances


def feature_net(info, seed: int = 0):
    """The fixed random ConvNet of the feature distances (:func:`haba_core.diversity.random_feature_net`)."""
    return random_feature_net(info, seed)


@torch.no_grad()
def hallucination_diversity(images: torch.Tensor, info=None, seed: int = 0, net=None) -> dict:
    """Diversity of hallucinations ``images`` (K, n_bases, C, H, W) of one class.

    Returns ``pixel_within``, ``pixel_between``, ``feature_within``, ``feature_between`` (None where a pair
    does not exist or the feature net is unavailable), ``per_basis`` rows and ``feature_error`` if any.
    """
    k, n = images.shape[:2]
    x = images.float()
    out: dict = {"n_hallucinators": k, "n_bases": n, "feature_error": None}
    feats = None
    if net is None and info is not None:
        try:
            net = feature_net(info, seed)
        except Exception as e:  # shown next to the grid instead of the feature numbers
            out["feature_error"] = f"{type(e).__name__}: {e}"
    if net is not None:
        z = (
            net.forward_features(x.reshape(k * n, *x.shape[2:]))
            if hasattr(net, "forward_features")
            else net(x.reshape(k * n, *x.shape[2:]))
        )
        feats = z.reshape(k, n, -1)
    per_basis = []
    for i in range(n):
        row = {"basis": i, "pixel": pair_mean(rms_distances(x[:, i]))}
        row["feature"] = pair_mean(cosine_distances(feats[:, i])) if feats is not None else None
        per_basis.append(row)

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    out["per_basis"] = per_basis
    out["pixel_within"] = mean(r["pixel"] for r in per_basis)
    out["feature_within"] = mean(r["feature"] for r in per_basis)
    out["pixel_between"] = mean(pair_mean(rms_distances(x[j])) for j in range(k))
    out["feature_between"] = (
        mean(pair_mean(cosine_distances(feats[j])) for j in range(k)) if feats is not None else None
    )
    out["pairs_within"] = n * len(list(combinations(range(k), 2)))
    return out
