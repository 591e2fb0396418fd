"""The drop-in outer optimizer: its hypergradient against ridge regression's closed form (every solver, as a
value or a name), outer steps that lower the validation loss, its state, and the README example it powers."""

from __future__ import annotations

import io
import re
import runpy
from pathlib import Path

import pytest
import torch

from auxray.hypergrad import MetaOptimizer, cg_solver, exact_solver, neumann_solver
from tests.test_hypergrad import DT, Ridge

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "meta_optimizer.py"


@pytest.fixture(scope="module")
def ridge() -> Ridge:
    return Ridge()


def _alpha(ridge: Ridge) -> float:
    return 1.0 / torch.linalg.eigvalsh(ridge.a).max().item()


def _meta(phi: tuple[torch.Tensor, ...], **kwargs: object) -> MetaOptimizer:
    return MetaOptimizer(torch.optim.SGD(phi, lr=0.1), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "solver,kwargs",
    [
        ("exact", {}),
        (exact_solver(), {}),
        ("cg", {"steps": 50, "tol": 1e-12}),
        (cg_solver(steps=50, tol=1e-12), {}),
    ],
)
def test_exact_and_cg_hypergradients_match_the_closed_form(ridge, solver, kwargs):
    inner, outer, w, phi = ridge.losses()
    (got,) = _meta(phi, solver=solver, **kwargs).hypergrad(train_loss=inner, val_loss=outer, params=w, hparams=phi)
    want = ridge.analytic()
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_neumann_error_within_its_bound_and_falling_with_depth(ridge):
    """With alpha = 1 / lambda_max, K steps leave u - H^{-1}v = -(I - alpha H)^{K+1} H^{-1} v, so the error of
    -M^T u is at most ||M|| (1 - alpha lambda_min)^{K+1} ||H^{-1} v||; it must also fall as K grows."""
    alpha = _alpha(ridge)
    lam_min = torch.linalg.eigvalsh(ridge.a).min().item()
    w_star, phi0 = ridge.w[0], ridge.phi[0]
    m_norm = (2 * phi0.exp() * w_star).abs().max().item()  # M = d(dL_T/dw)/dphi = 2 diag(exp(phi) w)
    u_norm = torch.linalg.solve(ridge.a, ridge.outer_grad(w_star)).norm().item()
    want = ridge.analytic()
    errors = []
    for k in (1, 5, 10, 30, 200):
        inner, outer, w, phi = ridge.losses()
        (got,) = _meta(phi, solver=neumann_solver(steps=k, alpha=alpha)).hypergrad(
            train_loss=inner, val_loss=outer, params=w, hparams=phi
        )
        errors.append((got - want).norm().item())
        assert errors[-1] <= m_norm * (1 - alpha * lam_min) ** (k + 1) * u_norm + 1e-12, (k, errors)
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 1e-3 * want.norm() and errors[-1] < 1e-8 * want.norm()
    inner, outer, w, phi = ridge.losses()
    (by_name,) = _meta(phi, solver="neumann", steps=5, alpha=alpha).hypergrad(
        train_loss=inner, val_loss=outer, params=w, hparams=phi
    )
    assert (by_name - want).norm().item() == pytest.approx(errors[1], rel=1e-9)


def test_a_direct_dependence_of_the_aux_loss_on_the_hyperparameters_is_added(ridge):
    inner, outer, w, phi = ridge.losses()
    (got,) = _meta(phi, solver="exact").hypergrad(
        train_loss=inner, val_loss=outer + (phi[0] ** 2).sum(), params=w, hparams=phi
    )
    torch.testing.assert_close(got, ridge.analytic() + 2 * ridge.phi[0], rtol=1e-8, atol=1e-10)


def test_step_writes_grads_clips_and_steps_the_wrapped_optimizer(ridge):
    inner, outer, w, phi = ridge.losses()
    phi[0].grad = torch.full_like(phi[0], 123.0)  # what an inner backward may have left: replaced
    start = phi[0].detach().clone()
    meta = MetaOptimizer(torch.optim.SGD(phi, lr=0.5), solver="exact", max_grad_norm=1e-3)
    (applied,) = meta.step(train_loss=inner, val_loss=outer, params=iter(w), hparams=iter(phi))
    want = ridge.analytic()
    torch.testing.assert_close(applied, want * 1e-3 / want.norm(), rtol=1e-3, atol=0)
    assert phi[0].grad is applied
    torch.testing.assert_close(phi[0].detach(), start - 0.5 * applied)
    meta.zero_grad()
    assert phi[0].grad is None


def test_positional_losses_are_refused_so_auxilearn_order_cannot_swap_them(ridge):
    inner, outer, w, phi = ridge.losses()
    meta = _meta(phi, solver="exact")
    with pytest.raises(TypeError, match="positional argument"):
        meta.step(outer, inner, w, phi)  # type: ignore[misc]  # AuxiLearn's order: step(val_loss, train_loss, ...)
    with pytest.raises(TypeError, match="positional argument"):
        meta.hypergrad(inner, outer, w, phi)  # type: ignore[misc]
    assert phi[0].grad is None  # nothing stepped


def _validation_loss(ridge: Ridge, phi: torch.Tensor) -> float:
    """L_A(w*(phi)), with the inner problem solved exactly."""
    a = 2 * ridge.x.T @ ridge.x / len(ridge.x) + 2 * torch.diag(phi.exp())
    w = torch.linalg.solve(a, 2 * ridge.x.T @ ridge.y / len(ridge.x))
    return float(ridge.outer((w,)))


def _outer_steps(ridge: Ridge, meta: MetaOptimizer, phi: torch.Tensor, n: int) -> None:
    """n outer steps, each at the exactly solved inner optimum w*(phi)."""
    for _ in range(n):
        a = 2 * ridge.x.T @ ridge.x / len(ridge.x) + 2 * torch.diag(phi.detach().exp())
        w = torch.linalg.solve(a, 2 * ridge.x.T @ ridge.y / len(ridge.x)).requires_grad_(True)
        meta.step(train_loss=ridge.inner((w,), (phi,)), val_loss=ridge.outer((w,)), params=[w], hparams=[phi])


@pytest.mark.parametrize("solver", [cg_solver(steps=20, tol=1e-10), neumann_solver(steps=20, alpha=0.2)])
def test_outer_steps_lower_the_validation_loss(ridge, solver):
    phi = ridge.phi[0].clone().requires_grad_(True)
    before = _validation_loss(ridge, phi.detach())
    _outer_steps(ridge, MetaOptimizer(torch.optim.Adam([phi], lr=0.1), solver=solver), phi, 15)
    after = _validation_loss(ridge, phi.detach())
    assert after < before - 1e-3, (before, after)


def test_state_dict_round_trips(ridge):
    phi = ridge.phi[0].clone().requires_grad_(True)
    meta = MetaOptimizer(torch.optim.Adam([phi], lr=0.05), solver="cg", steps=20, tol=1e-10)
    _outer_steps(ridge, meta, phi, 3)
    buffer = io.BytesIO()
    torch.save(meta.state_dict(), buffer)  # as a checkpoint holds it: plain tensors and numbers
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    twin_phi = phi.detach().clone().requires_grad_(True)
    twin = MetaOptimizer(torch.optim.Adam([twin_phi], lr=0.05), solver="cg", steps=20, tol=1e-10)
    twin.load_state_dict(state)
    assert twin.state_dict()["optimizer"]["state"][0]["step"] == 3
    _outer_steps(ridge, meta, phi, 2)
    _outer_steps(ridge, twin, twin_phi, 2)
    assert phi.dtype == DT and torch.equal(phi, twin_phi)


def test_readme_example_learns_to_prefer_the_helpful_auxiliary(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    weights = re.search(r"learned weights: helpful ([\d.]+), harmful ([\d.]+)", out)
    mse = re.search(r"test MSE: ([\d.]+) with learned weights, ([\d.]+) with fixed weights", out)
    assert weights and mse, out
    helpful, harmful = map(float, weights.groups())
    assert helpful > 1.0 > harmful, out  # both start at 1
    learned, fixed = map(float, mse.groups())
    assert learned < fixed, out
