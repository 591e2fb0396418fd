"""The method registry (auxray.method_specs) and the hypergradient as a value (auxray.train.hypergradient): every
spec builds an objective that agrees with it, nothing outside the registry names a method, and the trainer's
hypergradient is chosen once."""

from __future__ import annotations

import re

import pytest

from auxray.config import HypergradConfig, config_from_dict
from auxray.errors import UserError
from auxray.hypergrad import FiniteDifference, Implicit, Unrolled, neumann_solver
from auxray.method_settings import OuterOptimizer
from auxray.method_specs import OUTER_KEYS, SPECS, MethodSpec, defining_method, spec
from auxray.methods import build_objective
from auxray.methods.registry import objective_factory
from auxray.train.hypergradient import build_hypergradient
from tests.conftest import REPO


def _raw(method: MethodSpec) -> dict:
    return {"method": {"name": method.name, **({"aux_task": "rotation"} if method.needs_aux_task else {})}}


@pytest.mark.parametrize("name", list(SPECS))
def test_every_spec_builds_an_objective_that_agrees_with_it(name: str) -> None:
    method = spec(name)
    cfg = config_from_dict(_raw(method))
    objective = build_objective(cfg, num_classes=10, task="classification", feat_dim=8, in_channels=3)
    assert objective.name == name and objective_factory(method) is objective_factory(method)
    assert objective.learned is method.learns
    assert objective.hypergradient_steps is method.hypergradient_steps
    assert (objective.label_classes is not None) is method.learns_labels
    assert cfg.hypergrad.method == (method.default_hypergradient or "neumann")
    assert type(cfg.method) is method.settings and cfg.method.name == name
    # The methods that take outer (hypergradient) steps read every outer.* key (lower_bound only those whose phi is
    # their task weights); a fixed method reads none.
    assert set(method.outer_keys) <= set(OuterOptimizer.model_fields)
    assert (set(method.outer_keys) >= set(OUTER_KEYS)) is (method.learns and method.hypergradient_steps)
    assert bool(method.outer_keys) is method.learns
    if method.twin is not None:  # a learned or forking method's fixed twin is trained from a shipped config
        assert method.learns or method.forks
        assert (REPO / "configs" / "cifar10_5pct" / f"{method.twin}.yaml").is_file()


def test_a_method_named_by_its_hypergradient_and_unknown_names() -> None:
    assert defining_method("unroll") is spec("maxl") and defining_method("fd") is spec("maxl_fo")
    assert defining_method("neumann") is spec("auxilearn_labels")
    with pytest.raises(ValueError, match="unknown method 'nope'; choose one of stl, equal"):
        spec("nope")
    with pytest.raises(UserError, match=r"that pairing is method.name: maxl\)"):
        config_from_dict({"method": {"name": "maxl_fo"}, "hypergrad": {"method": "unroll"}})


def test_no_module_outside_the_registry_names_a_method() -> None:
    """A quoted method name appears only in the registry, in the modules its specs name, and in the two benches
    whose fixed demo problem is a loss combiner."""
    quoted = re.compile("[\"'](" + "|".join(SPECS) + ")[\"']")
    allowed = {"auxray/method_specs.py", "auxray/bench/hypergrad.py", "auxray/bench/distributed.py"}
    found = [
        f"{p.relative_to(REPO)}:{i}"
        for p in sorted((REPO / "auxray").rglob("*.py"))
        if str(p.relative_to(REPO)) not in allowed
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if quoted.search(line)
    ]
    assert not found, found


def test_the_hypergradient_is_a_value_chosen_once() -> None:
    def build(**h: object):
        return build_hypergradient(config_from_dict({"hypergrad": h}).hypergrad, mask=[True, False])

    implicit = build(method="cg", steps=4, tol=1e-3, mode="local")
    assert isinstance(implicit.rule, Implicit) and implicit.fused and implicit.mask == (True, False)
    assert implicit.rule.needs_graph and not implicit.rule.reduce_hvp
    fwdrev = build(method="neumann", hvp="fwdrev")
    assert not fwdrev.fused and not fwdrev.rule.needs_graph
    assert isinstance(build(method="unroll", unroll_lr=0.1).rule, Unrolled)
    fd = build(method="fd", fd_eps=0.5, batch_size=4)
    assert fd.rule == FiniteDifference(0.5) and not fd.fused and not fd.rule.differentiates_gradient
    assert build(reuse_graph=False).fused is False and build().lr(0.3) == 0.3
    with pytest.raises(ValueError, match="hypergrad.hvp: fwdrev applies to implicit hypergradients"):
        build_hypergradient(HypergradConfig(method="unroll", hvp="fwdrev"))  # the config rejects it; Python callers too
    solver = neumann_solver(2, 0.1)
    assert Implicit(solver, 0.0, "revrev", True, True).solver is solver
