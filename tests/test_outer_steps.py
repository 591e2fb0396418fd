"""Outer steps that move learned weights: weights normalised to sum to the number of tasks, the outer learning rate
stated per run, hypergradients accumulated over outer batches (auxray.train.outer_steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from auxray.auxnets import LinearCombiner, TaskDataScheduler
from auxray.config import config_from_dict
from auxray.data import build_data
from auxray.errors import UserError
from auxray.method_settings import OuterOptimizer
from auxray.train.coordinator import Coordinator
from auxray.train.loop import BilevelTrainer
from auxray.train.outer_steps import OuterSteps
from auxray.train.phi_optimizer import PhiOptimizer
from tests.test_cli import assert_one_line_error, in_process, write_config
from tests.test_train import assert_resume_matches, synthetic_raw

NORMALISED = {"weight_norm": "sum_to_tasks"}
BUDGET = {"lr_per": "run", "lr": 2.0}


def fitted(epochs: int, outer: dict | None = None, **method: object) -> BilevelTrainer:
    """A synthetic run (one helpful, one harmful auxiliary) trained for `epochs` epochs of 9 steps."""
    cfg = config_from_dict(synthetic_raw(method=method, outer=outer or {}, trainer={"epochs": epochs}))
    trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    trainer.fit()
    return trainer


def final_weights(trainer: BilevelTrainer) -> dict[str, float]:
    return {k.split("/", 1)[1]: v for k, v in trainer.history[-1].items() if k.startswith("task_weight/")}


# ---- normalised weights ------------------------------------------------------------------------------------------
def test_normalised_combiner_weights_start_at_one_and_always_sum_to_the_task_count():
    comb = LinearCombiner(3, normalised=True)
    torch.testing.assert_close(comb.weights, torch.ones(3))
    with torch.no_grad():
        comb.raw.copy_(torch.tensor([2.0, -1.0, 0.3]))
    weights = comb.weights.detach()
    assert float(weights.sum()) == pytest.approx(3.0) and bool((weights > 0).all())
    assert weights[0] > weights[2] > weights[1]


def test_jtds_starts_at_one_when_normalised_or_asked_and_at_an_eighth_as_published():
    """The scheduler's own default is JTDS's published 1/8; a config's (method.init_weight unset) is 1."""
    torch.manual_seed(0)
    features, losses = torch.randn(64, 16), torch.rand(64, 3)
    for scheduler, start in (
        (TaskDataScheduler(16, 3), 0.125),
        (TaskDataScheduler(16, 3, init_weight=1.0), 1.0),
        (TaskDataScheduler(16, 3, normalised=True), 1.0),
    ):
        torch.testing.assert_close(scheduler.task_weights(features, losses), torch.full((3,), start), rtol=0.02, atol=0)
    for init_weight, start in ((None, 1.0), (0.125, 0.125)):
        raw = synthetic_raw(method={"name": "jtds", "init_weight": init_weight})
        cfg = config_from_dict(raw)
        trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
        scheduler = trainer.auxnet
        assert isinstance(scheduler, TaskDataScheduler)
        torch.testing.assert_close(
            scheduler.task_weights(torch.randn(64, scheduler.feat_dim), losses[:, :2]),
            torch.full((2,), start),
            rtol=0.02,
            atol=0,
        )
    normalised = TaskDataScheduler(16, 3, normalised=True)
    with torch.no_grad():
        normalised.alpha.copy_(torch.tensor([1.0, -2.0, 0.5]))
    assert float(normalised.importance().detach().sum()) == pytest.approx(3.0)


def test_normalised_weights_move_and_the_harmful_task_ends_below_a_quarter_of_the_largest():
    """The issue's targets on the synthetic problem (seed 0): each weight moves by at least 0.3x its start (1), and
    the harmful task ends below 0.25x the largest; the published parameterisation misses the second (0.35x)."""
    weights = final_weights(fitted(12, BUDGET, **NORMALISED))
    assert sum(weights.values()) == pytest.approx(2.0)
    assert all(abs(w - 1.0) >= 0.3 for w in weights.values()), weights
    assert weights["harmful"] < 0.25 * weights["helpful"], weights
    before = final_weights(fitted(12))
    assert before["harmful"] > 0.25 * before["helpful"], before


# ---- the learning rate per run -----------------------------------------------------------------------------------
def _movement(trainer: BilevelTrainer) -> float:
    """The largest distance of a raw combiner parameter from its start."""
    return float((trainer.auxnet.raw - trainer.initial_auxnet.raw).detach().abs().max())


def test_a_run_budget_moves_a_short_and_a_4x_longer_run_about_as_far_and_within_the_budget():
    """outer.lr_per: run shares outer.lr over the run's phi steps: runs of 3 and 12 epochs move their logits within
    a factor 2 of each other (1.36 and 0.96 here), both below the budget (Adam moves a coordinate by about its lr
    at most per step); one per-step rate moves the 4x run more than twice as far."""
    short, long = fitted(3, BUDGET, **NORMALISED), fitted(12, BUDGET, **NORMALISED)
    assert short.outer.lr == pytest.approx(2.0 / (3 * 9 // 2)) and long.outer.lr == pytest.approx(2.0 / (12 * 9 // 2))
    a, b = _movement(short), _movement(long)
    assert 0.5 < b / a < 2.0 and max(a, b) <= BUDGET["lr"], (a, b)
    per_step = {"lr": long.outer.lr}  # the long run's rate, per step: 0.32 and 0.96 here
    assert _movement(fitted(12, per_step, **NORMALISED)) > 2 * _movement(fitted(3, per_step, **NORMALISED))


# ---- accumulation ------------------------------------------------------------------------------------------------
class _CoordinatorUpdater:
    """A PhiUpdater that steps phi through the Ray coordinator's class (in this process): the data-parallel path."""

    def __init__(self, auxnet: nn.Module, outer: OuterOptimizer) -> None:
        self.params = list(auxnet.parameters())
        self.coordinator = Coordinator(outer.model_dump())
        self.coordinator.initialise([p.detach() for p in self.params])
        self.bytes_sent = 0

    def apply(self, grads, step: int, lr: float | None = None) -> bool:
        version, phi = self.coordinator.apply(list(grads), step, lr)
        with torch.no_grad():
            for p, new in zip(self.params, phi, strict=True):
                p.copy_(new)
        return version > 0

    def state_dict(self) -> dict:
        return self.coordinator.state()

    def load_state_dict(self, state: dict) -> None:
        self.coordinator.initialise(state["phi"], state["optimizer"])


@pytest.mark.parametrize("updater", ["local", "coordinator"])
def test_accumulating_n_hypergradients_equals_one_step_on_their_mean(updater):
    cfg = config_from_dict(synthetic_raw(outer={"lr_per": "run", "lr": 0.3}, hypergrad={"accumulate": 3}))
    torch.manual_seed(0)
    start = nn.Linear(4, 2).double()
    grads = [[torch.randn_like(p) for p in start.parameters()] for _ in range(3)]
    net = nn.Linear(4, 2).double()
    net.load_state_dict(start.state_dict())
    phi = PhiOptimizer(net, cfg.outer) if updater == "local" else _CoordinatorUpdater(net, cfg.outer)
    outer = OuterSteps(cfg, phi, outer_batches=7)  # 2 phi steps: lr = 0.3 / 2
    assert [outer.add(g, step) for step, g in enumerate(grads, 1)] == [False, False, True]

    reference = nn.Linear(4, 2).double()
    reference.load_state_dict(start.state_dict())
    mean = [(a + b + c) / 3 for a, b, c in zip(*grads, strict=True)]
    PhiOptimizer(reference, cfg.outer).apply(mean, step=3, lr=0.15)
    for got, want in zip(net.parameters(), reference.parameters(), strict=True):
        assert torch.equal(got, want)


def test_resume_mid_group_gives_the_uninterrupted_result():
    """4 outer batches in epoch 1 and groups of 3: the checkpoint after it holds a group's first batch."""
    cfg = config_from_dict(
        synthetic_raw(method=NORMALISED, outer=BUDGET, trainer={"epochs": 3}, hypergrad={"accumulate": 3})
    )
    resumed = assert_resume_matches(cfg, stop_after=1)
    assert resumed.phi is not None and resumed.phi.state_dict()["version"] == 3 * 9 // 2 // 3
    assert "hypergrad_successive_cosine" in resumed.history[-1]


def test_more_accumulation_than_outer_batches_is_one_line():
    cfg = config_from_dict(synthetic_raw(trainer={"epochs": 1}, hypergrad={"accumulate": 5}))
    with pytest.raises(UserError, match=r"hypergrad\.accumulate: 5 exceeds the run's 4 outer batches"):
        BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)


def test_a_run_shorter_than_hypergrad_every_trains_without_an_outer_step():
    """With the defaults (no accumulation, a per-step rate) a run of fewer inner steps than hypergrad.every takes no
    outer step and is not an error (tiny test runs and quick tables are such runs)."""
    cfg = config_from_dict(synthetic_raw(trainer={"epochs": 1}, hypergrad={"every": 50}))
    trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    trainer.fit()
    assert trainer.step == 9 and trainer.hypergrad_norms == [] and trainer.phi is not None
    assert trainer.phi.state_dict()["version"] == 0


# ---- bad settings ------------------------------------------------------------------------------------------------
BAD = [
    ({"method": {"weight_norm": "softmax"}}, r"method\.weight_norm: Input should be 'none' or 'sum_to_tasks'"),
    ({"outer": {"lr_per": "epoch"}}, r"outer\.lr_per: Input should be 'step' or 'run'"),
    ({"hypergrad": {"accumulate": 0}}, r"hypergrad\.accumulate: Input should be greater than or equal to 1"),
    ({"method": {**NORMALISED, "combiner": "nonlinear"}}, r"normalises the linear combiner's weights only"),
    ({"method": {**NORMALISED, "monotone": False}}, r"keeps every weight positive; drop monotone"),
    (
        {"method": {"init_weight": 0.5}},
        r"^invalid config <dict>: method\.init_weight: not a setting of method 'auxilearn_combine'$",
    ),
    (
        {"method": {"name": "equal", **NORMALISED}},
        r"^invalid config <dict>: method\.weight_norm: not a setting of method 'equal'$",
    ),
    ({"method": {"name": "arml"}, "outer": {"lr_per": "run"}}, r"outer\.lr_per does nothing for method 'arml'"),
    ({"method": {"name": "equal"}, "outer": {"lr": 0.1}}, r"outer\.lr does nothing for method 'equal'"),
    ({"outer": {"lower_bound": 0.0}}, r"outer\.lower_bound does nothing for method 'auxilearn_combine'"),
    ({"method": {"aux_lr": 0.1}}, r"^invalid config <dict>: method\.aux_lr moved to outer\.lr$"),
    ({"method": {"name": "gcs"}, "hypergrad": {"accumulate": 2}}, r"hypergrad\.accumulate groups outer steps"),
    ({"method": {"name": "jtds", **NORMALISED, "init_weight": 0.5}}, r"starts every weight at 1; drop init_weight"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_outer_step_settings_are_one_config_line(change: dict, message: str):
    raw = synthetic_raw(**change)
    with pytest.raises(UserError, match=message) as err:
        config_from_dict(raw)
    assert "\n" not in str(err.value)


def test_a_bad_outer_step_setting_exits_2_with_one_line_through_the_cli(tmp_path, capsys):
    raw = synthetic_raw(hypergrad={"accumulate": -1})
    proc = in_process(capsys, "train", str(write_config(tmp_path, raw)), "--no-progress")
    assert_one_line_error(proc, "hypergrad.accumulate: Input should be greater than or equal to 1")
    assert not any(tmp_path.glob("runs*"))


# ---- data-parallel -----------------------------------------------------------------------------------------------
PER_WORKER = 16
ACCUMULATING = synthetic_raw(
    method=NORMALISED,
    outer=BUDGET,
    trainer={"dtype": "float64", "threads": 1, "epochs": 1},
    hypergrad={"every": 1, "accumulate": 2},
)


def _after_four_outer_batches(trainer: BilevelTrainer, offset: int, size: int) -> dict[str, object]:
    """Four outer batches (every: 1, groups of 2: phi steps at the second and fourth) on fixed rows of the training
    split, block k's [64k + offset, + size) and its outer rows 32 further; then phi and W. One process takes offset
    0 and size 32, worker r offset 16 r and size 16: the same rows between them."""
    train = trainer.data.train

    def rows(lo: int):
        return trainer.prepare(train.x[lo : lo + size], train.y[lo : lo + size], None)

    for k in range(4):
        trainer.step += 1
        trainer.fused_step(rows(4 * PER_WORKER * k + offset), rows(4 * PER_WORKER * k + 2 * PER_WORKER + offset))
    return {
        "phi": trainer.auxnet.raw.detach().cpu().clone(),
        "w": torch.cat([p.detach().flatten() for p in trainer.model.parameters()]),
        "lr": trainer.outer.lr if trainer.outer is not None else None,
    }


def _accumulating_worker(config: dict) -> None:
    """Ray Train worker: four outer batches on this rank's half of the rows, written to disk."""
    import ray.train

    from auxray.train.ray_collective import TorchDistributedCollective

    collective = TorchDistributedCollective(torch.device("cpu"))
    cfg = config_from_dict(ACCUMULATING)
    trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), collective=collective, progress=False)
    out = _after_four_outer_batches(trainer, collective.rank * PER_WORKER, PER_WORKER)
    torch.save(out, Path(config["out"]) / f"rank{collective.rank}.pt")
    ray.train.report({"done": 1})


@pytest.mark.slow
@pytest.mark.cluster
def test_two_workers_accumulate_to_the_single_process_phi(tmp_path: Path) -> None:
    """The groups are averaged after the all-reduce: two workers on halves of the rows step phi (twice, each on a
    group of two outer batches) to where one process on all of them does."""
    import ray
    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from auxray.train.ray_cluster import ensure_ray

    ensure_ray(None, num_cpus=2)
    try:
        TorchTrainer(
            _accumulating_worker,
            train_loop_config={"out": str(tmp_path)},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=TrainRunConfig(name="accumulate", storage_path=str(tmp_path / "ray")),
        ).fit()
    finally:
        ray.shutdown()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # One process with the two workers' batches together takes as many steps per epoch, so the same phi steps.
    cfg = config_from_dict({**ACCUMULATING, "trainer": {**ACCUMULATING["trainer"], "batch_size": 64}})
    single_trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    single = _after_four_outer_batches(single_trainer, 0, 2 * PER_WORKER)
    assert single_trainer.phi is not None and single_trainer.phi.state_dict()["version"] == 2
    assert single_trainer.outer is not None and ranks[0]["lr"] == single_trainer.outer.lr
    assert float(single["phi"].abs().max()) > 1e-3  # phi moved
    for key in ("phi", "w"):
        torch.testing.assert_close(ranks[0][key], single[key], rtol=1e-9, atol=1e-12)
        assert torch.equal(ranks[1][key], ranks[0][key])
