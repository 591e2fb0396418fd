"""Solvers are values: a built solver gives what its name gives, through every entry point; any callable works."""

from __future__ import annotations

import pytest
import torch

from auxray.hypergrad import cg_solver, exact_solver, functional_implicit_hypergrad, neumann_solver, solver_for
from tests.test_hypergrad import TinyMLP, _tensor_api


@pytest.fixture(scope="module")
def problem() -> TinyMLP:
    """A tanh MLP fitted to its inner minimum (so H is positive definite)."""
    return TinyMLP()


@pytest.mark.parametrize(
    "name,solver", [("neumann", neumann_solver(7, 0.05)), ("cg", cg_solver(7, 1e-10)), ("exact", exact_solver())]
)
def test_a_solver_value_equals_the_named_solver(problem, name, solver):
    (want,) = _tensor_api(problem, method=name, steps=7, alpha=0.05, tol=1e-10)
    (got,) = _tensor_api(problem, method=solver)
    (functional,) = functional_implicit_hypergrad(
        problem.inner, problem.outer, problem.w, problem.phi, method=solver, hvp="fwdrev"
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(functional, want, rtol=1e-9, atol=1e-12)


def test_any_callable_is_a_solver_and_unknown_names_fail():
    calls = []

    def scaled_identity(hvp, v):
        calls.append(1)
        return tuple(0.5 * t for t in v)

    assert solver_for(scaled_identity) is scaled_identity
    unfitted = TinyMLP(fit=False)
    (got,) = _tensor_api(unfitted, method=scaled_identity)
    (neumann0,) = _tensor_api(unfitted, method="neumann", steps=0, alpha=0.5)  # u = alpha v
    assert calls == [1]
    torch.testing.assert_close(got, neumann0)
    with pytest.raises(ValueError, match="unknown hypergradient method"):
        solver_for("bogus")
