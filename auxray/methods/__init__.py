"""Method registry: turns a RunConfig into the objective (inner/outer losses and aux net) it names."""

from __future__ import annotations

from collections.abc import Sequence

from auxray.config import LABEL_METHODS, RunConfig
from auxray.data.aux_table import ColumnGroup
from auxray.methods.aux_tasks import AuxiliaryTask, AuxTaskSpec, LossFnTask, build_aux_task
from auxray.methods.base import Batch, InnerResult, Objective, accuracy, labeled_rows, main_loss, main_target
from auxray.methods.objectives import (
    CombinerObjective,
    GivenAuxObjective,
    LabelObjective,
    SchedulerObjective,
    UncertaintyObjective,
)
from auxray.methods.view_tasks import TaskContext
from auxray.models import BackboneSpec

__all__ = [
    "AuxTaskSpec",
    "AuxiliaryTask",
    "Batch",
    "InnerResult",
    "LossFnTask",
    "Objective",
    "accuracy",
    "build_objective",
    "labeled_rows",
    "main_loss",
    "main_target",
]


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
    m = cfg.method
    outputs = num_classes if task == "classification" else 1
    if m.name in LABEL_METHODS:
        if task != "classification":
            raise ValueError(f"{m.name} generates class-conditional labels and needs a classification task")
        return LabelObjective(
            m.name,
            num_classes,
            m.psi,
            backbone or cfg.model.backbone,
            cfg.model.width,
            in_channels,
            m.entropy_weight,
            m.focal_gamma,
        )
    context = TaskContext(num_classes, tuple(groups), m.pseudo_threshold)
    given = build_aux_task(aux_task or m.aux_task, task, context)
    if m.name == "auxilearn_combine":
        return CombinerObjective(m.name, given, outputs, m.combiner, m.combiner_hidden, m.monotone)
    if m.name == "jtds":
        return SchedulerObjective(m.name, given, outputs, feat_dim)
    if m.name == "uncertainty":
        return UncertaintyObjective(m.name, given, outputs)
    return GivenAuxObjective(m.name, given, outputs)
