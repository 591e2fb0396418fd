"""A net's main-task metrics on one split, summed across data-parallel workers: loss and accuracy for
classification, loss and MSE for regression."""

from __future__ import annotations

import torch
from torch import nn

from auxray.data import BatchIterator, TensorData
from auxray.methods import main_loss, main_target
from auxray.train.collective import Collective


@torch.no_grad()
def evaluate_split(
    net: nn.Module,
    data: TensorData,
    *,
    task: str,
    batch_size: int,
    collective: Collective,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, float]:
    """The main loss (and accuracy or MSE) of `net` on this worker's shard of `data`, summed over every worker, in
    eval mode (train mode is restored after)."""
    net.eval()
    it = BatchIterator(
        data,
        batch_size,
        shuffle=False,
        seed=0,
        rank=collective.rank,
        world_size=collective.world_size,
        drop_last=False,
        augment=False,
        device=device,
    )
    total = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in it:
        x = x.to(device, dtype)
        y = y.to(device, dtype) if y.is_floating_point() else y.to(device)
        logits = net(x)["main"]
        target = main_target(y, task)
        loss = main_loss(logits, target, task)
        correct = (logits.argmax(-1) == target).sum() if task == "classification" else 0
        total += torch.tensor([float(loss.sum()), float(correct), len(target)], dtype=torch.float64, device=device)
    total = collective.all_reduce_sum(total)
    n = max(float(total[2]), 1.0)
    net.train()
    if task == "regression":
        return {"loss": float(total[0]) / n, "mse": float(total[0]) / n}
    return {"loss": float(total[0]) / n, "accuracy": float(total[1]) / n}
