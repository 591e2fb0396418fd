"""Hypergradients for bi-level auxiliary learning: implicit (Neumann / CG / exact), unrolled,
finite-difference, plus Hessian-vector products, solvers and rules as values, a BatchNorm guard and a drop-in
outer optimizer for a user's own loop. Pure functions (and one optimizer wrapper), no Ray."""

from auxray.hypergrad.batchnorm import batch_stats_only
from auxray.hypergrad.cg import cg_solve
from auxray.hypergrad.exact import dense_hessian, exact_solve
from auxray.hypergrad.finite_difference import finite_difference_from_grad, finite_difference_hypergrad
from auxray.hypergrad.hvp import HVP_MODES, fwdrev_hvp, gradient_graph, revrev_hvp, select_hvp
from auxray.hypergrad.implicit import (
    functional_implicit_hypergrad,
    implicit_from_graph,
    implicit_hypergrad,
    mixed_term,
    outer_gradient,
)
from auxray.hypergrad.meta_optimizer import MetaOptimizer
from auxray.hypergrad.neumann import neumann_solve
from auxray.hypergrad.rules import FiniteDifference, Implicit, Rule, Unrolled, rule_for
from auxray.hypergrad.solvers import METHODS, Solver, cg_solver, exact_solver, neumann_solver, solver_for
from auxray.hypergrad.unroll import unrolled_from_graph, unrolled_hypergrad
from auxray.hypergrad.weighting import gram, matching_gradient, project_scaled_simplex, sgd_direction

__all__ = [
    "HVP_MODES",
    "METHODS",
    "FiniteDifference",
    "Implicit",
    "MetaOptimizer",
    "Rule",
    "Solver",
    "Unrolled",
    "batch_stats_only",
    "cg_solve",
    "cg_solver",
    "dense_hessian",
    "exact_solve",
    "exact_solver",
    "finite_difference_from_grad",
    "finite_difference_hypergrad",
    "functional_implicit_hypergrad",
    "fwdrev_hvp",
    "gram",
    "gradient_graph",
    "implicit_from_graph",
    "implicit_hypergrad",
    "matching_gradient",
    "mixed_term",
    "neumann_solve",
    "neumann_solver",
    "outer_gradient",
    "project_scaled_simplex",
    "revrev_hvp",
    "rule_for",
    "select_hvp",
    "sgd_direction",
    "solver_for",
    "unrolled_from_graph",
    "unrolled_hypergrad",
]
