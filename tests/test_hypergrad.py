"""Hypergradient maths: closed forms, exact references, HVP modes, APIs, hooks and guards."""

from __future__ import annotations

import math
import time

import pytest
import torch

from auxray.hypergrad import (
    cg_solve,
    finite_difference_hypergrad,
    functional_implicit_hypergrad,
    fwdrev_hvp,
    gradient_graph,
    implicit_hypergrad,
    neumann_solve,
    revrev_hvp,
    select_hvp,
    unrolled_hypergrad,
)

DT = torch.float64


# ---------------------------------------------------------------- ridge regression (closed form)


class Ridge:
    """L_T = ||Xw - y||^2 / n + sum(exp(phi) w^2), L_A = ||Xv w - yv||^2 / m, solved exactly."""

    def __init__(self, seed: int = 0, n: int = 40, m: int = 30, d: int = 5) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, d, generator=g, dtype=DT)
        self.y = torch.randn(n, generator=g, dtype=DT)
        self.xv = torch.randn(m, d, generator=g, dtype=DT)
        self.yv = torch.randn(m, generator=g, dtype=DT)
        self.phi = (0.3 * torch.randn(d, generator=g, dtype=DT) - 1.0,)
        n_ = self.x.shape[0]
        self.a = 2 * self.x.T @ self.x / n_ + 2 * torch.diag(self.phi[0].exp())
        self.w = (torch.linalg.solve(self.a, 2 * self.x.T @ self.y / n_),)

    def inner(self, w, phi):
        return ((self.x @ w[0] - self.y) ** 2).mean() + (phi[0].exp() * w[0] ** 2).sum()

    def outer(self, w):
        return ((self.xv @ w[0] - self.yv) ** 2).mean()

    def outer_grad(self, w):
        return 2 * self.xv.T @ (self.xv @ w - self.yv) / self.xv.shape[0]

    def analytic(self):
        """dL_A(w*(phi))/dphi_k = -2 exp(phi_k) w*_k (A^{-1} v)_k."""
        w = self.w[0]
        return -2 * self.phi[0].exp() * w * torch.linalg.solve(self.a, self.outer_grad(w))

    def losses(self):
        w = tuple(t.clone().requires_grad_(True) for t in self.w)
        phi = tuple(t.clone().requires_grad_(True) for t in self.phi)
        return self.inner(w, phi), self.outer(w), w, phi


@pytest.fixture(scope="module")
def ridge():
    return Ridge()


@pytest.mark.parametrize(
    "method,kwargs",
    [("exact", {}), ("cg", {"steps": 50, "tol": 1e-12}), ("neumann", {"steps": 600})],
)
def test_ridge_matches_closed_form(ridge, method, kwargs):
    lam = torch.linalg.eigvalsh(ridge.a)
    alpha = 1.0 / lam.max().item()
    inner, outer, w, phi = ridge.losses()
    (got,) = implicit_hypergrad(inner, outer, w, phi, method=method, alpha=alpha, **kwargs)
    want = ridge.analytic()
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_neumann_without_enough_steps_is_not_exact(ridge):
    alpha = 1.0 / torch.linalg.eigvalsh(ridge.a).max().item()
    inner, outer, w, phi = ridge.losses()
    (got,) = implicit_hypergrad(inner, outer, w, phi, method="neumann", steps=1, alpha=alpha)
    assert (got - ridge.analytic()).norm() > 1e-3 * ridge.analytic().norm()


def test_ridge_unroll_matches_hand_derived_step(ridge):
    lr = 0.05
    w, phi = ridge.w[0] + 0.1, ridge.phi[0]
    grad = 2 * ridge.x.T @ (ridge.x @ w - ridge.y) / ridge.x.shape[0] + 2 * phi.exp() * w
    w1 = w - lr * grad
    want = -lr * 2 * phi.exp() * w * ridge.outer_grad(w1)
    (got,) = unrolled_hypergrad(ridge.inner, ridge.outer, (w,), (phi,), lr=lr)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- small MLP against full Hessians


class TinyMLP:
    """tanh MLP (4 -> 5 -> 1, 31 params, float64); phi = log weight decay per parameter tensor."""

    shapes = [(5, 4), (5,), (1, 5), (1,)]

    def __init__(self, seed: int = 0, fit: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(32, 4, generator=g, dtype=DT)
        self.y = torch.sin(self.x.sum(1, keepdim=True))
        self.xv = torch.randn(24, 4, generator=g, dtype=DT)
        self.yv = torch.sin(self.xv.sum(1, keepdim=True))
        self.phi = (torch.full((4,), math.log(0.05), dtype=DT) + 0.2 * torch.randn(4, generator=g, dtype=DT),)
        self.w = tuple(0.5 * torch.randn(s, generator=g, dtype=DT) for s in self.shapes)
        if fit:
            self.w = self._fit()

    @staticmethod
    def net(w, x):
        return torch.tanh(x @ w[0].T + w[1]) @ w[2].T + w[3]

    def inner(self, w, phi):
        decay = sum(phi[0][i].exp() * (t**2).sum() for i, t in enumerate(w))
        return ((self.net(w, self.x) - self.y) ** 2).mean() + decay

    def outer(self, w):
        return ((self.net(w, self.xv) - self.yv) ** 2).mean()

    def _fit(self):
        w = [t.clone().requires_grad_(True) for t in self.w]
        opt = torch.optim.LBFGS(
            w, lr=1.0, max_iter=300, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe"
        )

        def closure():
            opt.zero_grad()
            loss = self.inner(w, self.phi)
            loss.backward()
            return loss

        opt.step(closure)
        return tuple(t.detach() for t in w)

    def reference(self):
        """-M^T H^{-1} v from torch.autograd.functional.hessian over the flat (W, phi) vector."""
        sizes = [math.prod(s) for s in self.shapes]
        nw = sum(sizes)

        def split(z):
            parts, i = [], 0
            for s, k in zip(self.shapes, sizes):
                parts.append(z[i : i + k].view(s))
                i += k
            return tuple(parts), (z[nw:],)

        z = torch.cat([t.reshape(-1) for t in self.w] + [self.phi[0]])
        full = torch.autograd.functional.hessian(lambda z: self.inner(*split(z)), z)
        h, m = full[:nw, :nw], full[:nw, nw:]
        v = torch.autograd.functional.jacobian(lambda zw: self.outer(split(torch.cat([zw, self.phi[0]]))[0]), z[:nw])
        return -m.T @ torch.linalg.solve(h, v), h

    def leaves(self):
        w = tuple(t.clone().requires_grad_(True) for t in self.w)
        return w, tuple(t.clone().requires_grad_(True) for t in self.phi)


@pytest.fixture(scope="module")
def mlp():
    problem = TinyMLP()
    ref, h = problem.reference()
    eig = torch.linalg.eigvalsh(h)
    assert eig.min() > 0, "fitted MLP must sit at a strict minimum"
    return problem, ref, 1.0 / eig.max().item()


def _tensor_api(problem, **kwargs):
    w, phi = problem.leaves()
    return implicit_hypergrad(problem.inner(w, phi), problem.outer(w), w, phi, **kwargs)


def test_mlp_exact_and_cg_match_full_hessian(mlp):
    problem, ref, _ = mlp
    (exact,) = _tensor_api(problem, method="exact")
    (cg,) = _tensor_api(problem, method="cg", steps=200, tol=1e-12)
    torch.testing.assert_close(exact, ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(cg, ref, rtol=1e-6, atol=1e-8)


def test_mlp_neumann_error_decreases_with_depth(mlp):
    problem, ref, alpha = mlp
    errors = [
        (_tensor_api(problem, method="neumann", steps=k, alpha=alpha)[0] - ref).norm().item() for k in (1, 5, 20, 100)
    ]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0]


def test_revrev_and_fwdrev_hvps_agree():
    problem = TinyMLP(fit=False)
    w, phi = problem.leaves()
    vec = tuple(torch.randn_like(t) for t in w)
    rr = revrev_hvp(gradient_graph(problem.inner(w, phi), w), w)(vec)
    fr = fwdrev_hvp(problem.inner, w, phi)(vec)
    assert any(t.abs().max() > 1e-3 for t in rr)
    for a, b in zip(rr, fr):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["neumann", "cg", "exact"])
@pytest.mark.parametrize("hvp", ["revrev", "fwdrev", "auto"])
def test_functional_api_matches_tensor_api(mlp, method, hvp):
    problem, _, alpha = mlp
    kw = dict(method=method, steps=10, alpha=alpha, tol=1e-10, damping=0.01)
    (want,) = _tensor_api(problem, **kw)
    (got,) = functional_implicit_hypergrad(problem.inner, problem.outer, problem.w, problem.phi, hvp=hvp, **kw)
    assert want.abs().max() > 1e-6
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_damping_shifts_the_solve(mlp):
    problem, ref, _ = mlp
    (undamped,) = _tensor_api(problem, method="exact")
    (damped,) = _tensor_api(problem, method="exact", damping=1.0)
    assert (undamped - damped).norm() > 1e-3 * undamped.norm()


def test_select_hvp_resolves_and_rejects():
    assert select_hvp("auto") == "revrev"  # the README: auto picks reverse-over-reverse, measured faster on CPU
    assert select_hvp("fwdrev") == "fwdrev"
    with pytest.raises(ValueError, match="unknown hvp mode 'nope'; choose one of "):
        select_hvp("nope")
    with pytest.raises(ValueError, match="unknown hypergradient method 'nope'; choose one of "):
        _tensor_api(TinyMLP(fit=False), method="nope")


# ---------------------------------------------------------------- unroll and finite difference


def test_unroll_matches_explicit_sgd_step():
    problem = TinyMLP(fit=False)
    lr = 0.1
    w, phi = problem.leaves()
    grads = torch.autograd.grad(problem.inner(w, phi), w, create_graph=True)
    w1 = [w[0] - lr * grads[0], w[1] - lr * grads[1], w[2] - lr * grads[2], w[3] - lr * grads[3]]
    (want,) = torch.autograd.grad(problem.outer(w1), phi)
    (got,) = unrolled_hypergrad(problem.inner, problem.outer, problem.w, problem.phi, lr=lr)
    assert want.abs().max() > 1e-6
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("lr", [1e-3, 1e-2])
def test_finite_difference_close_to_unroll(lr):
    problem = TinyMLP(fit=False)
    (unroll,) = unrolled_hypergrad(problem.inner, problem.outer, problem.w, problem.phi, lr=lr)
    (fd,) = finite_difference_hypergrad(problem.inner, problem.outer, problem.w, problem.phi, lr=lr)
    cosine = torch.nn.functional.cosine_similarity(unroll, fd, dim=0)
    assert cosine > 0.99
    torch.testing.assert_close(fd, unroll, rtol=1e-3, atol=1e-3 * unroll.abs().max().item())


# ---------------------------------------------------------------- zeros, generators, guards, hooks


def _with_untouched():
    """A problem with an extra param neither loss reads, a head only L_T reads, and an unused hparam."""
    problem = TinyMLP(fit=False)
    w, phi = problem.leaves()
    head = torch.randn(3, dtype=DT, requires_grad=True)
    dead = torch.randn(2, dtype=DT, requires_grad=True)
    unused_phi = torch.randn(4, dtype=DT, requires_grad=True)
    params, hparams = (*w, head, dead), (*phi, unused_phi)

    def inner_fn(p, h):
        return problem.inner(p[:4], h[:1]) + (p[4] ** 2).sum()

    def outer_fn(p):
        return problem.outer(p[:4])

    return inner_fn, outer_fn, params, hparams


@pytest.mark.parametrize("method", ["neumann", "cg", "exact"])
def test_untouched_params_and_hparams_give_zeros(method):
    inner_fn, outer_fn, params, hparams = _with_untouched()
    out = implicit_hypergrad(
        inner_fn(params, hparams), outer_fn(params), (p for p in params), (h for h in hparams), method=method, steps=5
    )
    assert len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)
    assert out[0].abs().max() > 0 and torch.isfinite(out[0]).all()
    assert out[1].shape == hparams[1].shape and torch.equal(out[1], torch.zeros_like(hparams[1]))


@pytest.mark.parametrize(
    "fn",
    [
        lambda i, o, p, h: functional_implicit_hypergrad(i, o, iter(p), iter(h), hvp="fwdrev", steps=3),
        lambda i, o, p, h: unrolled_hypergrad(i, o, iter(p), iter(h), lr=0.1),
        lambda i, o, p, h: finite_difference_hypergrad(i, o, iter(p), iter(h), lr=0.1),
    ],
    ids=["functional", "unroll", "finite_difference"],
)
def test_functional_forms_zero_fill_and_accept_generators(fn):
    inner_fn, outer_fn, params, hparams = _with_untouched()
    out = fn(inner_fn, outer_fn, params, hparams)
    assert out[0].abs().max() > 0
    assert torch.equal(out[1], torch.zeros_like(hparams[1]))


def test_cg_with_zero_rhs_gives_zeros_not_nan():
    problem = TinyMLP(fit=False)
    w, phi = problem.leaves()
    out = implicit_hypergrad(problem.inner(w, phi), (w[0] * 0).sum(), w, phi, method="cg", steps=5)
    assert torch.equal(out[0], torch.zeros_like(phi[0]))
    w, phi = problem.leaves()
    out = implicit_hypergrad(problem.inner(w, phi), torch.zeros((), dtype=DT), w, phi, method="cg", steps=5)
    assert torch.equal(out[0], torch.zeros_like(phi[0]))
    hvp = lambda vec: tuple(2 * t for t in vec)  # noqa: E731
    u = cg_solve(hvp, (torch.zeros(3, dtype=DT),), steps=4, tol=1e-6)
    assert torch.equal(u[0], torch.zeros(3, dtype=DT))


def test_cg_stops_early_without_nan():
    hvp = lambda vec: tuple(3 * t for t in vec)  # noqa: E731
    v = (torch.tensor([1.0, -2.0, 0.5], dtype=DT),)
    (u,) = cg_solve(hvp, v, steps=50, tol=0.0)
    torch.testing.assert_close(u, v[0] / 3)


def test_neumann_solve_matches_series_by_hand():
    h = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=DT)
    v = torch.tensor([1.0, -1.0], dtype=DT)
    alpha, k = 0.3, 4
    want = alpha * sum(torch.linalg.matrix_power(torch.eye(2, dtype=DT) - alpha * h, j) @ v for j in range(k + 1))
    (got,) = neumann_solve(lambda vec: (h @ vec[0],), (v,), steps=k, alpha=alpha)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reduce_hvp,expected", [(True, 3 + 2), (False, 2)])
def test_reduce_hook_call_count_and_identity(reduce_hvp, expected):
    problem = TinyMLP(fit=False)
    calls = []

    def reduce(vec):
        calls.append(len(vec))
        return tuple(t.clone() for t in vec)

    w, phi = problem.leaves()
    (got,) = implicit_hypergrad(
        problem.inner(w, phi), problem.outer(w), w, phi, steps=3, reduce=reduce, reduce_hvp=reduce_hvp
    )
    (want,) = _tensor_api(problem, steps=3)
    assert len(calls) == expected
    torch.testing.assert_close(got, want)
    calls.clear()
    functional_implicit_hypergrad(
        problem.inner,
        problem.outer,
        problem.w,
        problem.phi,
        steps=3,
        hvp="fwdrev",
        reduce=reduce,
        reduce_hvp=reduce_hvp,
    )
    assert len(calls) == expected


def test_reduce_hook_uses_global_hessian():
    """reduce = (x -> c x) turns v into c v, H into c H and scales the mixed term by c, so the result
    equals c times the plain hypergradient with Neumann step alpha * c."""
    problem = TinyMLP(fit=False)
    c = 2.0
    w, phi = problem.leaves()
    (scaled,) = implicit_hypergrad(
        problem.inner(w, phi),
        problem.outer(w),
        w,
        phi,
        steps=4,
        alpha=0.01,
        reduce=lambda vec: tuple(c * t for t in vec),
    )
    (plain,) = _tensor_api(problem, steps=4, alpha=0.01 * c)
    torch.testing.assert_close(scaled, c * plain)


# ---------------------------------------------------------------- benchmark smoke test


def test_bench_runs_and_agrees_with_naive_baseline():
    """Each case timed once: all timings fit in the wall clock around the call; ratios and speedups are quotients."""
    import json

    from auxray.bench.hypergrad import run_hypergrad_bench

    t0 = time.perf_counter()
    out = run_hypergrad_bench(backbones=("convnet4",), ks=(1,), batch_size=4, repeats=1, width=4)
    wall = time.perf_counter() - t0
    json.dumps(out)
    (bb,) = out["backbones"]
    results = {(r["method"], r["hvp"]): r for r in bb["results"]}
    assert set(results) == {
        ("neumann", "revrev"),
        ("neumann", "fwdrev"),
        ("cg", "revrev"),
        ("naive_neumann", "revrev"),
        ("unroll", None),
        ("finite_difference", None),
    }
    plain = bb["plain_step"]["seconds"]
    assert plain > 0 and bb["plain_step"]["min_seconds"] == plain  # one timed run: its median is its minimum
    for r in results.values():
        assert r["seconds"] > 0 and r["min_seconds"] == r["seconds"]
        assert r["ratio_to_plain_step"] == pytest.approx(r["seconds"] / plain)
    assert plain + sum(r["seconds"] for r in results.values()) < wall
    naive = results["naive_neumann", "revrev"]["seconds"]
    assert bb["speedup_vs_naive"] == {
        "1": {mode: pytest.approx(naive / results["neumann", mode]["seconds"]) for mode in ("revrev", "fwdrev")}
    }
    assert bb["naive_vs_auxray_max_rel_diff"] < 1e-4
    with pytest.raises(ValueError, match=r"unknown methods \['bogus'\]; choose from neumann, cg"):
        run_hypergrad_bench(methods=("bogus",))
