"""Learn how much each auxiliary loss should count, inside your own PyTorch training loop.

A small network predicts a main regression target from noisy labels, with two auxiliary targets on the same
inputs: a *helpful* one (the main signal, measured precisely) and a *harmful* one (an unrelated signal that
competes for the shared features). A weighting module combines the auxiliary losses with learned positive
weights. Every few inner SGD steps, auxray's ``MetaOptimizer`` moves those weights along the implicit
hypergradient of the main loss on held-out data (AuxiLearn's outer step), so the helpful auxiliary ends up
weighted above the harmful one, and the main task generalises better than with fixed weights.

    uv run python examples/meta_optimizer.py      # a few seconds on a CPU
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auxray.hypergrad import MetaOptimizer, neumann_solver

DIM = 20


def make_data(n: int, gen: torch.Generator, w: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """x ~ N(0, I); y's columns: main = tanh(x.w) + noise 1.0, helpful = tanh(x.w) + noise 0.1,
    harmful = 3 tanh(x.u) + noise 0.5."""
    x = torch.randn(n, DIM, generator=gen)
    signal = torch.tanh(x @ w)
    y = torch.stack([signal, signal, 3 * torch.tanh(x @ u)], dim=1)
    return x, y + torch.randn(n, 3, generator=gen) * torch.tensor([1.0, 0.1, 0.5])


class LossWeights(nn.Module):
    """sum_k softplus(raw_k) * aux_loss_k: one positive weight per auxiliary loss, starting at 1."""

    def __init__(self, n_aux: int) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.full((n_aux,), 0.5413))  # softplus(0.5413) = 1

    def weights(self) -> Tensor:
        return F.softplus(self.raw)

    def forward(self, aux_losses: Tensor) -> Tensor:
        return (self.weights() * aux_losses).sum()


def task_losses(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per task: [main, helpful, harmful]."""
    return ((model(x) - y) ** 2).mean(dim=0)


def train(learn_weights: bool, steps: int = 800, every: int = 10, seed: int = 0) -> tuple[list[float], float]:
    """Train the network with learned (or fixed) auxiliary weights; returns the weights and the main test MSE."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    w = 2 * torch.randn(DIM, generator=gen) / DIM**0.5  # the main (and helpful) signal's direction
    u = 2 * torch.randn(DIM, generator=gen) / DIM**0.5  # the harmful auxiliary's
    x_train, y_train = make_data(200, gen, w, u)
    x_aux, y_aux = make_data(100, gen, w, u)  # held-out main labels: the outer (meta) loss
    x_test, y_test = make_data(2000, gen, w, u)
    # A narrow shared layer, so the tasks compete for the same features; one output per task.
    model = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, 2), nn.ReLU(), nn.Linear(2, 3))
    weighting = LossWeights(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    meta_opt = MetaOptimizer(
        torch.optim.Adam(weighting.parameters(), lr=0.1), solver=neumann_solver(steps=3, alpha=0.01)
    )
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x_train), (32,), generator=gen)
        losses = task_losses(model, x_train[idx], y_train[idx])
        train_loss = losses[0] + weighting(losses[1:])
        outer_step = learn_weights and step % every == 0
        opt.zero_grad()
        train_loss.backward(retain_graph=outer_step)  # the outer step differentiates this graph again
        if outer_step:  # at the model's current weights: before opt.step() changes them
            val_loss = task_losses(model, x_aux, y_aux)[0]
            meta_opt.step(
                train_loss=train_loss, val_loss=val_loss, params=model.parameters(), hparams=weighting.parameters()
            )
        opt.step()
    with torch.no_grad():
        test_mse = float(task_losses(model, x_test, y_test)[0])
    return weighting.weights().tolist(), test_mse


def main() -> None:
    (helpful, harmful), learned_mse = train(learn_weights=True)
    _, fixed_mse = train(learn_weights=False)
    print(f"learned weights: helpful {helpful:.2f}, harmful {harmful:.2f}")
    print(f"main-task test MSE: {learned_mse:.3f} with learned weights, {fixed_mse:.3f} with fixed weights (1, 1)")


if __name__ == "__main__":
    main()
