"""Learned auxiliary labels (AuxiLearn "learning auxiliaries", MAXL).

A generator g(x, y; phi) gives soft labels over the ``psi[y]`` sub-classes of the true class y:
the label vector has ``sum(psi)`` entries, class c owning the contiguous block
``[sum(psi[:c]), sum(psi[:c+1]))``, and all probability lies in y's block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def expand_psi(psi: int | list[int], num_classes: int) -> list[int]:
    """The hierarchy as one sub-class count per class: an int means the same count for every class."""
    if isinstance(psi, int):
        psi = [psi] * num_classes
    psi = [int(p) for p in psi]
    if len(psi) != num_classes:
        raise ValueError(f"psi has {len(psi)} entries, expected one per class ({num_classes})")
    if any(p < 1 for p in psi):
        raise ValueError(f"every class needs at least one sub-class, got psi={psi}")
    return psi


def hierarchy_mask(y: Tensor, psi: list[int]) -> Tensor:
    """Bool ``[B, sum(psi)]``: True exactly on the block of ``psi[y_b]`` sub-classes of each label."""
    owner = torch.repeat_interleave(torch.arange(len(psi), device=y.device), torch.tensor(psi, device=y.device))
    return owner.unsqueeze(0) == y.long().unsqueeze(1)


class LabelGenerator(nn.Module):
    """Trunk + linear layer to ``sum(psi)`` logits, then a softmax restricted to y's block.

    Entries outside the block are filled with -inf before the softmax, so their probability is
    exactly 0 and each row sums to 1 (every block is non-empty, so no row is all -inf).
    """

    def __init__(self, trunk: nn.Module, feat_dim: int, psi: list[int]) -> None:
        super().__init__()
        self.trunk = trunk
        self.psi = [int(p) for p in psi]
        self.head = nn.Linear(feat_dim, sum(self.psi))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        logits = self.head(self.trunk(x))
        mask = hierarchy_mask(y, self.psi)
        return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=1)


def label_entropy_regulariser(probs: Tensor, eps: float = 1e-12) -> Tensor:
    """Negative entropy ``sum_j pbar_j log pbar_j`` of the batch-mean label distribution ``pbar``.

    Minimising it (adding ``weight * this`` to the outer loss, MAXL uses weight 0.2) maximises the
    entropy of pbar, spreading samples over the sub-classes instead of collapsing onto one. It is in
    ``[-log(sum(psi)), 0]``, on MAXL's scale (not divided by log K). ``eps`` keeps the gradient finite
    at empty sub-classes.
    """
    mean = probs.mean(dim=0)
    return (mean * torch.log(mean.clamp_min(eps))).sum()


def soft_cross_entropy(logits: Tensor, target_probs: Tensor, gamma: float = 0.0) -> Tensor:
    """Per-sample cross-entropy against soft targets, ``[B]``.

    With ``gamma > 0`` it is MAXL's focal form ``-sum_j t_j (1 - p_j)^gamma log p_j``, which
    down-weights classes the model already predicts confidently; ``gamma = 0`` is plain soft CE.
    """
    log_p = F.log_softmax(logits, dim=1)
    terms = target_probs * log_p
    if gamma > 0:
        terms = terms * (1.0 - log_p.exp()).pow(gamma)
    return -terms.sum(dim=1)
