"""Hypergradients for bi-level auxiliary learning: implicit (Neumann / CG / exact), unrolled,
finite-difference, plus Hessian-vector products and a BatchNorm guard. Pure functions, no Ray."""

from auxray.hypergrad.batchnorm import frozen_batchnorm_stats
from auxray.hypergrad.cg import cg_solve
from auxray.hypergrad.exact import dense_hessian, exact_solve
from auxray.hypergrad.finite_difference import finite_difference_from_grad, finite_difference_hypergrad
from auxray.hypergrad.hvp import HVP_MODES, fwdrev_hvp, gradient_graph, revrev_hvp, select_hvp
from auxray.hypergrad.implicit import (
    METHODS,
    functional_implicit_hypergrad,
    implicit_from_graph,
    implicit_hypergrad,
    mixed_term,
    outer_gradient,
    solve,
)
from auxray.hypergrad.neumann import neumann_solve
from auxray.hypergrad.unroll import unrolled_from_graph, unrolled_hypergrad

__all__ = [
    "HVP_MODES",
    "METHODS",
    "cg_solve",
    "dense_hessian",
    "exact_solve",
    "finite_difference_from_grad",
    "finite_difference_hypergrad",
    "frozen_batchnorm_stats",
    "functional_implicit_hypergrad",
    "fwdrev_hvp",
    "gradient_graph",
    "implicit_from_graph",
    "implicit_hypergrad",
    "mixed_term",
    "neumann_solve",
    "outer_gradient",
    "revrev_hvp",
    "select_hvp",
    "solve",
    "unrolled_from_graph",
    "unrolled_hypergrad",
]
