"""Inner objectives of every method: fixed weightings (STL, equal, uncertainty, GCS) and learned
auxiliary networks (AuxiLearn combiners and labels, MAXL, JTDS)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from auxray.auxnets import (
    LabelGenerator,
    LinearCombiner,
    NonlinearCombiner,
    TaskDataScheduler,
    UncertaintyWeighting,
    expand_psi,
    label_entropy_regulariser,
    soft_cross_entropy,
)
from auxray.method_settings import CombinerSettings, LabelSettings, TaskImportanceSettings
from auxray.method_specs import MethodSpec
from auxray.methods.aux_tasks import AuxiliaryTask, TaskLosses
from auxray.methods.base import AuxFn, Batch, ForwardFn, InnerResult, MainOuterMixin, main_mean
from auxray.methods.gradient_rules import SUM, GCSRule, GradientRule
from auxray.methods.registry import ObjectiveInputs
from auxray.models import BackboneSpec, build_trunk


class GivenAuxObjective(MainOuterMixin):
    """Main loss plus given auxiliary losses under a fixed rule: STL ignores them, equal sums them,
    GCS sums them and lets the trainer drop conflicting gradients. The main loss is the mean over the rows with
    a main label; auxiliary losses are means over every row, unlabelled ones included."""

    learned = False

    def __init__(
        self,
        method: MethodSpec,
        aux_task: AuxiliaryTask,
        num_outputs: int,
        *,
        aux_weight: float = 1.0,
        rule: GradientRule = SUM,
    ) -> None:
        self.name = method.name
        self.aux_task = aux_task
        self.aux_names = aux_task.names
        self.task = aux_task.task
        self.heads = {"main": num_outputs, **aux_task.heads}
        self.aux_weight = aux_weight
        self.gradient_rule = rule
        self.uses_unlabeled = method.uses_pool and bool(aux_task.names)

    def build_auxnet(self, model: nn.Module) -> nn.Module | None:
        return None

    def prepare(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Batch:
        return self.aux_task.prepare(x, y, generator)

    def inner(self, forward: ForwardFn, aux: AuxFn | None, batch: Batch) -> InnerResult:
        t = self.aux_task.losses(forward, batch)
        loss = main_mean(t.main, t.labeled) + self.aux_weight * t.aux.sum(dim=1).mean()
        return task_result(loss, t, self.aux_task.names)


class UncertaintyObjective(GivenAuxObjective):
    """Kendall et al.: task weights exp(-s_t) from learned log-variances, trained with W (not bi-level)."""

    trains_with_primary = True

    def build_auxnet(self, model: nn.Module) -> nn.Module | None:
        return UncertaintyWeighting(1 + len(self.aux_task.names))

    def inner(self, forward: ForwardFn, aux: AuxFn | None, batch: Batch) -> InnerResult:
        t = self.aux_task.losses(forward, batch)
        task_losses = torch.cat([main_mean(t.main, t.labeled).unsqueeze(0), t.aux.mean(dim=0)])
        assert isinstance(aux, UncertaintyWeighting)  # trained with W, so the loop passes the module itself
        result = task_result(aux(task_losses), t, self.aux_task.names)
        weights = aux.task_weights()
        result.task_weights = {n: weights[i + 1].detach() for i, n in enumerate(self.aux_task.names)}
        return result


class CombinerObjective(GivenAuxObjective):
    """AuxiLearn loss combiner: L_T = mean(l_main) + mean(g(l; phi)), phi tuned by the implicit hypergradient; g
    sees each row's losses with the main entry 0 where the row has no main label."""

    learned = True

    def __init__(
        self,
        method: MethodSpec,
        aux_task: AuxiliaryTask,
        num_outputs: int,
        kind: str,
        hidden: list[int],
        monotone: bool | None,
        normalised: bool = False,
    ) -> None:
        super().__init__(method, aux_task, num_outputs)
        self.kind, self.hidden, self.monotone, self.normalised = kind, hidden, monotone, normalised

    def build_auxnet(self, model: nn.Module) -> nn.Module:
        n_aux = len(self.aux_task.names)
        if self.kind == "linear":
            return LinearCombiner(n_aux, monotone=self.monotone is not False, normalised=self.normalised)
        return NonlinearCombiner(n_aux, hidden=self.hidden, monotone=bool(self.monotone))

    def inner(self, forward: ForwardFn, aux: AuxFn | None, batch: Batch) -> InnerResult:
        return combined_inner(self.aux_task, forward, aux, batch)

    def task_weights(self, auxnet: nn.Module | None, result: InnerResult) -> dict[str, Tensor]:
        """The combiner's effective weight of each aux task at this batch's losses (d g / d l_aux)."""
        assert isinstance(auxnet, (LinearCombiner, NonlinearCombiner))
        if result.main_per_sample is None or result.aux_per_sample is None:
            raise ValueError("the combiner's task weights need per-sample main and auxiliary losses")
        losses = torch.cat([result.main_per_sample.detach().unsqueeze(1), result.aux_per_sample.detach()], dim=1)
        weights = auxnet.task_weights(losses)
        return {n: weights[i] for i, n in enumerate(self.aux_task.names)}


class SchedulerObjective(GivenAuxObjective):
    """JTDS: per-sample, per-task weights w_ij from the task-data scheduler over detached primary features."""

    learned = True

    def __init__(
        self,
        method: MethodSpec,
        aux_task: AuxiliaryTask,
        num_outputs: int,
        feat_dim: int,
        init_weight: float | None = None,
        normalised: bool = False,
    ):
        super().__init__(method, aux_task, num_outputs)
        self.feat_dim, self.init_weight, self.normalised = feat_dim, init_weight, normalised

    def build_auxnet(self, model: nn.Module) -> nn.Module:
        n_aux = len(self.aux_task.names)
        return TaskDataScheduler(self.feat_dim, n_aux, init_weight=self.init_weight, normalised=self.normalised)

    def inner(self, forward: ForwardFn, aux: AuxFn | None, batch: Batch) -> InnerResult:
        t = self.aux_task.losses(forward, batch, features=True)
        if t.features is None:
            raise ValueError("JTDS needs the primary network's features")
        weights = _required(aux)(t.features.detach(), t.aux.detach())
        loss = main_mean(t.main, t.labeled) + (weights * t.aux).sum(dim=1).mean()
        result = task_result(loss, t, self.aux_task.names)
        result.task_weights = {n: weights[:, i].mean().detach() for i, n in enumerate(self.aux_task.names)}
        return result


class LabelObjective(MainOuterMixin):
    """Learned auxiliary labels (AuxiLearn, MAXL): a generator g(x, y; phi) gives soft labels over
    psi[y] sub-classes; the primary net's "labels" head learns them; an entropy term on the batch-mean
    label distribution (a direct term on phi) keeps all sub-classes in use."""

    learned = True
    task = "classification"
    aux_names: tuple[str, ...] = ("labels",)
    gradient_rule: GradientRule = SUM

    def __init__(
        self,
        name: str,
        num_classes: int,
        psi: int | list[int],
        backbone: BackboneSpec,
        width: int,
        in_channels: int,
        entropy_weight: float,
        focal_gamma: float,
    ) -> None:
        self.name = name
        self.psi = expand_psi(psi, num_classes)
        self.label_classes: tuple[int, ...] | None = tuple(self.psi)
        self.heads = {"main": num_classes, "labels": sum(self.psi)}
        self.backbone, self.width, self.in_channels = backbone, width, in_channels
        self.entropy_weight, self.focal_gamma = entropy_weight, focal_gamma

    def build_auxnet(self, model: nn.Module) -> nn.Module:
        trunk, feat_dim = build_trunk(self.backbone, in_channels=self.in_channels, width=self.width)
        return LabelGenerator(trunk, feat_dim, self.psi)

    def prepare(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Batch:
        return {"x": x, "y": y}

    def inner(self, forward: ForwardFn, aux: AuxFn | None, batch: Batch) -> InnerResult:
        x, y = batch["x"], batch["y"]
        out = forward(x)
        main = nn.functional.cross_entropy(out["main"], y, reduction="none")
        targets = _required(aux)(x, y)
        aux_loss = soft_cross_entropy(out["labels"], targets, gamma=self.focal_gamma)
        loss = (main + aux_loss).mean()
        reg = self.entropy_weight * label_entropy_regulariser(targets) if self.entropy_weight else None
        return InnerResult(
            loss,
            main.mean().detach(),
            out["main"],
            {"labels": aux_loss.mean().detach()},
            main_per_sample=main,
            aux_per_sample=aux_loss.unsqueeze(1),
            regulariser=reg,
        )


def stl(method: MethodSpec, i: ObjectiveInputs) -> GivenAuxObjective:
    """Single-task learning: the auxiliary heads are built (as in every method) but weighed 0."""
    return GivenAuxObjective(method, i.given_task(), i.outputs, aux_weight=0.0)


def gcs(method: MethodSpec, i: ObjectiveInputs) -> GivenAuxObjective:
    """Equal weights, each auxiliary gradient kept only where its cosine with the main one is positive."""
    return GivenAuxObjective(method, i.given_task(), i.outputs, rule=GCSRule())


def uncertainty(method: MethodSpec, i: ObjectiveInputs) -> UncertaintyObjective:
    """Kendall et al.'s learned log-variances, trained with W."""
    return UncertaintyObjective(method, i.given_task(), i.outputs)


def auxilearn_combine(method: MethodSpec, i: ObjectiveInputs) -> CombinerObjective:
    """AuxiLearn's loss combiner, learned by the hypergradient."""
    m = i.settings(CombinerSettings)
    normalised = m.weight_norm == "sum_to_tasks"
    return CombinerObjective(method, i.given_task(), i.outputs, m.combiner, m.combiner_hidden, m.monotone, normalised)


def jtds(method: MethodSpec, i: ObjectiveInputs) -> SchedulerObjective:
    """JTDS's per-sample, per-task weights, learned by the hypergradient."""
    m = i.settings(TaskImportanceSettings)
    normalised = m.weight_norm == "sum_to_tasks"
    start = JTDS_START if m.init_weight is None else m.init_weight
    return SchedulerObjective(method, i.given_task(), i.outputs, i.feat_dim, start, normalised)


def labels(method: MethodSpec, i: ObjectiveInputs) -> LabelObjective:
    """A label generator (AuxiLearn labels, MAXL, MAXL-F): the spec's hypergradient tells them apart."""
    if i.task != "classification":
        raise ValueError(f"{method.name} generates class-conditional labels and needs a classification task")
    m = i.settings(LabelSettings)
    return LabelObjective(
        method.name, i.num_classes, m.psi, i.backbone, i.cfg.model.width, i.in_channels, m.entropy_weight, m.focal_gamma
    )


JTDS_START = 1.0  # JTDS's initial weights when method.init_weight is unset: where equal weights (its twin) start


def _required(aux: AuxFn | None) -> AuxFn:
    """The auxiliary network a learned objective cannot do without."""
    if aux is None:
        raise ValueError("this objective needs its auxiliary network")
    return aux


def combined_inner(aux_task: AuxiliaryTask, forward: ForwardFn, aux: AuxFn | None, batch: Batch) -> InnerResult:
    """L_T = mean(l_main over labelled rows) + mean over rows of g(l), g the aux net over each row's losses (the
    main entry 0 where a row has no main label): a loss combiner's inner loss, or a weight vector's."""
    t = aux_task.losses(forward, batch)
    losses = torch.cat([t.main.unsqueeze(1), t.aux], dim=1)
    loss = main_mean(t.main, t.labeled) + _required(aux)(losses).mean()
    return task_result(loss, t, aux_task.names)


def task_result(loss: Tensor, t: TaskLosses, names: tuple[str, ...]) -> InnerResult:
    """Pack an inner loss with the per-task means to log."""
    aux_means = {n: t.aux[:, i].mean().detach() for i, n in enumerate(names)}
    main = main_mean(t.main, t.labeled).detach()
    return InnerResult(loss, main, t.logits, aux_means, main_per_sample=t.main, aux_per_sample=t.aux, labeled=t.labeled)
