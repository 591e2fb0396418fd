"""The bi-level training loop on one process. It knows nothing about Ray: a data-parallel layer
passes a Collective (rank, all-reduce, model wrapping) and a phi updater, and reuses it unchanged."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from auxray.config import RunConfig
from auxray.data import BatchIterator, DataBundle, TensorData
from auxray.method_settings import Forking, settings_as
from auxray.method_specs import spec
from auxray.methods import Batch, InnerResult, Objective, accuracy, build_objective, main_target
from auxray.methods.base import ForkableWeights
from auxray.models import MultiHeadNet, build_trunk
from auxray.train.collective import Collective, PhiUpdater
from auxray.train.diagnostics import epoch_diagnostics, hypergrad_cosine
from auxray.train.divergence import check_finite
from auxray.train.evaluation import evaluate_split
from auxray.train.forkmerge import BranchRunner, ForkMerge, InProcessBranches
from auxray.train.hypergradient import build_hypergradient
from auxray.train.hyperstep import Phases, compute_hypergrad, fused_hyperstep, hypergrad_mask, no_phases, trainable
from auxray.train.look_ahead import sgd_look_ahead
from auxray.train.outer_steps import OuterSteps
from auxray.train.phi_optimizer import PhiOptimizer
from auxray.train.progress import Progress
from auxray.train.setup import make_inner_optimizer, make_scheduler, resolve_device, seed_everything
from auxray.train.trainer_state import restore_trainer_state, trainer_state


class BilevelTrainer:
    """Trains the primary net W on L_T(W, phi) and, every `hypergrad.every` inner steps, the aux net phi
    on the hypergradient of L_A; evaluates, checkpoints and reports per-epoch metrics."""

    def __init__(
        self,
        cfg: RunConfig,
        data: DataBundle,
        *,
        collective: Collective | None = None,
        phi_updater: Callable[[nn.Module], PhiUpdater] | None = None,
        progress: bool = True,
        branches: Callable[[BilevelTrainer], BranchRunner] | None = None,
    ) -> None:
        self.cfg, self.data = cfg, data
        self.collective = collective or Collective()
        self.progress = progress and self.collective.rank == 0
        t = cfg.trainer
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(t.device)
        self.dtype = torch.float64 if t.dtype == "float64" else torch.float32
        seed_everything(t.seed)
        self._build_networks()
        self._build_inner_loop()
        self._build_outer_loop(phi_updater)
        self._build_fork(branches)
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.hypergrad_norms: list[tuple[int, float]] = []
        self.resumed_from: list[int] = []  # the epoch of every checkpoint this run was restored from, in order
        self.best: dict[str, Any] = {"val_accuracy": -math.inf, "epoch": -1, "state": None}

    def _build_networks(self) -> None:
        """The objective, the primary net W (trunk and heads) and the aux net phi the objective builds, if any."""
        cfg, data = self.cfg, self.data
        in_features = data.train.x.shape[1] if data.task == "regression" else None
        trunk, feat_dim = build_trunk(
            cfg.model.backbone, in_channels=data.in_channels, width=cfg.model.width, in_features=in_features
        )
        self.objective: Objective = build_objective(
            cfg,
            num_classes=max(data.num_classes, 1),
            task=data.task,
            feat_dim=feat_dim,
            in_channels=data.in_channels,
            groups=data.groups,
        )
        # Conv weights channels-last, the layout oneDNN and cuDNN are fastest with: only how they are stored changes.
        net = MultiHeadNet(trunk, feat_dim, self.objective.heads)
        self.model = net.to(self.device, self.dtype).to(memory_format=torch.channels_last)
        auxnet = self.objective.build_auxnet(self.model)
        self.auxnet = auxnet.to(self.device, self.dtype) if auxnet is not None else None
        self.train_model = self.collective.wrap_model(self.model)

    def _sharded(self, data: TensorData, batch_size: int, seed: int, augment: bool) -> BatchIterator:
        """A shuffled stream of full batches of this worker's shard of `data` (training, pool and outer batches)."""
        return BatchIterator(
            data,
            batch_size,
            shuffle=True,
            seed=seed,
            rank=self.collective.rank,
            world_size=self.collective.world_size,
            drop_last=True,
            augment=augment,
            device=self.device,
        )

    def _build_inner_loop(self) -> None:
        """The inner optimizer over W (and phi when it trains with W), the training and pool streams, the schedule."""
        cfg, data, t = self.cfg, self.data, self.cfg.trainer
        inner_params = list(self.model.parameters())
        if self.auxnet is not None and self.objective.trains_with_primary:
            inner_params += list(self.auxnet.parameters())
        self.opt_w = make_inner_optimizer(inner_params, cfg)
        augment = cfg.data.augment and data.task == "classification"
        self.train_iter = self._sharded(data.train, t.batch_size, t.seed, augment)
        # Unlabelled images join every inner step of a method whose auxiliary losses use them: a batch of the pool
        # after the labelled batch, from its own endless stream (sharded like the labelled one, resumed exactly).
        self.pool_iter: BatchIterator | None = None
        self.pool_stream: Iterator[tuple[Tensor, Tensor]] | None = None
        if data.unlabeled is not None and self.objective.uses_unlabeled:
            pool_batch = cfg.data.unlabeled_batch_size or t.batch_size
            self.pool_iter = self._sharded(data.unlabeled, pool_batch, t.seed + 2, cfg.data.augment)
        self.steps_per_epoch = min(len(self.train_iter), t.max_steps_per_epoch or len(self.train_iter))
        if self.steps_per_epoch == 0:
            raise ValueError("the training split is smaller than one batch per worker; lower trainer.batch_size")
        self.sched_w = make_scheduler(self.opt_w, cfg, t.epochs * self.steps_per_epoch)

    def _build_outer_loop(self, phi_updater: Callable[[nn.Module], PhiUpdater] | None) -> None:
        """The hypergradient (built once), and for a run that learns phi its updater and the outer-set stream."""
        cfg, data, t = self.cfg, self.data, self.cfg.trainer
        self.phi: PhiUpdater | None = None
        self.hyper_mask = hypergrad_mask(trainable(self.model)[0], cfg.hypergrad.params, cfg.model.backbone)
        self.hypergradient = build_hypergradient(cfg.hypergrad, self.hyper_mask)
        self.learns_phi = self.objective.learned and self.objective.hypergradient_steps and cfg.hypergrad.enabled
        chosen = [p for p, m in zip(trainable(self.model)[1], self.hyper_mask, strict=True) if m]
        self.look_ahead = sgd_look_ahead(self.opt_w, chosen) if self.objective.optimizer_look_ahead else None
        # The aux net as built, before any step (a resumed run rebuilds the same): what the weights' drift is from.
        self.initial_auxnet = copy.deepcopy(self.auxnet)
        self.outer: OuterSteps | None = None
        if not self.learns_phi:
            return
        if self.auxnet is None:
            raise ValueError(f"{self.objective.name} is a learned method but built no auxiliary network")
        self.phi = phi_updater(self.auxnet) if phi_updater else PhiOptimizer(self.auxnet, cfg.outer)
        self.outer = OuterSteps(cfg, self.phi, t.epochs * self.steps_per_epoch // cfg.hypergrad.every)
        outer_data = data.train if self.objective.outer_on_train else data.outer
        outer_bs = min(t.batch_size, max(1, len(outer_data) // self.collective.world_size))
        self.outer_iter = self._sharded(outer_data, outer_bs, t.seed + 1, augment=False)

    def _build_fork(self, branches: Callable[[BilevelTrainer], BranchRunner] | None) -> None:
        """A forking method's fork/merge driver, its branches trained by `branches` (default: in this process)."""
        self.fork: ForkMerge | None = None
        if not spec(self.cfg.method.name).forks:
            return
        if not isinstance(self.objective, ForkableWeights):
            raise ValueError(f"{self.objective.name} forks branches but its objective has no task-weight vector")
        runner = branches(self) if branches else InProcessBranches(self, self.objective)
        self.fork = ForkMerge(self.objective, settings_as(self.cfg.method, Forking), runner)

    # ---- one inner step -------------------------------------------------------------------
    def prepare(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Batch:
        x = x.to(self.device, self.dtype) if x.is_floating_point() else x.to(self.device)
        y = y.to(self.device, self.dtype) if y.is_floating_point() else y.to(self.device)
        return self.objective.prepare(x, y, generator)

    def with_unlabeled(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The labelled batch followed by the next batch of the unlabelled pool (unchanged without a pool)."""
        if self.pool_iter is None:
            return x, y
        if self.pool_stream is None:
            self.pool_stream = self.pool_iter.infinite()
        xu, yu = next(self.pool_stream)
        return torch.cat([x, xu]), torch.cat([y, yu])

    def inner_step(self, batch: Batch) -> dict[str, float]:
        """One optimizer step of W on L_T(W, phi) with phi held fixed."""
        self.model.train()
        fixed_phi = self.auxnet if self.auxnet is not None and not self.objective.trains_with_primary else None
        if fixed_phi is not None:
            fixed_phi.requires_grad_(False)
        rule = self.objective.gradient_rule
        try:
            self.opt_w.zero_grad(set_to_none=True)
            res = self.objective.inner(self.model if rule.reduces_itself else self.train_model, self.auxnet, batch)
            logged = rule.backward(res, self.model, self.collective.all_reduce_mean)
        finally:
            if fixed_phi is not None:
                fixed_phi.requires_grad_(True)
        self.opt_w.step()
        self.sched_w.step()
        return {**self._step_stats(res, batch), **logged}

    def _step_stats(self, res: InnerResult, batch: Batch) -> dict[str, float]:
        """What one inner step logs: losses, accuracy, and task weights the objective computed anyway."""
        out = {"loss": float(res.loss.detach()), "main_loss": float(res.main_loss)}
        if self.data.task == "classification":
            out["accuracy"] = float(accuracy(res.logits.detach(), main_target(batch["y"], self.data.task)))
        for name, v in res.aux_losses.items():
            out[f"aux_loss/{name}"] = float(v)
        for name, v in res.task_weights.items():
            out[f"task_weight/{name}"] = float(v)
        return out

    # ---- one outer step -------------------------------------------------------------------
    def reduce_hook(self) -> Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]] | None:
        """The all-reduce the hypergradient passes through (None on one process)."""
        return self.collective.all_reduce_mean if self.collective.world_size > 1 else None

    def _hyperstep_options(self, phases: Phases) -> dict[str, Any]:
        """What both outer-step paths pass the hyperstep besides the problem: the hypergradient built at the start
        (rule, sample cap, parameter subset), the inner step size, the all-reduce and the phase timer."""
        return {
            "hg": self.hypergradient,
            "inner_lr": self.opt_w.param_groups[0]["lr"],
            "reduce": self.reduce_hook(),
            "phases": phases,
            "direction": self.look_ahead,
        }

    def phi_parts(self) -> tuple[nn.Module, OuterSteps]:
        """The aux net and its outer steps of a run that learns phi (an outer step is an error otherwise)."""
        if self.auxnet is None or self.outer is None:
            raise RuntimeError(f"{self.objective.name} with hypergrad.enabled={self.learns_phi} takes no outer steps")
        return self.auxnet, self.outer

    def outer_step(self, train_batch: Batch, outer_batch: Batch, phases: Phases = no_phases) -> float:
        """Hypergradient of the main loss on an outer batch w.r.t. phi at the current W, applied through the phi
        updater (the path when the inner step has already run: a sub-batch, or reuse_graph off)."""
        auxnet, phi = self.phi_parts()
        grads = compute_hypergrad(
            self.objective, self.model, auxnet, train_batch, outer_batch, **self._hyperstep_options(phases)
        )
        with phases("optimizer"):
            phi.add(grads, self.step)
        return _norm(grads)

    def fused_step(
        self, batch: Batch, outer_batch: Batch, phases: Phases = no_phases
    ) -> tuple[dict[str, float], float]:
        """One inner step and one outer step on a single forward/backward of the training batch: the gradient
        updates W, its graph gives the hypergradient (at the W before the update), which updates phi."""
        auxnet, phi = self.phi_parts()
        self.model.train()
        self.opt_w.zero_grad(set_to_none=True)
        out = fused_hyperstep(self.objective, self.model, auxnet, batch, outer_batch, **self._hyperstep_options(phases))
        with phases("optimizer"):
            for p, g in zip(trainable(self.model)[1], out.w_grads, strict=True):
                p.grad = g
            self.opt_w.step()
            self.sched_w.step()
            phi.add(out.hypergrad, self.step)
        return self._step_stats(out.inner, batch), _norm(out.hypergrad)

    def train_step(
        self, batch: Batch, outer_batch: Batch | None = None, phases: Phases = no_phases
    ) -> tuple[dict[str, float], float | None]:
        """One inner step, and with an outer batch one outer step too (fused with it when the hypergradient allows);
        counts the step. Returns the inner step's stats and the hypergradient's norm (None without an outer step)."""
        self.step += 1
        if outer_batch is None and self.fork is not None:
            self.fork.record(self, batch)  # before the step: a period starts from the state before its first step
            with self.fork.own_steps():
                stats = self.inner_step(batch)
            if self.fork.due:
                self.fork.merge(self)
            return stats, None
        if outer_batch is None:
            return self.inner_step(batch), None
        if self.hypergradient.fused:
            return self.fused_step(batch, outer_batch, phases)
        with phases("inner_forward_backward"):
            stats = self.inner_step(batch)
        return stats, self.outer_step(batch, outer_batch, phases)

    def _outer_batches(self, epoch: int, generator: torch.Generator):
        """An endless stream of outer-set batches whose order depends only on (seed, epoch)."""
        k = 0
        while True:
            self.outer_iter.set_epoch(epoch * 1000 + k)
            for x, y in self.outer_iter:
                yield self.prepare(x, y, generator)
            k += 1

    # ---- epochs ---------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, Any]:
        """One pass over this worker's shard of the training split."""
        t0 = time.perf_counter()
        gen = torch.Generator(device="cpu").manual_seed(
            self.cfg.trainer.seed * 1_000_003 + self.epoch * 101 + self.collective.rank
        )
        self.train_iter.set_epoch(self.epoch)
        # The outer stream draws from its own generator, so a learned method and its fixed twin (no outer stream)
        # see the very same training batches, rotations included.
        outer_gen = torch.Generator(device="cpu").manual_seed(gen.initial_seed() + 7_919)
        outer_stream = self._outer_batches(self.epoch, outer_gen) if self.learns_phi else None
        sums: dict[str, float] = {}
        norms: list[float] = []
        last_outer: tuple[Batch, Batch] | None = None
        outer_seconds, outer_bytes = 0.0, 0
        bar = Progress(self.steps_per_epoch, f"epoch {self.epoch + 1}/{self.cfg.trainer.epochs}", self.progress)
        every = self.cfg.hypergrad.every
        for i, (x, y) in enumerate(self.train_iter):
            if i >= self.steps_per_epoch:
                break
            batch = self.prepare(*self.with_unlabeled(x, y), gen)
            outer = outer_stream is not None and (self.step + 1) % every == 0
            outer_batch = next(outer_stream) if outer and outer_stream is not None else None
            sent, t_outer = self.collective.bytes_sent, time.perf_counter()
            stats, norm = self.train_step(batch, outer_batch)
            check_finite(stats, self.epoch + 1, self.step)
            if outer_batch is not None and norm is not None:
                outer_seconds += time.perf_counter() - t_outer
                outer_bytes += self.collective.bytes_sent - sent
                norms.append(norm)
                self.hypergrad_norms.append((self.step, norm))
                last_outer = (batch, outer_batch)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(loss=stats["loss"])
        bar.close()
        if self.fork is not None and self.fork.pending and self.epoch + 1 >= self.cfg.trainer.epochs:
            self.fork.merge(self)  # the run's last period ends with it; others run on across epochs
        n = max(1, min(i + 1, self.steps_per_epoch))
        metrics = {f"train_{k}" if "/" not in k else k: v / n for k, v in sums.items()}
        if norms:
            metrics["hypergrad_norm"] = sum(norms) / len(norms)
            metrics["outer_steps"] = len(norms)
            metrics["outer_step_seconds"] = outer_seconds / len(norms)
            metrics["outer_step_allreduce_bytes"] = outer_bytes / len(norms)
        if last_outer is not None and self.cfg.hypergrad.report_cosine:
            metrics["hypergrad_cosine"] = hypergrad_cosine(self, *last_outer)
        if self.fork is not None:
            metrics.update(self.fork.epoch_metrics())
        if self.outer is not None:
            metrics.update(self.outer.epoch_metrics())
        if self.collective.world_size > 1:
            metrics["allreduce_bytes"] = self.collective.bytes_sent  # cumulative since this process started
        metrics["lr"] = self.opt_w.param_groups[0]["lr"]
        metrics["epoch_seconds"] = time.perf_counter() - t0
        metrics["steps_per_second"] = n / metrics["epoch_seconds"]
        return metrics

    def evaluate(self, data: TensorData, *, model: nn.Module | None = None) -> dict[str, float]:
        """Main-task loss and accuracy (or MSE) of the net (or `model`) on a split, summed across workers."""
        return evaluate_split(
            model or self.model,
            data,
            task=self.data.task,
            batch_size=self.cfg.trainer.eval_batch_size,
            collective=self.collective,
            device=self.device,
            dtype=self.dtype,
        )

    def fit_epoch(self) -> dict[str, Any]:
        """Train one epoch, evaluate on val, keep the best weights; returns the epoch's metrics (also in history)."""
        metrics = self.train_epoch()
        val = self.evaluate(self.data.val) if len(self.data.val) else {}
        metrics.update({f"val_{k}": v for k, v in val.items()})
        metrics.update(epoch_diagnostics(self))
        metrics["epoch"] = self.epoch + 1
        metrics["step"] = self.step
        self.epoch += 1
        score = val.get("accuracy", -val.get("mse", 0.0)) if val else self.epoch
        if score > self.best["val_accuracy"]:
            self.best = {
                "val_accuracy": score,
                "epoch": self.epoch,
                "state": copy.deepcopy(self.model.state_dict()),
            }
        self.history.append(metrics)
        return metrics

    def fit(self, until_epoch: int | None = None) -> list[dict[str, Any]]:
        """Train from the current epoch to trainer.epochs (or `until_epoch`), evaluating on val each epoch."""
        last = min(self.cfg.trainer.epochs, until_epoch or self.cfg.trainer.epochs)
        while self.epoch < last:
            self.fit_epoch()
        return self.history

    def test(self, *, best: bool = True) -> dict[str, float]:
        """Test-set metrics of the best-on-validation weights (or the final ones)."""
        model = self.model
        if best and self.best["state"] is not None:
            model = copy.deepcopy(self.model)
            model.load_state_dict(self.best["state"])
        return self.evaluate(self.data.test, model=model)

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: W, phi, both optimizers, the scheduler, counters, RNG, history."""
        return trainer_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by state_dict."""
        restore_trainer_state(self, state)


def _norm(grads: Sequence[Tensor]) -> float:
    """The L2 norm of a gradient given as a tensor list (what the hypergradient-norm metric logs)."""
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
