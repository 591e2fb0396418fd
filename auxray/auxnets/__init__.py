"""Auxiliary networks: loss combiners, label generators, the JTDS scheduler and uncertainty weighting."""

from auxray.auxnets.combiners import LinearCombiner, NonlinearCombiner
from auxray.auxnets.label_generator import (
    LabelGenerator,
    expand_psi,
    hierarchy_mask,
    label_entropy_regulariser,
    soft_cross_entropy,
)
from auxray.auxnets.rule_weights import RuleWeights
from auxray.auxnets.scheduler import TaskDataScheduler
from auxray.auxnets.uncertainty import UncertaintyWeighting

__all__ = [
    "LabelGenerator",
    "LinearCombiner",
    "NonlinearCombiner",
    "RuleWeights",
    "TaskDataScheduler",
    "UncertaintyWeighting",
    "expand_psi",
    "hierarchy_mask",
    "label_entropy_regulariser",
    "soft_cross_entropy",
]
