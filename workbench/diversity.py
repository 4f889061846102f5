"""How different the hallucinations of one basis are, measured (HaBa's contrastive constraint pushes them apart).

For a class with bases b_i and hallucinators h_j, the images x_ij = h_j(b_i) are compared:
- *within a basis*: mean over bases i of the mean over hallucinator pairs (j, j') of a distance d(x_ij, x_ij');
- *between bases* (a reference scale): mean over hallucinators j of the mean over basis pairs (i, i').
Two distances: RMS pixel distance ``||x - x'||_2 / sqrt(C*H*W)`` in the normalized space, and ``1 - cos`` of
the embeddings of a fixed, seeded, randomly initialised ConvNet (the kind DM matches statistics of).
"""

from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F

FEATURE_WIDTH = 64


def _pairwise_mean(d: torch.Tensor) -> float | None:
    """Mean of the strict upper triangle of a square distance matrix (None if there are no pairs)."""
    n = d.shape[0]
    if n < 2:
        return None
    iu = torch.triu_indices(n, n, offset=1)
    return float(d[iu[0], iu[1]].mean())


def _rms_dist(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1)
    return torch.cdist(flat, flat) / flat.shape[1] ** 0.5


def _cos_dist(z: torch.Tensor) -> torch.Tensor:
    z = F.normalize(z.reshape(z.shape[0], -1), dim=1)
    return 1 - z @ z.T


@torch.no_grad()
def feature_net(info, seed: int = 0):
    """A randomly initialised ConvNet (seeded, eval mode) from the engine's registry; its embedding is the metric."""
    from haba_core.nets import create_net

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = create_net("convnet", info.channels, info.num_classes, tuple(info.im_size), width=FEATURE_WIDTH)
    return net.eval()


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
        except Exception as e:  # noqa: BLE001 - shown next to the grid instead of the feature numbers
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
        row = {"basis": i, "pixel": _pairwise_mean(_rms_dist(x[:, i]))}
        row["feature"] = _pairwise_mean(_cos_dist(feats[:, i])) if feats is not None else None
        per_basis.append(row)

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    out["per_basis"] = per_basis
    out["pixel_within"] = mean(r["pixel"] for r in per_basis)
    out["feature_within"] = mean(r["feature"] for r in per_basis)
    out["pixel_between"] = mean(_pairwise_mean(_rms_dist(x[j])) for j in range(k))
    out["feature_between"] = mean(_pairwise_mean(_cos_dist(feats[j])) for j in range(k)) if feats is not None else None
    out["pairs_within"] = n * len(list(combinations(range(k), 2)))
    return out
