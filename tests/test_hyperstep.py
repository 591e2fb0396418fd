"""The cheap outer step computes what it claims: the reused inner-step graph, a sub-batch and a parameter subset
each against a reference built another way, in float64; the default path unchanged; the twin takes no outer step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call

from auxray.auxnets import label_entropy_regulariser
from auxray.bench.outer_timing import example_batches
from auxray.config import config_from_dict
from auxray.data import build_data
from auxray.hypergrad import batch_stats_only, functional_implicit_hypergrad, unrolled_hypergrad
from auxray.train import loop
from auxray.train.hypergradient import build_hypergradient
from auxray.train.hyperstep import compute_hypergrad, fused_hyperstep, hypergrad_mask, trainable
from auxray.train.loop import BilevelTrainer
from tests.conftest import tiny_cifar_raw
from tests.test_train import synthetic_raw

METHOD_OF = {
    "neumann": "auxilearn_combine",
    "cg": "jtds",
    "exact": "auxilearn_combine",
    "unroll": "maxl",
    "fd": "maxl_fo",
}


def _trainer(cifar_zip, tmp_path, hypergrad_method: str, **hypergrad) -> BilevelTrainer:
    name = METHOD_OF[hypergrad_method]
    extra = {"aux_task": "rotation"} if name in ("auxilearn_combine", "jtds") else {"focal_gamma": 2.0}
    raw = tiny_cifar_raw(cifar_zip, tmp_path, name=name, **extra)
    raw["model"]["width"] = 4
    raw["trainer"]["dtype"] = "float64"
    raw["hypergrad"].update(method=hypergrad_method, **hypergrad)
    cfg = config_from_dict(raw)
    return BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)


def _close(a, b, rtol=1e-9) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=1e-12)


def _inner_gradient(trainer: BilevelTrainer, batch) -> tuple[torch.Tensor, ...]:
    """dL_T/dW by a plain backward through the module, as an ordinary inner step takes it."""
    model = copy.deepcopy(trainer.model)
    with batch_stats_only(model):
        loss = trainer.objective.inner(model, trainer.auxnet, batch).loss
    return torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=False)


@pytest.mark.parametrize("method", ["neumann", "cg", "unroll", "fd"])
@pytest.mark.parametrize("params", ["all", "last_block"])
def test_reused_graph_hypergradient_equals_recomputed_one(cifar_zip, tmp_path, method, params):
    trainer = _trainer(cifar_zip, tmp_path, method, params=params, steps=3)
    batch, aux = example_batches(trainer, seed=1)
    lr = trainer.opt_w.param_groups[0]["lr"]
    recomputed = compute_hypergrad(
        trainer.objective,
        trainer.model,
        trainer.auxnet,
        batch,
        aux,
        trainer.hypergradient,
        inner_lr=lr,
    )
    plain_w_grad = _inner_gradient(trainer, batch)
    fused = fused_hyperstep(
        trainer.objective,
        trainer.model,
        trainer.auxnet,
        batch,
        aux,
        trainer.hypergradient,
        inner_lr=lr,
    )
    assert sum(float(g.abs().sum()) for g in recomputed) > 0
    _close(fused.hypergrad, recomputed)
    _close(fused.w_grads, plain_w_grad)


def test_fused_step_updates_batchnorm_statistics_once_like_a_plain_step(cifar_zip, tmp_path):
    trainer = _trainer(cifar_zip, tmp_path, "neumann")
    batch, aux = example_batches(trainer, seed=2)
    plain = copy.deepcopy(trainer.model)
    trainer.objective.inner(plain, trainer.auxnet, batch)
    fused_hyperstep(
        trainer.objective,
        trainer.model,
        trainer.auxnet,
        batch,
        aux,
        trainer.hypergradient,
        inner_lr=0.05,
    )
    buffers = dict(trainer.model.named_buffers())
    for name, expected in plain.named_buffers():
        torch.testing.assert_close(buffers[name], expected, rtol=1e-12, atol=0)
    assert int(buffers["trunk.blocks.0.1.num_batches_tracked"]) == 1


def _reference_implicit(trainer: BilevelTrainer, batch, aux, names: list[str]) -> tuple[torch.Tensor, ...]:
    """The implicit hypergradient through the named primary parameters only, built directly on
    torch.func.functional_call and auxray.hypergrad's functional API (the other parameters are constants)."""
    model, auxnet, obj, cfg = trainer.model, trainer.auxnet, trainer.objective, trainer.cfg.hypergrad
    fixed = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    phi_names = [n for n, _ in auxnet.named_parameters()]

    def forward(w):
        return lambda *a, **k: functional_call(model, {**buffers, **fixed, **dict(zip(names, w))}, a, k)

    def inner(w, phi):
        return obj.inner(forward(w), lambda *a: functional_call(auxnet, dict(zip(phi_names, phi)), a), batch).loss

    params = tuple(dict(model.named_parameters())[n] for n in names)
    with batch_stats_only(model, auxnet):
        return tuple(
            functional_implicit_hypergrad(
                inner,
                lambda w: obj.outer(forward(w), aux),
                params,
                tuple(auxnet.parameters()),
                method=cfg.method,
                steps=cfg.steps,
                alpha=cfg.alpha,
            )
        )


def test_default_path_is_the_plain_implicit_hypergradient(cifar_zip, tmp_path):
    trainer = _trainer(cifar_zip, tmp_path, "neumann", steps=4)
    batch, aux = example_batches(trainer, seed=3)
    got = compute_hypergrad(
        trainer.objective, trainer.model, trainer.auxnet, batch, aux, trainer.hypergradient, inner_lr=0.05
    )
    _close(got, _reference_implicit(trainer, batch, aux, trainable(trainer.model)[0]))


@pytest.mark.parametrize("method", ["neumann", "cg"])
def test_parameter_subset_matches_a_hand_built_reference(cifar_zip, tmp_path, method):
    trainer = _trainer(cifar_zip, tmp_path, method, params="last_block")
    names = trainable(trainer.model)[0]
    chosen = [n for n, m in zip(names, trainer.hyper_mask) if m]
    expected_prefixes = ("heads.", "trunk.blocks.3.")
    assert chosen == [n for n in names if n.startswith(expected_prefixes)] and len(chosen) < len(names)
    batch, aux = example_batches(trainer, seed=4)
    got = compute_hypergrad(
        trainer.objective,
        trainer.model,
        trainer.auxnet,
        batch,
        aux,
        trainer.hypergradient,
        inner_lr=0.05,
    )
    _close(got, _reference_implicit(trainer, batch, aux, chosen))
    everything = build_hypergradient(trainer.cfg.hypergrad)  # no mask: through every primary parameter
    full = compute_hypergrad(trainer.objective, trainer.model, trainer.auxnet, batch, aux, everything, inner_lr=0.05)
    assert any(not torch.allclose(a, b) for a, b in zip(got, full))


@pytest.mark.parametrize("method", ["neumann", "unroll"])
def test_sub_batch_equals_the_hypergradient_of_the_sliced_batches(cifar_zip, tmp_path, method):
    trainer = _trainer(cifar_zip, tmp_path, method, batch_size=6)
    batch, aux = example_batches(trainer, seed=5)
    assert len(batch["y"]) > 6 and len(aux["y"]) > 6
    got = compute_hypergrad(
        trainer.objective, trainer.model, trainer.auxnet, batch, aux, trainer.hypergradient, inner_lr=0.05
    )
    sliced_batch = {k: v[:6] for k, v in batch.items()}
    sliced_aux = {k: v[:6] for k, v in aux.items()}
    if method == "unroll":
        model, auxnet, obj = trainer.model, trainer.auxnet, trainer.objective
        w_names, w = trainable(model)
        phi_names, phi = trainable(auxnet)
        buffers = dict(model.named_buffers())

        def forward(ws):
            return lambda *a, **k: functional_call(model, {**buffers, **dict(zip(w_names, ws))}, a, k)

        with batch_stats_only(model, auxnet):
            expected = unrolled_hypergrad(
                lambda ws, ph: (
                    obj.inner(
                        forward(ws), lambda *a: functional_call(auxnet, dict(zip(phi_names, ph)), a), sliced_batch
                    ).loss
                ),
                lambda ws: obj.outer(forward(ws), sliced_aux),
                w,
                phi,
                lr=0.05,
            )
            direct = torch.autograd.grad(
                label_entropy_regulariser(
                    functional_call(auxnet, dict(zip(phi_names, phi)), (sliced_batch["x"], sliced_batch["y"]))
                ),
                phi,
            )
            direct = tuple(obj.entropy_weight * d for d in direct)
        expected = tuple(e + d for e, d in zip(expected, direct))
    else:
        expected = _reference_implicit(trainer, sliced_batch, sliced_aux, trainable(trainer.model)[0])
    _close(got, expected)


def test_hypergrad_mask_names():
    names = ["trunk.net.0.weight", "trunk.net.2.weight", "heads.main.weight", "heads.helpful.bias"]
    assert hypergrad_mask(names, "all", "mlp") == [True] * 4
    assert hypergrad_mask(names, "last_block", "mlp") == [False, True, True, True]
    assert hypergrad_mask(
        ["trunk.layer4.1.conv1.weight", "trunk.layer3.0.bn1.bias", "heads.main.bias"], "last_block", "resnet18"
    ) == [True, False, True]


def test_disabled_outer_steps_keep_the_aux_net_fixed():
    cfg = config_from_dict(synthetic_raw(trainer={"epochs": 2}, hypergrad={"enabled": False}))
    trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    before = [p.detach().clone() for p in trainer.auxnet.parameters()]
    trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.auxnet.parameters()))
    assert trainer.hypergrad_norms == [] and "hypergrad_norm" not in trainer.history[-1]


@pytest.mark.parametrize("params,exact", [("all", True), ("last_block", False)])
def test_report_cosine_compares_with_the_full_hypergradient(params, exact, monkeypatch):
    """The logged cosine is that of hand-built hypergradients via the configured and all params at the outer step."""
    expected = []
    reported = loop.hypergrad_cosine

    def alongside(trainer, train_batch, outer_batch):
        names = trainable(trainer.model)[0]
        chosen = [n for n, m in zip(names, trainer.hyper_mask) if m]
        cheap, full = (
            torch.cat([g.flatten() for g in _reference_implicit(trainer, train_batch, outer_batch, ns)])
            for ns in (chosen, names)
        )
        expected.append(float(torch.nn.functional.cosine_similarity(cheap, full, dim=0)))
        return reported(trainer, train_batch, outer_batch)

    monkeypatch.setattr(loop, "hypergrad_cosine", alongside)
    cfg = config_from_dict(synthetic_raw(trainer={"epochs": 2}, hypergrad={"params": params, "report_cosine": True}))
    trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    trainer.fit()
    cosines = [h["hypergrad_cosine"] for h in trainer.history]
    assert len(expected) == 2 and cosines == pytest.approx(expected, abs=1e-5)
    if exact:
        assert cosines == pytest.approx([1.0, 1.0], abs=1e-5)
    else:
        assert max(cosines) < 1 - 1e-3, cosines


@pytest.mark.parametrize("cheap", [{}, {"params": "last_block", "every": 6}, {"batch_size": 8, "every": 6}])
def test_harmful_auxiliary_gets_the_lowest_weight_at_cheap_settings(cheap):
    """The synthetic task's harmful auxiliary (mostly noise) ends with the lowest weight, at full cost and at
    the cheap settings alike, and the validation error is no worse than half again the full-cost run's."""

    def run(hypergrad: dict) -> dict:
        cfg = config_from_dict(synthetic_raw(trainer={"epochs": 12}, hypergrad=hypergrad))
        trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
        trainer.fit()
        return trainer.history[-1]

    full = run({"reuse_graph": False})
    last = run(cheap)
    assert last["task_weight/harmful"] < last["task_weight/helpful"], last
    assert last["val_mse"] <= 1.5 * full["val_mse"], (last["val_mse"], full["val_mse"])
