"""HaBa's adversarial contrastive constraint (Liu et al., NeurIPS 2022, Sec. 3.3).

A feature extractor F (ConvNet body + linear classifier) sees a batch of bases hallucinated by one pair of
*different* random hallucinators ``(j0, j1)``, drawn once for the whole batch: x0 = hallucinator j0 of every
basis, x1 = hallucinator j1 of the same bases. As the official code, the two views then go through *one* DSA
call on their concatenation ``cat([x0, x1])``: one operation family for the call (DSA's single mode), its
parameters drawn per image, so F must also learn to see through augmentation. Every basis is in the batch
(``batch=None``, the reference's default ``batch_syn``); an integer caps it at a random subset of that many.

- Synthetic side: ``lambda_cos * mean((cos(F(x0), F(x1)) + 1) / 2)`` is added to the DD loss; minimising it
  pushes the two hallucinations of one basis apart in F's feature space.
- Extractor side (the adversary), on a fresh pair: ``CE(F(x0, x1), y) * ce_weight
  + mean((1 - cos) / 2) * likelihood_weight + SupCon(norm F(x0), norm F(x1), y) * supcon_weight``;
  F learns to see the pair as alike and to classify it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from haba_core.augment import apply_dsa, sample_dsa_params
from haba_core.nets import create_net


def supcon_loss(z0: Tensor, z1: Tensor, labels: Tensor, temperature: float = 0.07) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) over two L2-normalized views z0, z1 (B, D)."""
    z = torch.cat([z0, z1])  # (2B, D)
    y = torch.cat([labels, labels])
    logits = z @ z.T / temperature  # (2B, 2B)
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & ~self_mask
    mean_log_prob_pos = log_prob.masked_fill(~positives, 0.0).sum(1) / positives.sum(1).clamp_min(1)
    return -mean_log_prob_pos.mean()


def pair_cosine(f0: Tensor, f1: Tensor) -> Tensor:
    """Row-wise cosine similarity of two feature batches (B, D) -> (B,)."""
    return F.cosine_similarity(f0, f1, dim=1)


class ContrastiveConstraint:
    """Owns the extractor F and its optimizer; the engine calls the two sides once per synthetic update."""

    def __init__(self, cfg, info, device, dsa_strategy: str):
        self.cfg = cfg
        self.dsa_strategy = dsa_strategy
        self.im_size = tuple(info.im_size)
        self.extractor = create_net(
            "convnet",
            info.channels,
            info.num_classes,
            info.im_size,
            width=cfg.extractor_width,
            depth=cfg.extractor_depth,
        ).to(device)
        self.optimizer = torch.optim.SGD(
            self.extractor.parameters(), lr=cfg.extractor_lr, momentum=cfg.extractor_momentum
        )

    def _pair(self, synset, generator) -> tuple[Tensor, Tensor]:
        """The two views, concatenated and augmented as one batch: (2B, C, H, W) ``[x0; x1]``, and labels (B,)."""
        n = synset.bases.shape[0]
        k = n if self.cfg.batch is None else min(int(self.cfg.batch), n)
        idx = torch.randperm(n, generator=generator)[:k].to(synset.bases.device)
        x0, x1, y = synset.pair(idx, generator)
        x = torch.cat([x0, x1])
        if self.dsa_strategy:  # one call: one op family for both views, per-image parameters
            x = apply_dsa(x, sample_dsa_params(self.dsa_strategy, len(x), generator, x.device, self.im_size))
        return x, y

    def synthetic_loss(self, synset, generator) -> Tensor:
        """lambda_cos * mean((cos + 1) / 2): differentiable w.r.t. the synset only."""
        self.extractor.requires_grad_(False)
        try:
            x, _ = self._pair(synset, generator)
            f0, f1 = self.extractor.forward_features(x).chunk(2)
            return self.cfg.lambda_cos * ((pair_cosine(f0, f1) + 1) / 2).mean()
        finally:
            self.extractor.requires_grad_(True)

    def update_extractor(self, synset, generator) -> dict[str, float]:
        """One SGD step of F on a fresh, detached pair; returns its loss terms."""
        with torch.no_grad():
            x, y = self._pair(synset, generator)
        feats = self.extractor.forward_features(x)  # (2B, D)
        logits = self.extractor.forward_head(feats)
        f0, f1 = feats.chunk(2)
        ce = F.cross_entropy(logits, torch.cat([y, y]))
        likelihood = ((1 - pair_cosine(f0, f1)) / 2).mean()
        supcon = supcon_loss(F.normalize(f0, dim=1), F.normalize(f1, dim=1), y, self.cfg.temperature)
        loss = self.cfg.ce_weight * ce + self.cfg.likelihood_weight * likelihood + self.cfg.supcon_weight * supcon
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"extractor_ce": ce.item(), "extractor_likelihood": likelihood.item(), "extractor_supcon": supcon.item()}

    def state_dict(self) -> dict:
        return {"extractor": self.extractor.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.extractor.load_state_dict(state["extractor"])
        self.optimizer.load_state_dict(state["optimizer"])
