"""Methods: the objective (inner/outer losses and aux net) a RunConfig names, built from its spec."""

from __future__ import annotations

from auxray.methods.aux_tasks import AuxiliaryTask, AuxTaskSpec, LossFnTask
from auxray.methods.base import Batch, InnerResult, Objective, accuracy, labeled_rows, main_loss, main_target
from auxray.methods.registry import ObjectiveInputs, build_objective

__all__ = [
    "AuxTaskSpec",
    "AuxiliaryTask",
    "Batch",
    "InnerResult",
    "LossFnTask",
    "Objective",
    "ObjectiveInputs",
    "accuracy",
    "build_objective",
    "labeled_rows",
    "main_loss",
    "main_target",
]
