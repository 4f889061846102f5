"""How different the images of a synthetic set are: the distances and spreads the app, the tutorials and the
diversity study share.

- ``rms_distances``: RMS pixel distance ``||x - x'||_2 / sqrt(C*H*W)`` between every two images (normalized space);
- ``cosine_distances``: ``1 - cos`` between every two embeddings;
- ``pair_mean``: the mean over distinct pairs (the strict upper triangle), None for fewer than two images;
- ``effective_rank``: exp of the entropy of the normalized singular values of the centred rows (Roy & Vetterli);
- ``spread``: the mean distance of the rows to their centroid;
- ``random_feature_net``: the fixed, seeded, randomly initialised ConvNet whose embedding the feature distances use
  (the kind of network DM matches statistics of).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FEATURE_WIDTH = 64


def pair_mean(d: torch.Tensor) -> float | None:
    """Mean of the strict upper triangle of a square distance matrix (None if there are no pairs)."""
    n = d.shape[0]
    if n < 2:
        return None
    iu = torch.triu_indices(n, n, offset=1)
    return float(d[iu[0], iu[1]].mean())


def rms_distances(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(len(x), -1).double()
    return torch.cdist(flat, flat) / flat.shape[1] ** 0.5


def cosine_distances(z: torch.Tensor) -> torch.Tensor:
    z = F.normalize(z.reshape(len(z), -1).double(), dim=1)
    return 1 - z @ z.T


def effective_rank(z: torch.Tensor) -> float | None:
    """exp(H(p)), p the singular values of the centred rows of ``z`` normalized to sum 1; None for one row."""
    if len(z) < 2:
        return None
    s = torch.linalg.svdvals(z.double() - z.double().mean(0))
    if float(s.sum()) == 0.0:
        return 1.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def spread(z: torch.Tensor) -> float:
    z = z.double()
    return float((z - z.mean(0)).norm(dim=1).mean())


@torch.no_grad()
def random_feature_net(info, seed: int = 0):
    """A randomly initialised ConvNet (seeded, eval mode, the global RNG untouched); its embedding is the metric."""
    from haba_core.nets import create_net

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = create_net("convnet", info.channels, info.num_classes, tuple(info.im_size), width=FEATURE_WIDTH)
    return net.eval()
