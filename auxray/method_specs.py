"""The method registry: one spec per method, pure data, in the base layer so the config validator can read it.

A spec names its objective factory by import path (``auxray.methods.<module>:<factory>``); ``auxray.methods``
resolves it, so this module imports no torch and sits below every layer that builds objectives. Adding a method
is one module under ``auxray/methods`` and one line in ``SPECS``; nothing else names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from auxray.method_settings import (
    CombinerSettings,
    FixedWeightSettings,
    ForkedGradientMatchingSettings,
    ForkMergeSettings,
    GivenTaskSettings,
    GradientMatchingSettings,
    LabelSettings,
    LookAheadSettings,
    MethodSettings,
    OuterOptimizer,
    TaskImportanceSettings,
)

HypergradMethod = Literal["neumann", "cg", "exact", "unroll", "fd"]
# The outer: section's keys, the optimizer of phi's outer steps, that every learned method reads; lower_bound only
# a method whose phi is its task weights (a bound on a network's parameters would mean nothing).
BOUND_KEY = "lower_bound"
OUTER_KEYS = tuple(k for k in OuterOptimizer.model_fields if k != BOUND_KEY)


@dataclass(frozen=True)
class Published:
    """A method's number in AuxiLearn (Navon et al., ICLR 2021), "learning auxiliary labels", CIFAR-10 with 5% of the
    labels: the paper's name for it and its test accuracy in percent, mean and std over seeds."""

    label: str
    mean: float
    std: float


@dataclass(frozen=True)
class MethodSpec:
    """What the config, the trainer and the benches need to know about one method."""

    name: str
    objective: str  # "module:factory" building its Objective (see auxray.methods.registry)
    settings: type[MethodSettings] = GivenTaskSettings  # its method: section (auxray.method_settings)
    learns: bool = False  # an aux net trained by the hypergradient (bi-level); a learned method has a fixed twin
    needs_aux_task: bool = False  # weighs given auxiliary tasks, so method.aux_task must name one
    learns_labels: bool = False  # generates auxiliary labels from the main label: no aux task, no unlabelled pool
    uses_pool: bool = True  # trains on unlabelled images when data.unlabeled gives some (STL ignores them)
    forks: bool = False  # its task weights are chosen by forking, training and merging branches (train.forkmerge)
    # The hypergradients that define the method, its default first (empty: any hypergrad.method), and how the
    # validator's message words them.
    hypergradients: tuple[HypergradMethod, ...] = ()
    hypergradient_words: str = ""
    # The config a fixed twin is trained from (a learned or forking method's): a fixed method, or this one frozen.
    twin: str | None = None
    baseline: bool = False  # the single-task baseline: the reproduction's time unit and reference line
    in_table: bool = True  # a row of the reproduction table by default (equal is trained as a twin only)
    paper: Published | None = None
    # Its look-ahead steps along the inner SGD's own direction (momentum, weight decay): trainer.optimizer sgd only.
    inner_sgd: bool = False
    # A learned method's weights move by the loop's outer steps (hypergradients); False: its gradient rule moves them
    # inside W's backward (ARML), so it has no outer step to time or hypergradient to compare.
    hypergradient_steps: bool = True
    outer_keys: tuple[str, ...] = ()  # the outer.* keys it reads (a learned method's; the rest must stay default)

    @property
    def default_hypergradient(self) -> HypergradMethod | None:
        """The hypergrad.method this method picks when none is given (None: the config's default)."""
        return self.hypergradients[0] if self.hypergradients else None

    @property
    def twin_is_frozen(self) -> bool:
        """Whether the fixed twin is this kind of method with hypergrad.enabled: false (else a fixed method)."""
        return self.twin is not None and spec(self.twin).learns


def _given(
    name: str,
    *,
    learns: bool = False,
    settings: type[MethodSettings] = GivenTaskSettings,
    in_table: bool = True,
) -> MethodSpec:
    """A method that weighs given auxiliary tasks (a learned one's fixed twin is equal weights)."""
    return MethodSpec(
        name,
        f"auxray.methods.objectives:{name}",
        settings,
        learns=learns,
        needs_aux_task=True,
        twin="equal" if learns else None,
        outer_keys=OUTER_KEYS if learns else (),
        in_table=in_table,
    )


def _weighting(
    name: str,
    settings: type[MethodSettings],
    twin: str,
    hypergradients: tuple[HypergradMethod, ...] = (),
    *,
    factory: str | None = None,
    forks: bool = False,
) -> MethodSpec:
    """A cheap single-run task weighting (ARML, Auto-lambda): its own objective module (factory: another method's
    there, default its name), no held-out set, moved by a finite-difference hypergradient or else by its gradient
    rule, forking around its weights if `forks`; not a row of the AuxiLearn reproduction."""
    return MethodSpec(
        name,
        f"auxray.methods.learned_weights:{factory or name}",
        settings,
        learns=True,
        needs_aux_task=True,
        hypergradients=hypergradients,
        hypergradient_words="a finite-difference look-ahead on training batches" if hypergradients else "",
        twin=twin,
        inner_sgd=bool(hypergradients),
        hypergradient_steps=bool(hypergradients),
        # phi is the weight vector: a hypergradient's optimizer may bound it; a gradient rule reads its own step size
        outer_keys=(*OUTER_KEYS, BOUND_KEY) if hypergradients else ("lr",),
        in_table=False,
        forks=forks,
    )


def _labels(
    name: str, hypergradients: tuple[HypergradMethod, ...], words: str, twin: str, paper: Published
) -> MethodSpec:
    """A label generator trained by the given hypergradient; its fixed twin is a frozen generator."""
    return MethodSpec(
        name,
        "auxray.methods.objectives:labels",
        LabelSettings,
        learns=True,
        learns_labels=True,
        uses_pool=False,
        hypergradients=hypergradients,
        hypergradient_words=words,
        twin=twin,
        outer_keys=OUTER_KEYS,
        paper=paper,
    )


SPECS: dict[str, MethodSpec] = {
    s.name: s
    for s in (
        MethodSpec(
            "stl", "auxray.methods.objectives:stl", uses_pool=False, baseline=True, paper=Published("STL", 50.8, 0.8)
        ),
        MethodSpec(
            "equal",
            "auxray.methods.weighted:equal",
            FixedWeightSettings,
            needs_aux_task=True,
            in_table=False,
        ),
        _given("uncertainty"),
        _given("gcs"),
        _given("auxilearn_combine", learns=True, settings=CombinerSettings),
        _labels(
            "auxilearn_labels",
            ("neumann", "cg", "exact"),
            "the implicit hypergradient",
            "auxilearn_labels",
            Published("AuxiLearn", 60.7, 1.3),
        ),
        _labels(
            "maxl",
            ("unroll",),
            "a one-step unrolled second-order hypergradient",
            "maxl",
            Published("MAXL", 58.2, 0.3),
        ),
        # maxl_fo.yaml differs from maxl.yaml only in hypergrad.method and outer.lr, neither of which does
        # anything without outer steps: MAXL's frozen twin is MAXL-F's too (trained once, shared).
        _labels(
            "maxl_fo",
            ("fd",),
            "a first-order (finite-difference) unrolled hypergradient",
            "maxl",
            Published("MAXL-F", 56.1, 0.1),
        ),
        _given("jtds", learns=True, settings=TaskImportanceSettings),
        MethodSpec(
            "forkmerge",
            "auxray.methods.weighted:forkmerge",
            ForkMergeSettings,
            needs_aux_task=True,
            forks=True,
            twin="equal",
            in_table=False,
        ),
        # ARML starts at equal weights (1 each), so equal is its fixed twin; Auto-lambda's twin is itself frozen
        # at method.init_weight (hypergrad.enabled: false).
        _weighting("arml", GradientMatchingSettings, "equal"),
        _weighting("autolambda", LookAheadSettings, "autolambda", ("fd",)),
        # ForkMerge around ARML's weights (issue #19's "forkmerge wraps a learned weighting"): ARML's objective,
        # forked every merge_every steps; learning nothing and merging nothing it is equal weights, its fixed twin.
        _weighting("forkmerge_arml", ForkedGradientMatchingSettings, "equal", factory="arml", forks=True),
    )
}
METHOD_NAMES = tuple(SPECS)
# The fixed weighting every given-task method is measured against (their usual fixed twin): each task at weight 1.
EQUAL_WEIGHTS = SPECS["equal"].name
DEFAULT_METHOD = "stl"  # method.name when a config names none


def spec(name: str) -> MethodSpec:
    """The spec of a method by its config name (method.name)."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(SPECS)}") from None


def defining_method(hypergradient: str) -> MethodSpec | None:
    """The method a hypergrad.method defines (maxl for unroll), or None when no method claims it."""
    return next((s for s in SPECS.values() if hypergradient in s.hypergradients), None)
