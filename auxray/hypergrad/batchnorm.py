"""The one BatchNorm guard for hypersteps: their extra forward passes must leave running statistics alone."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def batch_stats_only(*modules: nn.Module) -> Iterator[None]:
    """Inside, every BatchNorm layer of ``modules`` in training mode normalises with the batch's own statistics
    and neither reads nor updates its running ones (``track_running_stats`` is off, and restored on exit).

    Why: the hypergradient re-evaluates the training loss (and the outer-set loss) at the same W; those passes must
    not move the running statistics a plain training step maintains, and a forward that mutates no buffer stays
    pure for torch.func transforms. Normalisation is unchanged: a training-mode forward uses batch statistics
    either way. (In eval mode the running statistics are still read, as usual, but never updated.)
    """
    bns = [m for mod in modules for m in mod.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.track_running_stats for m in bns]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, s in zip(bns, saved):
            m.track_running_stats = s
