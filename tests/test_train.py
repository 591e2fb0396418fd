"""Behaviour of the single-process bi-level engine: learned weights, resume, BatchNorm, every method."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from auxray.config import config_from_dict
from auxray.data import build_data
from auxray.data.transforms import CIFAR_MEAN, CIFAR_STD, normalize
from auxray.errors import UserError
from auxray.hypergrad import batch_stats_only
from auxray.method_specs import SPECS
from auxray.train import loop
from auxray.train.checkpoint import BEST, LATEST, load_checkpoint, save_checkpoint
from auxray.train.hyperstep import compute_hypergrad
from auxray.train.launch import train
from auxray.train.loop import BilevelTrainer
from auxray.train.run_plan import plan_run
from tests import helpers_user_models as user
from tests.conftest import tiny_cifar_raw


def synthetic_raw(**over: object) -> dict:
    raw = {
        "data": {"dataset": "synthetic", "seed": 0, "outer_fraction": 0.2, "val_fraction": 0.2, "augment": False},
        "model": {"backbone": "mlp", "width": 16},
        "method": {"name": "auxilearn_combine", "aux_task": "targets", "combiner": "linear"},
        "outer": {"lr": 0.05},
        "trainer": {
            "epochs": 6,
            "batch_size": 32,
            "lr": 0.01,
            "optimizer": "sgd",
            "scheduler": "none",
            "weight_decay": 0.0,
            "seed": 0,
            "threads": 1,
            "device": "cpu",
        },
        "hypergrad": {"method": "neumann", "steps": 5, "alpha": 0.01, "every": 2},
        "tracking": {"enabled": False},
    }
    # Another method keeps those of the base method's knobs it has (the combiner's are the base method's own).
    method = SPECS[over.get("method", {}).get("name", raw["method"]["name"])]  # type: ignore[attr-defined,index]
    raw["method"] = {k: v for k, v in raw["method"].items() if k in method.settings.model_fields}  # type: ignore[union-attr]
    raw["outer"] = {k: v for k, v in raw["outer"].items() if k in method.outer_keys}  # type: ignore[union-attr]
    for section, values in over.items():
        raw[section].update(values)  # type: ignore[union-attr]
    return raw


def params_of(trainer: BilevelTrainer) -> list[torch.Tensor]:
    ps = [p.detach().clone() for p in trainer.model.parameters()]
    if trainer.auxnet is not None:
        ps += [p.detach().clone() for p in trainer.auxnet.parameters()]
    return ps


def test_learned_combiner_downweights_harmful_auxiliary():
    cfg = config_from_dict(synthetic_raw(trainer={"epochs": 12}))
    trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    trainer.fit()
    last = trainer.history[-1]
    assert last["task_weight/harmful"] < last["task_weight/helpful"], last
    first = trainer.history[0]
    assert last["task_weight/harmful"] < first["task_weight/harmful"], (first, last)


@pytest.mark.parametrize("method", ["neumann", "cg", "exact", "unroll", "fd"])
def test_every_hypergradient_method_moves_phi(method, monkeypatch):
    """Each outer step applies the hypergradient it computed; the first (Adam) moves each weight outer.lr against it."""
    computed = []

    def keeping(step):
        def run(*args, **kwargs):
            out = step(*args, **kwargs)
            computed.append(out.hypergrad if hasattr(out, "hypergrad") else out)
            return out

        return run

    monkeypatch.setattr(loop, "fused_hyperstep", keeping(loop.fused_hyperstep))
    monkeypatch.setattr(loop, "compute_hypergrad", keeping(loop.compute_hypergrad))
    cfg = config_from_dict(
        synthetic_raw(hypergrad={"method": method, "steps": 3}, trainer={"epochs": 1}, outer={"weight_decay": 0.0})
    )
    trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    raw = trainer.auxnet.raw
    applied, moves, before = [], [], []

    def pre(*_: object) -> None:
        applied.append(raw.grad.detach().clone())
        before.append(raw.detach().clone())

    trainer.phi.optimizer.register_step_pre_hook(pre)
    trainer.phi.optimizer.register_step_post_hook(lambda *_: moves.append(raw.detach() - before[-1]))
    trainer.fit()
    norms = [norm for _, norm in trainer.hypergrad_norms]
    assert len(computed) == len(applied) == len(norms) == trainer.step // cfg.hypergrad.every == 4
    for (hypergrad,), grad, norm in zip(computed, applied, norms):
        torch.testing.assert_close(grad, hypergrad, rtol=0, atol=0)
        assert norm == pytest.approx(float(hypergrad.norm()), rel=1e-6)
    assert trainer.history[-1]["hypergrad_norm"] == pytest.approx(sum(norms) / len(norms))
    first = applied[0]
    torch.testing.assert_close(moves[0], -cfg.outer.lr * first / (first.abs() + 1e-8), rtol=1e-4, atol=1e-6)


def test_sgd_on_phi_with_clipping_moves_phi_by_at_most_lr_times_clip_per_outer_step():
    """outer.optimizer: sgd and outer.grad_clip in a run: every outer step's hypergradient is clipped to
    the given norm before SGD (momentum 0.9) applies it, so phi's k-th step is at most lr * clip * sum_j 0.9^j."""
    lr, clip = 1.0, 1e-4
    cfg = config_from_dict(
        synthetic_raw(
            outer={"optimizer": "sgd", "grad_clip": clip, "lr": lr, "weight_decay": 0.0},
            trainer={"epochs": 1},
        )
    )
    trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    moves: list[float] = []

    def flat() -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in trainer.auxnet.parameters()])

    last = flat()

    def record(*_: object) -> None:
        nonlocal last
        now = flat()
        moves.append(float((now - last).norm()))
        last = now

    trainer.phi.optimizer.register_step_post_hook(record)
    trainer.fit()
    assert len(moves) == trainer.step // cfg.hypergrad.every > 3
    assert trainer.history[-1]["hypergrad_norm"] > 10 * clip  # unclipped, the first step would be 10x longer
    assert moves[0] == pytest.approx(lr * clip, rel=2e-3)  # clip_grad_norm_ divides by (norm + 1e-6)
    assert all(m <= lr * clip * sum(0.9**j for j in range(k + 1)) * 1.002 for k, m in enumerate(moves))


def assert_resume_matches(cfg, stop_after: int) -> BilevelTrainer:
    """Train uninterrupted, and again stopped after `stop_after` epochs then resumed from the state in a
    fresh trainer: the two must end with bit-identical W and phi."""
    data = build_data(cfg.data, cfg.method.aux_tasks)
    full = BilevelTrainer(cfg, data, progress=False)
    full.fit()
    first = BilevelTrainer(cfg, data, progress=False)
    first.fit(until_epoch=stop_after)
    with tempfile.TemporaryDirectory() as tmp:  # through a file, read back with weights_only=True
        state = load_checkpoint(save_checkpoint(first.state_dict(), Path(tmp) / LATEST))
    resumed = BilevelTrainer(cfg, data, progress=False)
    resumed.load_state_dict(state)
    resumed.fit()
    for a, b in zip(params_of(full), params_of(resumed), strict=True):
        assert torch.equal(a, b)
    return resumed


def test_resumed_run_matches_uninterrupted_run_synthetic():
    resumed = assert_resume_matches(config_from_dict(synthetic_raw(trainer={"epochs": 4})), stop_after=2)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]


@pytest.mark.parametrize("method", ["auxilearn_labels", "jtds"])
def test_resumed_run_matches_uninterrupted_run_cifar(cifar_zip, tmp_path, method):
    extra = {"aux_task": "rotation"} if method == "jtds" else {"psi": 2}
    assert_resume_matches(config_from_dict(tiny_cifar_raw(cifar_zip, tmp_path, name=method, **extra)), stop_after=1)


def test_checkpoints_load_with_weights_only_and_resume_from_disk_exactly(tmp_path):
    cfg = config_from_dict(
        synthetic_raw(trainer={"epochs": 2, "max_steps_per_epoch": 20, "checkpoint_dir": str(tmp_path)})
    )
    quiet = {"progress": False, "log": lambda _: None}
    whole = Path(train(plan_run(cfg, name="whole"), **quiet)["run_dir"])
    for name in (LATEST, BEST):
        state = torch.load(whole / name, map_location="cpu", weights_only=True)
        assert state["config"]["method"]["name"] == "auxilearn_combine" and state["model"]
    train(plan_run(cfg, name="split"), until_epoch=1, **quiet)
    split = Path(train(plan_run(cfg, name="split", resume=True), **quiet)["run_dir"])
    a, b = load_checkpoint(whole / LATEST), load_checkpoint(split / LATEST)
    assert b["epoch"] == 2 and [h["epoch"] for h in b["history"]] == [1, 2]
    for key in ("model", "auxnet"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint entry state\['bad'\] is a object"):
        save_checkpoint({"bad": object()}, tmp_path / "x.pt")
    torch.save({"rng": np.random.get_state()}, tmp_path / "old.pt")
    with pytest.raises(UserError, match="holds a pickled object"):
        load_checkpoint(tmp_path / "old.pt")


def test_user_backbone_and_aux_task_by_import_path_train_an_epoch():
    raw = synthetic_raw(trainer={"epochs": 1, "max_steps_per_epoch": 10})
    raw["model"] = {"backbone": "tests.helpers_user_models:tiny_trunk", "width": 8}
    raw["method"].update(aux_task="tests.helpers_user_models:helpful_target")
    cfg = config_from_dict(raw)
    user.CALLS.clear()
    trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    assert user.CALLS == [{"in_channels": 1, "width": 8, "in_features": 20}]
    assert set(trainer.model.heads) == {"main", "helper"} and trainer.objective.aux_names == ("helper",)
    trainer.fit()
    last, norms = trainer.history[-1], [norm for _, norm in trainer.hypergrad_norms]
    assert last["outer_steps"] == len(norms) == trainer.step // cfg.hypergrad.every == 4
    assert last["hypergrad_norm"] == pytest.approx(sum(norms) / len(norms))
    learned = float(torch.nn.functional.softplus(trainer.auxnet.raw.detach()))  # the combiner's weight, from 1
    assert last["task_weight/helper"] == pytest.approx(learned) and learned != pytest.approx(1.0, abs=1e-3)


def test_hyperstep_leaves_batchnorm_statistics_alone(cifar_zip, tmp_path):
    cfg = config_from_dict(tiny_cifar_raw(cifar_zip, tmp_path, name="auxilearn_combine", aux_task="rotation"))
    trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    trainer.train_iter.set_epoch(0)
    x, y = next(iter(trainer.train_iter))
    gen = torch.Generator().manual_seed(0)
    batch = trainer.prepare(x, y, gen)
    outer_batch = trainer.prepare(*next(iter(trainer.outer_iter)), gen)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if "running" in k or "num_batches" in k}
    assert before, "the ConvNet should have BatchNorm buffers"
    grads = compute_hypergrad(
        trainer.objective, trainer.model, trainer.auxnet, batch, outer_batch, trainer.hypergradient, inner_lr=0.05
    )
    after = trainer.model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert len(grads) == len(list(trainer.auxnet.parameters()))
    assert sum(float(g.abs().sum()) for g in grads) > 0


def subclass_usage(trainer: BilevelTrainer) -> float:
    """Effective number of sub-classes in use, as a fraction of psi, averaged over classes: the
    perplexity of each class's mean soft-label distribution (1/psi when all its images share one
    sub-class, 1 when they spread evenly)."""
    it = trainer.data.train
    trainer.auxnet.train()
    with torch.no_grad(), batch_stats_only(trainer.auxnet):
        probs = trainer.auxnet(normalize(it.x, CIFAR_MEAN, CIFAR_STD), it.y)
    psi = trainer.objective.psi
    starts = [0] + torch.tensor(psi).cumsum(0).tolist()
    used = []
    for c in range(len(psi)):
        block = probs[it.y == c, starts[c] : starts[c + 1]].mean(dim=0)
        entropy = -(block * block.clamp_min(1e-12).log()).sum()
        used.append(float(entropy.exp()) / psi[c])
    return sum(used) / len(used)


def test_label_entropy_term_prevents_collapse(cifar_zip, tmp_path):
    def run(entropy_weight: float) -> tuple[float, float]:
        raw = tiny_cifar_raw(cifar_zip, tmp_path, name="auxilearn_labels", psi=4, entropy_weight=entropy_weight)
        raw["outer"] = {"lr": 0.01}
        raw["trainer"].update(epochs=4)
        raw["hypergrad"].update(every=1)
        cfg = config_from_dict(raw)
        trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
        start = subclass_usage(trainer)
        trainer.fit()
        return start, subclass_usage(trainer)

    start, with_entropy = run(1.0)
    _, without = run(0.0)
    assert with_entropy > 0.95, with_entropy
    assert without < 0.6 < start, (start, without)


def test_coordinator_ignores_a_replayed_outer_step():
    """The coordinator applies each outer-step id once: a replayed call (a retried RPC, a restarted worker sending
    the same step again) leaves phi, its optimizer and its version as they were."""
    from auxray.method_settings import OuterOptimizer
    from auxray.train.coordinator import Coordinator

    coordinator = Coordinator(OuterOptimizer(lr=0.1).model_dump())
    coordinator.initialise([torch.ones(3)])
    grad = [torch.tensor([1.0, -1.0, 0.5])]
    version, after_first = coordinator.apply(grad, step=5)
    # Adam's first step moves each coordinate by outer.lr against its gradient's sign.
    assert version == 1 and torch.allclose(after_first[0], torch.tensor([0.9, 1.1, 0.9]), rtol=0, atol=1e-6)
    replayed_version, after_replay = coordinator.apply(grad, step=5)
    assert replayed_version == 1 and torch.equal(after_replay[0], after_first[0]) and coordinator.applied == 1
    assert coordinator.apply(grad, step=4)[0] == 1  # an older step id is a replay too
    assert coordinator.apply(grad, step=10)[0] == 2 and coordinator.state()["optimizer"]["last_step"] == 10
