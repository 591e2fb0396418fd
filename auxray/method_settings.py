"""Each method's own `method:` settings as a pydantic model (base layer: no torch), built from shared parts.

A part holds one concern's knobs (given tasks, a label generator, the outer optimizer, ...); a method's model
joins the parts it reads, and the registry (``auxray.method_specs``) names which model each method takes, so
``auxray.config`` validates ``method:`` as a union tagged by ``method.name``: a knob of another method is an
unknown key by construction. Models are not tied to a name here (several methods share one).
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from auxray.importpath import check_import_path

AUX_TASKS = ("none", "rotation", "targets", "labels", "consistency", "pseudo_labels", "noise_labels", "table")
# Built-in tasks that can be listed together (method.aux_task: [rotation, consistency, ...]): each gives one loss
# per sample from one shared forward pass, on labelled and unlabelled images alike.
COMBINABLE_TASKS = ("rotation", "consistency", "pseudo_labels", "noise_labels", "table")
ForkBranch = Literal["main_only", "drop_each", "raise_each"]  # a forking method's kinds of branch beside the given one


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MethodSettings(_Part):
    """What every method's settings hold: its name (the union's tag, so one of the registry's) and the auxiliary
    tasks it trains."""

    name: str = Field(frozen=True)

    @property
    def aux_tasks(self) -> tuple[str, ...]:
        """The given auxiliary tasks as a tuple of names: ("none",) for a method that weighs none."""
        return ("none",)


Part = TypeVar("Part", bound=BaseModel)  # one of the parts below


def settings_as(settings: MethodSettings, kind: type[Part]) -> Part:
    """`settings` as the part `kind` a caller reads (a method's objective factory, the outer optimizer), or a
    TypeError naming the method: the registry paired it with a model that lacks that part."""
    if not isinstance(settings, kind):
        raise TypeError(f"method {settings.name!r} has no {kind.__name__} settings")
    return settings


class GivenTasks(_Part):
    """The given auxiliary task(s) a weighting method weighs.

    aux_task: a built-in task, or a user's own as "package.module:factory": factory(task) returns an
    auxray.methods.aux_tasks.AuxiliaryTask (e.g. a LossFnTask around a callable giving per-sample losses). A list
    of built-in tasks (COMBINABLE_TASKS) trains them together, one loss each.
    pseudo_threshold: pseudo_labels' confidence bar: a weak view's prediction is the target for a strong view when
    its confidence reaches this (FixMatch's 0.95); 0 keeps every pseudo-label, leaving learned per-sample weights
    to act as the confidence.
    """

    aux_task: str | list[str] = "none"
    pseudo_threshold: float = Field(0.95, ge=0, lt=1)

    @field_validator("aux_task")
    @classmethod
    def _known_aux_task(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, str):
            return check_import_path(v, AUX_TASKS, "auxiliary task")
        wrong = [t for t in v if t not in COMBINABLE_TASKS]
        if not v or wrong or len(set(v)) != len(v):
            raise ValueError(
                f"a list of auxiliary tasks takes distinct built-in tasks ({', '.join(COMBINABLE_TASKS)}), got {v}"
            )
        return v

    @property
    def aux_tasks(self) -> tuple[str, ...]:
        """method.aux_task as a tuple of names (one for a single task)."""
        return (self.aux_task,) if isinstance(self.aux_task, str) else tuple(self.aux_task)


class TaskWeights(_Part):
    """Fixed weights of named auxiliary tasks (a task not named keeps weight 1): what a search over fixed weights
    (configs/sweeps/weight_search_*.yaml) tunes, and a forking method's given branch."""

    task_weights: dict[str, float] = Field(default_factory=dict)

    @field_validator("task_weights")
    @classmethod
    def _non_negative_weights(cls, v: dict[str, float]) -> dict[str, float]:
        negative = sorted(k for k, w in v.items() if not w >= 0)
        if negative:
            raise ValueError(f"task_weights must be non-negative numbers; {', '.join(negative)} is not")
        return v


class Forking(_Part):
    """Fork and merge: every merge_every inner steps the primary net forks into branches that differ in their task
    weights (the current ones, plus fork_branches: main_only; drop_each, one branch per task with its weight 0;
    raise_each, one per task with its weight times fork_raise), trains each on the same batches, and merges them
    into the convex combination scored best on the outer set by merge_metric, searched greedily: the branches best
    first, each next one taking a share from merge_grid (or none).

    prune_steps > 0 makes the run's first period a task-ranking pass of that many steps (ForkMerge's pruning):
    its branches are main-only and the main task with each auxiliary task alone, and a task whose branch scores
    below main-only's on the outer set is dropped for the rest of the run (weight 0 in every later branch).
    With no fork_branches the ranking pass is the run's only merge: fixed weights over the tasks it kept."""

    merge_every: int = Field(50, ge=1)
    fork_branches: list[ForkBranch] = Field(default_factory=lambda: list[ForkBranch](["main_only", "drop_each"]))
    fork_raise: float = Field(2.0, gt=1)
    merge_grid: list[float] = Field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    merge_metric: Literal["loss", "accuracy"] = "loss"
    prune_steps: int = Field(0, ge=0)

    @field_validator("fork_branches")
    @classmethod
    def _distinct_branches(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"fork_branches needs distinct kinds (main_only, drop_each, raise_each), got {v}")
        return v

    @model_validator(mode="after")
    def _some_branches(self) -> Forking:
        if not self.fork_branches and not self.prune_steps:
            raise ValueError(
                "fork_branches needs a kind (main_only, drop_each, raise_each) beside the current weights: a merge "
                "needs at least two branches (none is allowed only with method.prune_steps, a ranking pass alone)"
            )
        return self

    @field_validator("merge_grid")
    @classmethod
    def _convex_shares(cls, v: list[float]) -> list[float]:
        if not v or len(set(v)) != len(v) or any(not 0 < s < 1 for s in v):
            raise ValueError(
                f"merge_grid takes distinct shares strictly between 0 and 1 (each candidate is (1 - share) x merged "
                f"+ share x branch, so its coefficients sum to one), got {v}"
            )
        return v


class LabelGenerator(_Part):
    """A label generator's knobs: psi sub-classes per class (one number, or one per class), the weight of the
    entropy term that keeps the generated labels in use, and the focal loss's gamma on them (0: cross-entropy)."""

    psi: int | list[int] = 5
    entropy_weight: float = Field(0.2, ge=0)
    focal_gamma: float = Field(0.0, ge=0)

    @field_validator("psi")
    @classmethod
    def _positive_psi(cls, v: int | list[int]) -> int | list[int]:
        values = v if isinstance(v, list) else [v]
        if not values or any(p < 1 for p in values):
            raise ValueError("psi must be positive (one number, or one per class)")
        return v


class OuterOptimizer(_Part):
    """The outer: section, the optimizer of a learned method's outer steps on phi (its spec's outer_keys name the
    keys it reads; the rest must keep their defaults).

    lr_per step: lr is each phi step's (Adam's) learning rate, so a run with 10x the outer steps moves phi up to
    10x further. run: lr is the run's movement budget, each phi step taking lr / (the run's phi steps: epochs x
    steps_per_epoch / hypergrad.every / hypergrad.accumulate); Adam moves a coordinate of phi by about its learning
    rate at most per step, so about lr at most over the run.
    lower_bound: after every step phi is projected onto phi >= lower_bound (projected gradient descent), for a
    method whose phi is its task weights (Auto-lambda: 0 keeps every weight non-negative, so the inner step never
    climbs an auxiliary loss); unset: no projection.
    """

    lr: float = Field(1e-3, gt=0)
    lr_per: Literal["step", "run"] = "step"
    weight_decay: float = Field(1e-5, ge=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    grad_clip: float | None = Field(None, gt=0)
    lower_bound: float | None = None


class WeightNorm(_Part):
    """Learned task weights' normalisation: none (as published), or sum_to_tasks: K * softmax(logits), positive,
    summing to the number of auxiliary tasks K, 1 each at the start, so raising one task's weight lowers the
    others'."""

    weight_norm: Literal["none", "sum_to_tasks"] = "none"


class InitWeight(_Part):
    """Every auxiliary task's initial weight; unset: the method's own start (see its objective), which its fixed
    twin keeps."""

    init_weight: float | None = Field(None, gt=0)


class GivenTaskSettings(GivenTasks, MethodSettings):
    """A method that weighs given tasks (if any) by a rule of its own, without knobs."""


class FixedWeightSettings(GivenTasks, TaskWeights, MethodSettings):
    """Given tasks at fixed weights."""


class ForkMergeSettings(GivenTasks, TaskWeights, Forking, MethodSettings):
    """Given tasks whose weights are chosen by forking and merging branches, starting from the fixed weights."""


_DEEP_COMBINER = (
    "deep weighs per-pixel loss maps (dense tasks such as segmentation), "
    "but every auxiliary task here gives one loss per sample; use method.combiner: linear or nonlinear"
)


class CombinerSettings(GivenTasks, WeightNorm, MethodSettings):
    """A learned loss combiner over the given tasks.

    monotone: the combiner's weights kept non-negative (non-decreasing in every auxiliary loss). Unset: true for
    the linear combiner (a negative weight would reward a growing auxiliary loss), false for the nonlinear one
    (its output is non-negative either way). weight_norm normalises the linear combiner's weights.
    """

    combiner: Literal["linear", "nonlinear", "deep"] = "nonlinear"
    combiner_hidden: list[int] = Field(default_factory=lambda: [10])
    monotone: bool | None = None

    @field_validator("combiner")
    @classmethod
    def _per_sample_losses(cls, v: str) -> str:
        if v == "deep":
            raise ValueError(_DEEP_COMBINER)
        return v

    @model_validator(mode="after")
    def _normalised_linear(self) -> CombinerSettings:
        if self.weight_norm != "none" and self.combiner != "linear":
            raise ValueError(f"method.weight_norm: {self.weight_norm} normalises the linear combiner's weights only")
        if self.weight_norm != "none" and self.monotone is False:
            raise ValueError(f"method.weight_norm: {self.weight_norm} keeps every weight positive; drop monotone")
        return self


class LabelSettings(LabelGenerator, MethodSettings):
    """A label generator trained by a hypergradient."""


class TaskImportanceSettings(GivenTasks, WeightNorm, InitWeight, MethodSettings):
    """Learned per-sample, per-task weights (task importances times a confidence) over the given tasks."""

    @model_validator(mode="after")
    def _normalised_start(self) -> TaskImportanceSettings:
        if self.weight_norm != "none" and self.init_weight not in (None, 1.0):
            raise ValueError(f"method.weight_norm: {self.weight_norm} starts every weight at 1; drop init_weight")
        return self


class LookAheadSettings(GivenTasks, InitWeight, MethodSettings):
    """Task weights moved by a finite-difference look-ahead on training batches."""


class GradientMatchingSettings(GivenTasks, MethodSettings):
    """Task weights moved by a gradient-matching rule inside W's backward, outer.lr its SGD step on the weights:
    weight_noise is the Langevin noise's scale (0: plain projected SGD; each step adds
    weight_noise * sqrt(2 * outer.lr) * N(0, 1) before the projection)."""

    weight_noise: float = Field(0.0, ge=0)


class ForkedGradientMatchingSettings(Forking, GradientMatchingSettings):
    """ARML's weights as the starting point of every fork: the run's own branch moves alpha by gradient matching,
    and every merge_every inner steps the branches around alpha now (fork_branches) are trained and merged."""

    @model_validator(mode="after")
    def _no_ranking_pass(self) -> ForkedGradientMatchingSettings:
        if self.prune_steps:
            raise ValueError(
                "prune_steps drops tasks by pinning the weights of the rest of the run, which a learned weighting "
                "cannot keep; use it with method.name: forkmerge (fixed weights)"
            )
        return self
