"""The hypergradient a run computes, as a value built once from HypergradConfig: its rule (auxray.hypergrad.rules),
the unrolled step size, the sample cap, the parameter subset and whether it runs fused with an inner step. The
outer step calls the rule; nothing in the step reads ``hypergrad.method``."""

from __future__ import annotations

from dataclasses import dataclass

from auxray.config import HypergradConfig
from auxray.hypergrad.rules import Rule, rule_for


@dataclass(frozen=True)
class Hypergradient:
    """A run's hypergradient: the rule, the unrolled step size (None: the inner one), the most samples it uses
    (None: all), which primary parameters it differentiates through (None: all), and whether the outer step runs
    fused with an inner step (sharing its forward and backward)."""

    rule: Rule
    unroll_lr: float | None = None
    batch_size: int | None = None
    mask: tuple[bool, ...] | None = None
    fused: bool = False

    def lr(self, inner_lr: float) -> float:
        """The step size of the unrolled (and finite-difference) inner step."""
        return self.unroll_lr or inner_lr


def build_hypergradient(cfg: HypergradConfig, mask: list[bool] | tuple[bool, ...] | None = None) -> Hypergradient:
    """The hypergradient hypergrad.* describes, through the parameters ``mask`` selects (all when None). The fused
    step needs the whole batch and a rule that takes the inner step's gradient graph (see auxray.train.hyperstep)."""
    rule = rule_for(
        cfg.method,
        steps=cfg.steps,
        alpha=cfg.alpha,
        tol=cfg.tol,
        damping=cfg.damping,
        hvp=cfg.hvp,
        reduce_hvp=cfg.mode == "global",
        fd_eps=cfg.fd_eps,
    )
    fused = cfg.reuse_graph and cfg.batch_size is None and rule.fuses
    return Hypergradient(rule, cfg.unroll_lr, cfg.batch_size, tuple(mask) if mask is not None else None, fused)
