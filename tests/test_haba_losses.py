import torch
import torch.nn.functional as F

from haba_core.haba_losses import supcon_loss


def direct_supcon(z, y, t):
    n = len(z)
    total = 0.0
    for i in range(n):
        others = [k for k in range(n) if k != i]
        denom = torch.logsumexp(torch.stack([z[i] @ z[k] / t for k in others]), 0)
        pos = [k for k in others if y[k] == y[i]]
        total += -sum((z[i] @ z[p] / t - denom) for p in pos) / len(pos)
    return total / n


def test_supcon_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    z0 = F.normalize(torch.randn(6, 5, generator=g), dim=1)
    z1 = F.normalize(torch.randn(6, 5, generator=g), dim=1)
    y = torch.tensor([0, 1, 0, 2, 1, 2])
    expect = direct_supcon(torch.cat([z0, z1]), torch.cat([y, y]), 0.07)
    torch.testing.assert_close(supcon_loss(z0, z1, y, 0.07), expect, rtol=1e-5, atol=1e-5)


def test_supcon_lower_when_views_agree():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    y = torch.arange(8)
    assert supcon_loss(z, z, y) < supcon_loss(z, F.normalize(torch.randn(8, 16, generator=g), dim=1), y)
