"""Keep BatchNorm running statistics untouched by hyperstep forward passes."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def frozen_batchnorm_stats(*modules: nn.Module) -> Iterator[None]:
    """Snapshot every _BatchNorm's running_mean/running_var/num_batches_tracked; restore them in place on exit."""
    names = ("running_mean", "running_var", "num_batches_tracked")
    saved = []
    for module in modules:
        for bn in module.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                for name in names:
                    buf = getattr(bn, name, None)
                    if buf is not None:
                        saved.append((bn, name, buf.detach().clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, name, value in saved:
                current = getattr(bn, name, None)
                if current is not None and current.shape == value.shape:
                    current.copy_(value)
                else:
                    setattr(bn, name, value)
