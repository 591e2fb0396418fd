"""Seeded, stratified few-label splits: labelled subset -> train / outer / val, plus an optional test subset."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SplitIndices:
    """Row indices (sorted int64) into the training pool (train, outer, val) and into the test set (test)."""

    train: Tensor
    outer: Tensor
    val: Tensor
    test: Tensor


def _groups(labels: Tensor | None, n: int) -> list[Tensor]:
    """Indices of each class in order of class id; one group for unlabelled (regression) data."""
    if labels is None or labels.is_floating_point():
        return [torch.arange(n)]
    return [torch.nonzero(labels == c).flatten() for c in torch.unique(labels).tolist()]


def labeled_count(n_class: int, fraction: float | None, per_class: int | None) -> int:
    """How many labelled examples a class of `n_class` contributes; `per_class` wins over `fraction`."""
    if per_class is not None:
        return min(per_class, n_class)
    if fraction is None:
        return n_class
    return min(n_class, max(1, round(fraction * n_class)))


def few_label_splits(
    labels: Tensor | None,
    n: int,
    *,
    labeled_fraction: float | None,
    labeled_per_class: int | None,
    outer_fraction: float,
    val_fraction: float,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """(train, outer, val) indices: a stratified labelled subset, with the outer set and val carved out of it per
    class."""
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[Tensor]] = [[], [], []]
    for idx in _groups(labels, n):
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = labeled_count(len(idx), labeled_fraction, labeled_per_class)
        n_outer = min(round(outer_fraction * k), max(k - 1, 0))
        n_val = min(round(val_fraction * k), max(k - 1 - n_outer, 0))
        parts[1].append(idx[:n_outer])
        parts[2].append(idx[n_outer : n_outer + n_val])
        parts[0].append(idx[n_outer + n_val : k])
    train, outer, val = (torch.cat(p).sort().values if p else torch.empty(0, dtype=torch.long) for p in parts)
    return train, outer, val


def limit_test_set(labels: Tensor | None, n: int, limit: int | None) -> Tensor:
    """The first `limit` test indices, stratified: about limit / n_classes of each class, in file order."""
    if limit is None or limit >= n:
        return torch.arange(n)
    groups = _groups(labels, n)
    base, extra = divmod(limit, len(groups))
    quotas = [base + (i < extra) for i in range(len(groups))]
    short = sum(max(q - len(g), 0) for q, g in zip(quotas, groups))
    picked = [g[:q] for q, g in zip(quotas, groups)]
    if short:
        taken = torch.cat(picked)
        rest = torch.ones(n, dtype=torch.bool)
        rest[taken] = False
        picked.append(torch.nonzero(rest).flatten()[:short])
    return torch.cat(picked).sort().values


def make_splits(
    train_labels: Tensor | None,
    n_train: int,
    test_labels: Tensor | None,
    n_test: int,
    *,
    labeled_fraction: float | None,
    labeled_per_class: int | None,
    outer_fraction: float,
    val_fraction: float,
    test_limit: int | None,
    seed: int,
) -> SplitIndices:
    """All four index sets; the same seed always gives the same indices."""
    train, outer, val = few_label_splits(
        train_labels,
        n_train,
        labeled_fraction=labeled_fraction,
        labeled_per_class=labeled_per_class,
        outer_fraction=outer_fraction,
        val_fraction=val_fraction,
        seed=seed,
    )
    return SplitIndices(train, outer, val, limit_test_set(test_labels, n_test, test_limit))


def stratified_holdout(labels: Tensor, fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(kept, held-out) sorted indices, holding out `fraction` of every class at random."""
    gen = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for idx in _groups(labels, len(labels)):
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = min(round(fraction * len(idx)), max(len(idx) - 1, 0))
        held.append(idx[:k])
        kept.append(idx[k:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values
