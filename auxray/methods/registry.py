"""Builds a method's objective from its spec (auxray.method_specs): the spec names its factory by import path, and
every factory takes the same inputs, so the trainer never branches on a method's name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from auxray.config import RunConfig
from auxray.data.aux_table import ColumnGroup
from auxray.importpath import resolve_callable
from auxray.method_settings import GivenTasks, Part, settings_as
from auxray.method_specs import MethodSpec, spec
from auxray.methods.aux_tasks import AuxiliaryTask, AuxTaskSpec, build_aux_task
from auxray.methods.base import Objective
from auxray.methods.view_tasks import TaskContext
from auxray.models import BackboneSpec


@dataclass(frozen=True)
class ObjectiveInputs:
    """What any objective factory may need: the config, the data's shape and the trunk's, and the given task."""

    cfg: RunConfig
    num_classes: int
    task: str
    feat_dim: int
    in_channels: int
    backbone: BackboneSpec
    aux_task: AuxTaskSpec | list[str] | None  # the caller's own, else the config's (method.aux_task)
    groups: tuple[ColumnGroup, ...] = ()

    @property
    def outputs(self) -> int:
        """The main head's size: one per class, or 1 for regression."""
        return self.num_classes if self.task == "classification" else 1

    def settings(self, kind: type[Part]) -> Part:
        """The method's own settings (cfg.method) as the model its factory reads."""
        return settings_as(self.cfg.method, kind)

    def given_task(self) -> AuxiliaryTask:
        """The given auxiliary task(s) the config (or a Python caller) names, built for this data."""
        given = settings_as(self.cfg.method, GivenTasks)
        context = TaskContext(self.num_classes, self.groups, given.pseudo_threshold)
        return build_aux_task(self.aux_task or given.aux_task, self.task, context)


ObjectiveFactory = Callable[[MethodSpec, ObjectiveInputs], Objective]


@cache
def objective_factory(method: MethodSpec) -> ObjectiveFactory:
    """The factory a spec names, imported once."""
    return resolve_callable(method.objective)


def build_objective(
    cfg: RunConfig,
    *,
    num_classes: int,
    task: str,
    feat_dim: int,
    in_channels: int,
    backbone: BackboneSpec | None = None,
    aux_task: AuxTaskSpec | None = None,
    groups: Sequence[ColumnGroup] = (),
) -> Objective:
    """The objective for cfg.method.name; num_classes is the main head's size (1 for regression). backbone and
    aux_task, when given (a name, an import path or a callable), replace cfg.model.backbone and cfg.method.aux_task:
    how a Python caller passes its own trunk factory or auxiliary task without a config string for it. groups: the
    per-image label columns the data carries (DataBundle.groups), for the noise_labels and table tasks."""
    method = spec(cfg.method.name)
    inputs = ObjectiveInputs(
        cfg,
        num_classes,
        task,
        feat_dim,
        in_channels,
        backbone or cfg.model.backbone,
        aux_task,
        tuple(groups),
    )
    return objective_factory(method)(method, inputs)
