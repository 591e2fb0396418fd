"""A drop-in outer optimizer for your own training loop, used the way AuxiLearn's ``MetaOptimizer`` is.

Wrap any torch optimizer over the hyperparameters phi (a loss-weighting module, an auxiliary-label network...);
every few inner steps hand it the training (inner) loss L_T(W, phi) and the held-out (outer) loss L_A(W) at the
current W, by name: ``step(train_loss=..., val_loss=..., params=..., hparams=...)``. The arguments are keyword-only
because AuxiLearn's ``step(val_loss, train_loss, aux_params, parameters)`` takes them in another order, and code
ported positionally would silently swap the two losses.
It computes the implicit hypergradient dL_A/dphi with :func:`auxray.hypergrad.implicit_from_graph`, the same
code auxray's trainer runs, writes it into phi's ``.grad`` and steps the wrapped optimizer::

    phi = list(weighting.parameters())
    meta_opt = MetaOptimizer(torch.optim.Adam(phi, lr=1e-2), solver=neumann_solver(3, 0.01))
    ...
    train_loss = main_loss + weighting(aux_losses)
    train_loss.backward(retain_graph=outer_step)
    if outer_step:  # after the inner backward, before the inner optimizer's step moves W
        meta_opt.step(train_loss=train_loss, val_loss=val_loss, params=model.parameters(), hparams=phi)
    optimizer.step()

Both optimizers update tensors in place, so the hypergradient must be taken while the graphs still hold:
after the inner backward (which keeps its graph) and before either ``step`` (``examples/meta_optimizer.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from auxray.hypergrad.hvp import gradient_graph
from auxray.hypergrad.implicit import implicit_from_graph, outer_gradient
from auxray.hypergrad.solvers import Solver


class MetaOptimizer:
    """Steps ``optimizer`` (over the hyperparameters) along the implicit hypergradient of an auxiliary-set loss.

    ``solver``: a solver value (``neumann_solver(steps, alpha)``, ``cg_solver(steps, tol)``, ``exact_solver()``
    or any ``(hvp, v) -> u``), or its name (``"neumann"``, ``"cg"``, ``"exact"``) set by ``steps``, ``alpha``
    and ``tol``. ``damping`` solves with H + damping I. ``max_grad_norm`` clips the hypergradient's total norm
    before the step (AuxiLearn clips at 10), None for no clipping.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        solver: str | Solver = "neumann",
        steps: int = 3,
        alpha: float = 1e-2,
        tol: float = 1e-6,
        damping: float = 0.0,
        max_grad_norm: float | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.solver, self.steps, self.alpha, self.tol = solver, steps, alpha, tol
        self.damping, self.max_grad_norm = damping, max_grad_norm

    def hypergrad(
        self, *, train_loss: Tensor, val_loss: Tensor, params: Iterable[Tensor], hparams: Iterable[Tensor]
    ) -> tuple[Tensor, ...]:
        """dL_A/dphi = -M^T H^{-1} dL_A/dW + the direct dL_A/dphi, changing nothing.

        ``train_loss`` (inner, L_T) must reach ``params`` (W) and ``hparams`` (phi) through its graph, ``val_loss``
        (outer, held-out, L_A) reaches W
        (and phi, if it depends on it directly). Parameters neither loss reaches get zeros. Both graphs are kept,
        so the caller may still backpropagate through them afterwards.
        """
        params, hparams = tuple(params), tuple(hparams)
        with torch.enable_grad():
            grads = gradient_graph(train_loss, params)
            v = outer_gradient(val_loss, params)
            return implicit_from_graph(
                grads,
                v,
                params,
                hparams,
                method=self.solver,
                steps=self.steps,
                alpha=self.alpha,
                tol=self.tol,
                damping=self.damping,
                direct=val_loss,
            )

    def step(
        self, *, train_loss: Tensor, val_loss: Tensor, params: Iterable[Tensor], hparams: Iterable[Tensor]
    ) -> list[Tensor]:
        """Write the hypergradient into each hyperparameter's ``.grad`` (replacing what is there, e.g. what the
        inner backward left), clip it if asked, step the wrapped optimizer; returns the gradients it applied."""
        hparams = tuple(hparams)
        grads = self.hypergrad(train_loss=train_loss, val_loss=val_loss, params=params, hparams=hparams)
        applied = [g.clone() for g in grads]
        for h, g in zip(hparams, applied):
            h.grad = g
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(hparams, self.max_grad_norm)
        self.optimizer.step()
        return applied

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the wrapped optimizer's gradients."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state (what a checkpoint needs to resume the outer optimisation)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.optimizer.load_state_dict(state["optimizer"])
