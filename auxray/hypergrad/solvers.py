"""Linear solvers for u ~= H^{-1} v as values: a solver is a function ``(hvp, v) -> u`` that you pass, not a name.

``neumann_solver(steps=5, alpha=0.1)``, ``cg_solver(steps=20, tol=1e-8)`` and ``exact_solver()`` build one (as
TorchOpt's ``linear_solve.solve_*`` do); any callable of that shape works as well. Configs name a solver by string
(``hypergrad.method``); :func:`solver_for` turns such a name and its settings into the value.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from auxray.hypergrad.cg import cg_solve
from auxray.hypergrad.exact import exact_solve
from auxray.hypergrad.neumann import neumann_solve
from auxray.hypergrad.vectors import HVP, Vec

Solver = Callable[[HVP, Vec], Vec]
METHODS = ("neumann", "cg", "exact")


def neumann_solver(steps: int = 3, alpha: float = 1e-2) -> Solver:
    """Truncated Neumann series with ``steps`` H-vector products and step ``alpha`` (the factor alpha included:
    auxray's convention, so it converges to H^{-1} v; AuxiLearn's code omits it)."""
    return partial(neumann_solve, steps=steps, alpha=alpha)


def cg_solver(steps: int = 10, tol: float = 1e-6) -> Solver:
    """Conjugate gradient, at most ``steps`` iterations, until ||r|| <= tol * ||v||."""
    return partial(cg_solve, steps=steps, tol=tol)


def exact_solver() -> Solver:
    """A dense solve with the full Hessian (small problems and tests only)."""
    return exact_solve


def solver_for(method: str | Solver, *, steps: int = 3, alpha: float = 1e-2, tol: float = 1e-6) -> Solver:
    """The solver a config names (``steps``, ``alpha`` and ``tol`` apply to the named one); a solver value is
    returned as it is, so every entry point accepts either."""
    if callable(method):
        return method
    if method == "neumann":
        return neumann_solver(steps, alpha)
    if method == "cg":
        return cg_solver(steps, tol)
    if method == "exact":
        return exact_solver()
    raise ValueError(f"unknown hypergradient method {method!r}; choose one of {', '.join(METHODS)}")
