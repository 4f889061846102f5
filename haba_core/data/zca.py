"""ZCA whitening of image sets (the KIP / MTT convention for CIFAR distillation).

Images are flattened to vectors ``x`` of ``D = C * H * W`` values. From the training images we compute, in
float64, the mean ``mu`` and the covariance ``S = X^T X / (N - 1)`` of the centred rows, its eigendecomposition
``S = U diag(l) U^T``, and the whitening map

    W = U diag(1 / sqrt(l + eps)) U^T,       eps = reg * mean(l)   (relative, KIP's choice; default reg 0.1)

applied as ``zca(x) = (x - mu) W``. ``relative=False`` uses ``eps = reg`` instead (kornia's ``ZCAWhitening``, which
MTT and HaBa call with eps 0.1 on raw ``[0, 1]`` pixels: with ZCA on, their transform has no ``Normalize``). The
regularizer keeps the directions of tiny variance (pixel noise) from being amplified without bound, so whitened
images still look like images. The map is symmetric, so the inverse ``x = zca(x) W^-1 + mu`` with
``W^-1 = U diag(sqrt(l + eps)) U^T`` turns distilled images back into viewable ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from haba_core.errors import ConfigError

_CHUNK = 4096  # rows per matmul when accumulating the covariance, bounding float64 copies to CHUNK x D


class ZCA:
    """A fitted ZCA transform. ``apply`` and ``invert`` take and return (N, C, H, W) or (N, D) tensors."""

    def __init__(self, mean: Tensor, transform: Tensor, inverse: Tensor, reg: float, relative: bool) -> None:
        self.mean = mean  # (D,) float64
        self.transform = transform  # (D, D) float64, symmetric
        self.inverse = inverse  # (D, D) float64, symmetric
        self.reg = float(reg)
        self.relative = bool(relative)

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def _map(self, x: Tensor, matrix: Tensor, centre_before: bool) -> Tensor:
        shape = x.shape
        flat = x.reshape(shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ConfigError(f"ZCA was fitted on {self.dim}-dim images, got images of shape {tuple(shape[1:])}")
        # float32 matmul is plenty once the map is computed in float64; keeps CIFAR-size transforms quick.
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        mean = self.mean.to(device=x.device, dtype=dtype)
        matrix = matrix.to(device=x.device, dtype=dtype)
        flat = flat.to(dtype)
        out = (flat - mean) @ matrix if centre_before else flat @ matrix + mean
        return out.reshape(shape).to(x.dtype if x.is_floating_point() else dtype)

    def apply(self, x: Tensor) -> Tensor:
        """Whiten ``x`` (N, C, H, W) -> (N, C, H, W)."""
        return self._map(x, self.transform, centre_before=True)

    def invert(self, x: Tensor) -> Tensor:
        """Undo :meth:`apply`: whitened (N, C, H, W) -> normalized (N, C, H, W), e.g. to display synthetic images."""
        return self._map(x, self.inverse, centre_before=False)

    def state(self) -> dict[str, Tensor]:
        """Tensors that rebuild this transform with :meth:`from_state` (for synset files)."""
        return {
            "mean": self.mean,
            "transform": self.transform,
            "inverse": self.inverse,
            "reg": torch.tensor(self.reg, dtype=torch.float64),
            "relative": torch.tensor(self.relative),
        }

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> ZCA:
        return cls(
            mean=state["mean"].to(torch.float64),
            transform=state["transform"].to(torch.float64),
            inverse=state["inverse"].to(torch.float64),
            reg=float(state["reg"]),
            relative=bool(state["relative"]),
        )

    def __repr__(self) -> str:
        return f"ZCA(dim={self.dim}, reg={self.reg}, relative={self.relative})"


def fit_zca(images: Tensor, reg: float = 0.1, relative: bool = True) -> ZCA:
    """Fit ZCA on ``images`` (N, C, H, W) (or (N, D)), normally the normalized training set.

    ``reg`` regularizes the eigenvalues: ``eps = reg * mean(eigenvalues)`` when ``relative`` (default) else ``reg``.
    """
    if reg < 0:
        raise ConfigError(f"ZCA regularization must be >= 0, got {reg}")
    n = images.shape[0]
    if n < 2:
        raise ConfigError(f"ZCA needs at least 2 images to fit, got {n}")
    flat = images.reshape(n, -1)
    d = flat.shape[1]
    mean = flat.to(torch.float64).mean(dim=0)  # (D,)
    cov = torch.zeros(d, d, dtype=torch.float64, device=flat.device)
    for start in range(0, n, _CHUNK):
        chunk = flat[start : start + _CHUNK].to(torch.float64) - mean  # (chunk, D)
        cov += chunk.T @ chunk
    cov /= n - 1
    cov = (cov + cov.T) / 2  # exact symmetry for eigh
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending, (D,), (D, D)
    eigvals = eigvals.clamp_min(0.0)  # round-off can leave tiny negatives
    eps = reg * eigvals.mean() if relative else torch.tensor(reg, dtype=torch.float64)
    if float(eps) <= 0 and float(eigvals.min()) <= 0:
        raise ConfigError("ZCA with reg=0 needs a full-rank covariance; use reg > 0")
    scale = (eigvals + eps).sqrt()
    transform = (eigvecs / scale) @ eigvecs.T
    inverse = (eigvecs * scale) @ eigvecs.T
    return ZCA(mean=mean.cpu(), transform=transform.cpu(), inverse=inverse.cpu(), reg=reg, relative=relative)
