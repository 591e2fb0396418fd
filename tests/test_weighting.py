"""The cheap single-run task weightings, ARML and Auto-lambda (auxray.methods.learned_weights): their maths against
references built another way, the harmful synthetic task weighed lowest, exact resume, and bad settings as one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from auxray.bench.outer_timing import example_batches
from auxray.config import config_from_dict
from auxray.data import build_data
from auxray.errors import UserError
from auxray.hypergrad.weighting import gram, matching_gradient, project_scaled_simplex, sgd_direction
from auxray.train.hyperstep import compute_hypergrad, fused_hyperstep, trainable
from auxray.train.loop import BilevelTrainer
from tests.test_cli import assert_one_line_error, in_process, write_config
from tests.test_train import assert_resume_matches, synthetic_raw


def _raw(name: str, *, method: dict | None = None, trainer: dict | None = None, hypergrad: dict | None = None) -> dict:
    """The synthetic regression (one helpful, one harmful auxiliary target) under ARML or Auto-lambda."""
    raw = synthetic_raw(trainer={"momentum": 0.9, **(trainer or {})})
    raw["method"] = {"name": name, "aux_task": "targets", **(method or {})}
    raw["outer"] = {"lr": 0.05 if name == "arml" else 0.01}
    raw["hypergrad"] = {"every": 2, **(hypergrad or {})}
    return raw


def _trainer(raw: dict) -> BilevelTrainer:
    cfg = config_from_dict(raw)
    return BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)


# ---- the projection ---------------------------------------------------------------------------------------------
def _assert_projection(v: torch.Tensor, total: float) -> None:
    """p = proj(v) is feasible and optimal: v - p is one constant theta on p's support and v <= theta off it (KKT)."""
    p = project_scaled_simplex(v, total)
    assert bool((p >= 0).all()) and float(p.sum()) == pytest.approx(total, rel=1e-12)
    support = p > 0
    theta = (v - p)[support]
    torch.testing.assert_close(theta, theta.mean().expand_as(theta), rtol=0, atol=1e-12)
    assert bool((v[~support] <= theta.mean() + 1e-12).all())


@pytest.mark.parametrize("seed", range(5))
def test_projection_is_the_nearest_point_of_the_scaled_simplex(seed: int) -> None:
    v = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    _assert_projection(v, 6.0)
    # nothing feasible is nearer: random feasible points are all at least as far
    p = project_scaled_simplex(v, 6.0)
    others = torch.distributions.Dirichlet(torch.ones(6, dtype=torch.float64)).sample((500,)) * 6
    assert float((others - v).norm(dim=1).min()) >= float((p - v).norm()) - 1e-12


def test_projection_edge_cases() -> None:
    feasible = torch.tensor([0.5, 1.5, 1.0], dtype=torch.float64)
    assert torch.equal(project_scaled_simplex(feasible, 3.0), feasible)  # already feasible: unchanged
    negative = torch.tensor([-5.0, -1.0, -3.0], dtype=torch.float64)
    torch.testing.assert_close(
        project_scaled_simplex(negative, 3.0), torch.tensor([0.0, 2.5, 0.5], dtype=torch.float64)
    )
    _assert_projection(negative, 3.0)
    ties = torch.tensor([-2.0, -2.0, -2.0], dtype=torch.float64)
    torch.testing.assert_close(project_scaled_simplex(ties, 3.0), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(project_scaled_simplex(torch.tensor([7.0]), 1.0), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="the simplex's total must be positive"):
        project_scaled_simplex(feasible, 0.0)


# ---- ARML's step ------------------------------------------------------------------------------------------------
def test_matching_gradient_is_the_autograd_gradient_of_the_normalised_objective() -> None:
    gen = torch.Generator().manual_seed(0)
    g_main, g1, g2 = (
        (torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64))
        for _ in range(3)
    )
    alpha = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)
    flat = [torch.cat([t.flatten() for t in g]) for g in (g_main, g1, g2)]
    residual = flat[0] - alpha[0] * flat[1] - alpha[1] * flat[2]
    (expected,) = torch.autograd.grad(residual.dot(residual) / flat[0].dot(flat[0]), alpha)
    torch.testing.assert_close(matching_gradient(gram([g_main, g1, g2]), alpha.detach()), expected)


def test_an_arml_step_gives_the_weighted_gradient_and_a_projected_step_on_alpha() -> None:
    trainer = _trainer(_raw("arml", hypergrad={"every": 1}, trainer={"dtype": "float64"}))
    batch, _ = example_batches(trainer, seed=3)
    model, objective = trainer.model, trainer.objective
    res = objective.inner(model, trainer.auxnet, batch)
    trunk = [p for p in model.trunk.parameters()]
    expected = torch.autograd.grad(res.loss, list(model.parameters()), retain_graph=True)
    tasks = [res.main_per_sample.mean(), res.aux_per_sample[:, 0].mean(), res.aux_per_sample[:, 1].mean()]
    flat = [torch.cat([g.flatten() for g in torch.autograd.grad(t, trunk, retain_graph=True)]) for t in tasks]
    alpha = torch.ones(2, dtype=torch.float64, requires_grad=True)
    residual = flat[0] - alpha[0] * flat[1] - alpha[1] * flat[2]
    (step,) = torch.autograd.grad(residual.dot(residual) / flat[0].dot(flat[0]), alpha)
    want_alpha = project_scaled_simplex(alpha.detach() - 0.05 * step, 2.0)

    assert objective.gradient_rule.reduces_itself  # every: 1, so this step moves alpha
    model.zero_grad(set_to_none=True)
    objective.gradient_rule.backward(res, model, lambda grads: grads)
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)  # W's gradient at the alpha of the forward (1, 1)
    torch.testing.assert_close(trainer.auxnet.weights, want_alpha)
    assert not torch.equal(want_alpha, torch.ones(2, dtype=torch.float64))


# ---- Auto-lambda's look-ahead -----------------------------------------------------------------------------------
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_direction_is_the_step_torch_sgd_takes(nesterov: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(4, generator=gen, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    for _ in range(3):  # the first step has no momentum buffer yet; later ones do
        g = torch.randn(4, generator=gen, dtype=torch.float64)
        buf = opt.state.get(p, {}).get("momentum_buffer")
        (d,) = sgd_direction((g,), (p,), [buf], 0.9, 0.01, nesterov)
        want = p.detach() - 0.1 * d
        p.grad = g
        opt.step()
        torch.testing.assert_close(p.detach(), want)


@pytest.mark.parametrize("fused", [True, False])
def test_autolambda_finite_difference_matches_the_exact_second_order_look_ahead(fused: bool) -> None:
    """One virtual SGD step (momentum and weight decay included) on the weighted loss, then the main loss on another
    batch: the finite-difference hypergradient equals d/dlambda of that loss by torch.func, in float64."""
    raw = _raw("autolambda", trainer={"dtype": "float64", "weight_decay": 0.01}, hypergrad={"fd_eps": 1e-5})
    trainer = _trainer(raw)
    for seed in range(3):  # momentum buffers exist before the outer step
        trainer.inner_step(example_batches(trainer, seed)[0])
    batch, _ = example_batches(trainer, seed=7)
    outer_batch, _ = example_batches(trainer, seed=8)  # another training batch
    model, objective, lr = trainer.model, trainer.objective, trainer.opt_w.param_groups[0]["lr"]
    names, w = trainable(model)
    lam = trainer.auxnet.raw.detach().clone().requires_grad_(True)
    leaves = [t.detach().clone().requires_grad_(True) for t in w]

    def at(params):
        return lambda x: functional_call(model, dict(zip(names, params)), (x,))

    inner = objective.inner(at(leaves), lambda losses: losses[:, 1:] @ lam, batch).loss
    grads = torch.autograd.grad(inner, leaves, create_graph=True)
    stepped = []
    for p, g, leaf in zip(w, grads, leaves, strict=True):
        buf = trainer.opt_w.state[p]["momentum_buffer"]
        stepped.append(leaf - lr * (0.9 * buf + g + 0.01 * leaf.detach()))
    (exact,) = torch.autograd.grad(objective.outer(at(stepped), outer_batch), lam)

    args = (objective, model, trainer.auxnet, batch, outer_batch, trainer.hypergradient)
    options = {"inner_lr": lr, "direction": trainer.look_ahead}
    got = (fused_hyperstep(*args, **options).hypergrad if fused else compute_hypergrad(*args, **options))[0]
    torch.testing.assert_close(got, exact, rtol=1e-6, atol=1e-12)
    plain = compute_hypergrad(*args, inner_lr=lr)[0]  # MAXL-F's plain SGD look-ahead differs
    assert float((plain - exact).abs().max()) > 1e-3 * float(exact.abs().max())


# ---- training ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["arml", "autolambda"])
def test_the_harmful_task_ends_with_the_lowest_weight(name: str) -> None:
    trainer = _trainer(_raw(name, trainer={"epochs": 6}))
    trainer.fit()
    first, last = trainer.history[0], trainer.history[-1]
    assert last["task_weight/harmful"] < last["task_weight/helpful"], last
    start = 1.0 if name == "arml" else 0.1
    for task in ("helpful", "harmful"):
        assert last[f"task_weight_change/{task}"] == pytest.approx(abs(last[f"task_weight/{task}"] - start))
        assert last[f"grad_norm_ratio/{task}"] > 0 and -1 <= last[f"grad_cosine/{task}"] <= 1
    if name == "arml":  # alpha >= 0 and sum alpha = K all along
        for h in trainer.history:
            assert h["task_weight/helpful"] + h["task_weight/harmful"] == pytest.approx(2.0)
            assert min(h["task_weight/helpful"], h["task_weight/harmful"]) >= 0
    else:
        assert first["outer_steps"] == trainer.steps_per_epoch // 2


@pytest.mark.parametrize("name", ["arml", "autolambda"])
def test_a_users_auxiliary_task_that_fights_the_main_head_gets_the_lowest_weight(name: str) -> None:
    """A user's AuxiliaryTask (an import path) with a helpful loss and one that pulls the main head towards noise."""
    trainer = _trainer(_raw(name, method={"aux_task": "tests.helpers_user_models:helpful_and_misleading"}))
    trainer.fit()
    last = trainer.history[-1]
    assert last["task_weight/misleading"] < last["task_weight/helper"], last


@pytest.mark.parametrize("name", ["arml", "autolambda"])
def test_the_fixed_twin_keeps_its_initial_weights(name: str) -> None:
    trainer = _trainer(_raw(name, trainer={"epochs": 2}, hypergrad={"enabled": False}))
    trainer.fit()
    start = 1.0 if name == "arml" else 0.1
    assert trainer.history[-1]["task_weight/harmful"] == pytest.approx(start)
    assert "outer_steps" not in trainer.history[-1]


@pytest.mark.parametrize("name", ["arml", "autolambda"])
def test_a_resumed_run_ends_with_the_uninterrupted_weights(name: str) -> None:
    method = {"weight_noise": 0.1} if name == "arml" else {}
    cfg = config_from_dict(_raw(name, method=method, trainer={"epochs": 4}, hypergrad={"every": 3}))
    resumed = assert_resume_matches(cfg, stop_after=2)  # W and any learned parameters bit for bit
    full = _trainer(cfg.model_dump())
    full.fit()
    for key, value in full.auxnet.state_dict().items():
        assert torch.equal(value, resumed.auxnet.state_dict()[key]), key
    if resumed.phi is not None:
        assert resumed.phi.state_dict()["version"] == full.phi.state_dict()["version"] > 0
    assert resumed.history[-1]["task_weight_change/harmful"] > 0  # the weights moved (and match)


def test_autolambda_with_a_lower_bound_keeps_its_weights_non_negative_where_it_diverged_without() -> None:
    """outer.lower_bound: 0 projects lambda onto lambda >= 0 after every step. Without it, seed 3 of the harmful check
    (configs/synthetic_weightings) takes both weights negative and the inner step climbs the losses; with it every
    weight of every outer step stays >= 0 and the error stays that of a trained net."""
    from auxray.bench.harmful import variant_config

    runs = {}
    for variant in ("autolambda", "autolambda_nonnegative"):
        cfg = variant_config(variant, 3)
        trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
        lowest: list[float] = []
        apply = trainer.phi.apply

        def spy(grads, step, lr=None, apply=apply, lowest=lowest, trainer=trainer):
            applied = apply(grads, step, lr)
            lowest.append(float(trainer.auxnet.weights.min()))
            return applied

        trainer.phi.apply = spy
        trainer.fit()
        runs[variant] = (min(lowest), trainer.history[-1]["val_mse"])
    assert runs["autolambda"][0] < 0 and runs["autolambda"][1] > 1e3, runs
    assert runs["autolambda_nonnegative"][0] >= 0 and runs["autolambda_nonnegative"][1] < 2, runs


# ---- bad settings -----------------------------------------------------------------------------------------------
BAD = [
    ("arml", {"outer": {"lr": -0.1}}, "outer.lr: Input should be greater than 0"),
    ("arml", {"method": {"aux_lr": 0.1}}, "method.aux_lr moved to outer.lr"),
    ("arml", {"outer": {"weight_decay": 0.0}}, "outer.weight_decay does nothing for method 'arml'"),
    ("autolambda", {"hypergrad": {"every": 0}}, "hypergrad.every: Input should be greater than 0"),
    ("arml", {"method": {"aux_task": "none"}}, "method 'arml' needs an auxiliary task"),
    ("autolambda", {"method": {"psi": 3}}, "method.psi: not a setting of method 'autolambda'"),
    ("autolambda", {"trainer": {"optimizer": "adam"}}, "set trainer.optimizer: sgd"),
    ("autolambda", {"hypergrad": {"method": "unroll"}}, "autolambda learns task weights by a finite-difference"),
    ("arml", {"method": {"weight_noise": -1}}, "method.weight_noise: Input should be greater than or equal to 0"),
    ("autolambda", {"method": {"init_weight": 0}}, "method.init_weight: Input should be greater than 0"),
    ("arml", {"outer": {"lower_bound": 0.0}}, "outer.lower_bound does nothing for method 'arml'"),
]


@pytest.mark.parametrize(("name", "change", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_settings_are_one_config_line(name: str, change: dict, message: str) -> None:
    raw = _raw(name)
    for section, values in change.items():
        raw[section].update(values)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        config_from_dict(raw)


@pytest.mark.parametrize("name", ["arml", "autolambda"])
def test_bad_settings_exit_2_with_one_line_through_the_cli(name: str, tmp_path: Path, capsys) -> None:
    raw = _raw(name, method={"entropy_weight": 0.5})
    proc = in_process(capsys, "train", str(write_config(tmp_path, raw)), "--no-progress")
    assert_one_line_error(proc, f"method.entropy_weight: not a setting of method '{name}'")
    assert not any(tmp_path.glob("runs*"))


# ---- data-parallel ----------------------------------------------------------------------------------------------
PER_WORKER = 16


def _after_three_steps(trainer: BilevelTrainer, offset: int, size: int) -> dict[str, torch.Tensor]:
    """Three steps (every: 2, so the second moves the weights and the others are plain data-parallel steps) on fixed
    rows of the training split: block k's training rows [64k + offset, + size), Auto-lambda's outer rows 32
    further; then the weights and W. One process takes offset 0 and size 32, worker r offset 16 r and size 16: the
    same rows between them."""
    train = trainer.data.train

    def rows(lo: int):
        return trainer.prepare(train.x[lo : lo + size], train.y[lo : lo + size], None)

    for k in range(3):
        trainer.step += 1
        if trainer.learns_phi and trainer.step % trainer.cfg.hypergrad.every == 0:
            trainer.fused_step(rows(4 * PER_WORKER * k + offset), rows(4 * PER_WORKER * k + 2 * PER_WORKER + offset))
        else:
            trainer.inner_step(rows(4 * PER_WORKER * k + offset))
    weights = trainer.auxnet.task_weights()
    return {
        "weights": weights.detach().cpu(),
        "w": torch.cat([p.detach().flatten() for p in trainer.model.parameters()]),
    }


def _data_parallel_raws() -> dict[str, dict]:
    return {
        name: _raw(name, trainer={"dtype": "float64", "threads": 1, "weight_decay": 0.01}, hypergrad={"every": 2})
        for name in ("arml", "autolambda")
    }


def _data_parallel_worker(config: dict) -> None:
    """Ray Train worker: three steps of each method on this rank's half of the rows, written to disk."""
    import ray.train

    from auxray.train.ray_collective import TorchDistributedCollective

    collective = TorchDistributedCollective(torch.device("cpu"))
    out = {}
    for name, raw in _data_parallel_raws().items():
        cfg = config_from_dict(raw)
        trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), collective=collective, progress=False)
        out[name] = _after_three_steps(trainer, collective.rank * PER_WORKER, PER_WORKER)
    torch.save(out, Path(config["out"]) / f"rank{collective.rank}.pt")
    ray.train.report({"done": 1})


@pytest.mark.slow
@pytest.mark.cluster
def test_two_workers_give_the_single_process_weights(tmp_path: Path) -> None:
    """ARML's per-task gradients and Auto-lambda's look-ahead (its step and its direction d) are all-reduced, so two
    workers on halves of the rows end with the weights and W one process reaches on all of them."""
    import ray
    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from auxray.train.ray_cluster import ensure_ray

    ensure_ray(None, num_cpus=2)
    try:
        TorchTrainer(
            _data_parallel_worker,
            train_loop_config={"out": str(tmp_path)},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=TrainRunConfig(name="weighting", storage_path=str(tmp_path / "ray")),
        ).fit()
    finally:
        ray.shutdown()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, raw in _data_parallel_raws().items():
        single = _after_three_steps(_trainer(raw), 0, 2 * PER_WORKER)
        start = 1.0 if name == "arml" else 0.1
        assert float((single["weights"] - start).abs().max()) > 1e-6  # the weights moved
        for key in ("weights", "w"):
            torch.testing.assert_close(ranks[0][name][key], single[key], rtol=1e-9, atol=1e-12)
            assert torch.equal(ranks[1][name][key], ranks[0][name][key])
