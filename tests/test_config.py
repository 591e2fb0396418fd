"""Configs that cannot surprise: shipped configs validate, invalid combinations are one line at validation, the
method picks its hypergradient, backbones and auxiliary tasks by import path, and the default data root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision.datasets

from auxray.auxnets import LabelGenerator
from auxray.config import DATA_ENV, DataConfig, RunConfig, config_from_dict, load_config
from auxray.config_yaml import read_yaml
from auxray.data import build_data
from auxray.errors import UserError
from auxray.method_specs import DEFAULT_METHOD, SPECS
from auxray.methods import build_objective
from auxray.methods.aux_tasks import AuxTask, LossFnTask, ViewTasks, build_aux_task
from auxray.models import MultiHeadNet, build_trunk, last_block_prefixes
from auxray.tune.config import load_sweep
from tests import helpers_user_models as user
from tests.conftest import REPO
from tests.test_cli import assert_one_line_error, auxray, in_process
from tests.test_data import _write_cifar_batches

CONFIGS = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs").glob("*/*.yaml"))
RUN_CONFIGS = [p for p in CONFIGS if "space" not in read_yaml(p)]
SWEEP_CONFIGS = [p for p in CONFIGS if "space" in read_yaml(p)]
USER = "tests.helpers_user_models"


def error_of(raw: dict) -> str:
    """The one-line message a raw config is rejected with."""
    with pytest.raises(UserError, match=r"\Ainvalid config run\.yaml: [^\n]+\Z") as info:
        config_from_dict(raw, "run.yaml")
    return str(info.value).removeprefix("invalid config run.yaml: ")


# ---- shipped configs ----------------------------------------------------------------------------------------
def test_every_shipped_config_validates() -> None:
    assert len(RUN_CONFIGS) >= 11 and len(SWEEP_CONFIGS) >= 2
    for path in RUN_CONFIGS:
        load_config(path)
    for path in SWEEP_CONFIGS:
        load_sweep(path)


def test_shipped_cifar_configs_name_their_data_root() -> None:
    for path in RUN_CONFIGS:
        data = read_yaml(path).get("data", {})
        if data.get("dataset", "cifar10") == "cifar10":
            assert str(data.get("root", "")).startswith("../shared/data/"), path


# ---- invalid combinations ------------------------------------------------------------------------------------
def test_deep_combiner_is_rejected_with_what_it_needs() -> None:
    msg = error_of({"method": {"name": "auxilearn_combine", "aux_task": "rotation", "combiner": "deep"}})
    assert msg.startswith("method.combiner: deep weighs per-pixel loss maps") and "linear or nonlinear" in msg


def test_deep_combiner_on_the_command_line_is_one_line_exit_2() -> None:
    proc = auxray("train", "configs/demo.yaml", "--set", "method.combiner=deep", "--set", "trainer.epochs=1")
    assert_one_line_error(proc, "method.combiner: deep", "per-pixel")


@pytest.mark.parametrize(
    ("name", "default"),
    [("maxl", "unroll"), ("maxl_fo", "fd"), ("auxilearn_labels", "neumann"), ("auxilearn_combine", "neumann")],
)
def test_the_method_decides_its_hypergradient(name: str, default: str) -> None:
    extra = {"aux_task": "rotation"} if name == "auxilearn_combine" else {}
    cfg = config_from_dict({"method": {"name": name, **extra}, "hypergrad": {"steps": 2}})
    assert cfg.hypergrad.method == default and cfg.hypergrad.steps == 2


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("maxl", "unroll"),
        ("maxl_fo", "fd"),
        ("auxilearn_labels", "cg"),
        ("auxilearn_labels", "exact"),
        ("auxilearn_combine", "unroll"),
        ("jtds", "fd"),
    ],
)
def test_an_explicit_hypergradient_that_fits_is_kept(name: str, method: str) -> None:
    extra = {} if name in ("maxl", "maxl_fo", "auxilearn_labels") else {"aux_task": "rotation"}
    cfg = config_from_dict({"method": {"name": name, **extra}, "hypergrad": {"method": method}})
    assert cfg.hypergrad.method == method


@pytest.mark.parametrize(
    ("name", "method", "pairing"),
    [
        ("maxl", "neumann", "auxilearn_labels"),
        ("maxl", "fd", "maxl_fo"),
        ("maxl_fo", "unroll", "maxl"),
        ("auxilearn_labels", "unroll", "maxl"),
    ],
)
def test_a_label_method_with_another_hypergradient_is_rejected(name: str, method: str, pairing: str) -> None:
    msg = error_of({"method": {"name": name}, "hypergrad": {"method": method}})
    assert msg.startswith(f"method.name: {name} learns labels by "), msg
    assert f"not hypergrad.method: {method} (that pairing is method.name: {pairing})" in msg


@pytest.mark.parametrize("given", [{"method": "unroll", "hvp": "fwdrev"}, {"hvp": "fwdrev"}])
def test_forward_over_reverse_products_with_an_unrolled_hypergradient_are_one_line(given: dict) -> None:
    """hvp fwdrev with unroll (given, or maxl's own default) is a config error, not a failure once a run starts."""
    msg = error_of({"method": {"name": "maxl"}, "hypergrad": given})
    assert msg == (
        "hypergrad.hvp: fwdrev takes the H-vector products of an implicit hypergradient (neumann, cg, exact); "
        "hypergrad.method: unroll takes none"
    )


def test_maxl_config_switched_to_neumann_on_the_command_line() -> None:
    with pytest.raises(UserError, match=r"method.name: maxl .* not hypergrad.method: neumann"):
        load_config(REPO / "configs" / "cifar10_5pct" / "maxl.yaml", ["hypergrad.method=neumann"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("foo.bar:baz", "model.backbone: cannot import 'foo.bar:baz': No module named 'foo'"),
        (f"{USER}:nope", f"model.backbone: cannot import '{USER}:nope': module '{USER}' has no attribute 'nope'"),
        (f"{USER}:NOT_CALLABLE", f"model.backbone: '{USER}:NOT_CALLABLE' is a int, not a callable"),
        (
            "alexnet",
            "model.backbone: unknown backbone 'alexnet'; choose convnet4, vgg16, resnet18, mlp, "
            "or name your own as 'package.module:function'",
        ),
    ],
)
def test_a_backbone_that_cannot_be_imported_is_one_line(value: str, expected: str) -> None:
    assert error_of({"model": {"backbone": value}}) == expected


def test_an_aux_task_that_cannot_be_imported_is_one_line() -> None:
    msg = error_of({"method": {"name": "equal", "aux_task": "nowhere.tasks:mine"}})
    assert msg == "method.aux_task: cannot import 'nowhere.tasks:mine': No module named 'nowhere'"


def test_custom_backbone_needs_all_params_and_label_methods_take_no_aux_task() -> None:
    msg = error_of({"model": {"backbone": f"{USER}:tiny_trunk"}, "hypergrad": {"params": "last_block"}})
    assert msg.startswith("hypergrad.params: last_block needs a built-in model.backbone")
    assert error_of({"method": {"name": "maxl", "aux_task": f"{USER}:helpful_target"}}) == (
        "method.aux_task: not a setting of method 'maxl'"
    )


# ---- the method: section, one settings model per method -------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "key", "value"),
    [
        ({"name": "maxl"}, "combiner", "linear"),
        ({"name": "maxl"}, "aux_task", "rotation"),  # a label generator makes its own auxiliary labels
        ({"name": "auxilearn_labels"}, "task_weights", {"rotation": 2.0}),
        ({"name": "equal", "aux_task": "rotation"}, "psi", 3),
        ({"name": "auxilearn_combine", "aux_task": "rotation"}, "merge_every", 10),
        ({"name": "arml", "aux_task": "rotation"}, "init_weight", 0.5),
        ({}, "combiner", "linear"),  # no name: the default method's settings
    ],
)
def test_a_knob_of_another_method_is_one_line_naming_key_and_method(method: dict, key: str, value: object) -> None:
    assert error_of({"method": {**method, key: value}}) == (
        f"method.{key}: not a setting of method '{method.get('name', DEFAULT_METHOD)}'"
    )


def test_each_method_validates_to_its_own_settings_model_and_dumps_only_its_knobs() -> None:
    for name, method in SPECS.items():
        raw = {"name": name, **({"aux_task": "rotation"} if method.needs_aux_task else {})}
        cfg = config_from_dict({"method": raw})
        assert type(cfg.method) is method.settings
        assert set(cfg.method.model_dump()) == set(method.settings.model_fields)
        assert config_from_dict(cfg.model_dump()) == cfg  # a dumped config loads back as itself
    assert type(RunConfig().method) is SPECS[DEFAULT_METHOD].settings


def test_an_unknown_or_malformed_method_is_one_line() -> None:
    assert error_of({"method": {"name": "maxl2"}}).startswith("method.name: unknown method 'maxl2'; choose one of stl")
    assert error_of({"method": "maxl"}) == "method: a mapping of settings whose name is a method's (method.name)"


@pytest.mark.parametrize(("old", "new"), [("aux_lr", "lr"), ("aux_lr_per", "lr_per"), ("aux_grad_clip", "grad_clip")])
def test_an_old_outer_optimizer_key_is_one_line_naming_its_new_place(old: str, new: str) -> None:
    method = {"name": "maxl", old: {"aux_lr": 0.01, "aux_lr_per": "run", "aux_grad_clip": 1.0}[old]}
    assert error_of({"method": method}) == f"method.{old} moved to outer.{new}"


def test_an_old_key_on_the_command_line_is_one_line_exit_2(capsys) -> None:
    config = str(REPO / "configs" / "cifar10_5pct" / "maxl.yaml")
    proc = in_process(capsys, "train", config, "--set", "method.aux_lr=0.1", "--no-progress")
    assert_one_line_error(proc, "method.aux_lr moved to outer.lr")


def test_the_old_aux_fraction_is_one_line_naming_the_outer_set(tmp_path: Path, capsys) -> None:
    assert error_of({"data": {"aux_fraction": 0.2}}) == "data.aux_fraction moved to data.outer_fraction"
    assert config_from_dict({"data": {"outer_fraction": 0.2}}).data.outer_fraction == 0.2
    text = (REPO / "configs" / "demo.yaml").read_text()
    assert "  outer_fraction:" in text
    (tmp_path / "old.yaml").write_text(text.replace("  outer_fraction:", "  aux_fraction:"))
    proc = in_process(capsys, "train", str(tmp_path / "old.yaml"), "--no-progress")
    assert_one_line_error(proc, "data.aux_fraction moved to data.outer_fraction")
    config = str(REPO / "configs" / "demo.yaml")
    proc = in_process(capsys, "train", config, "--set", "data.aux_fraction=0.2", "--no-progress")
    assert_one_line_error(proc, "data.aux_fraction moved to data.outer_fraction")


def test_a_fixed_method_keeps_the_outer_optimizer_at_its_defaults() -> None:
    assert error_of({"method": {"name": "equal", "aux_task": "rotation"}, "outer": {"optimizer": "sgd"}}) == (
        "outer.optimizer does nothing for method 'equal'; drop it"
    )
    cfg = config_from_dict({"method": {"name": "maxl"}, "outer": {"lr": 0.02, "lr_per": "run"}})
    assert (cfg.outer.lr, cfg.outer.lr_per) == (0.02, "run")


def test_a_knob_of_another_method_on_the_command_line_is_one_line_exit_2(capsys) -> None:
    config = str(REPO / "configs" / "cifar10_5pct" / "maxl.yaml")
    proc = in_process(capsys, "train", config, "--set", "method.combiner=linear", "--no-progress")
    assert_one_line_error(proc, "method.combiner: not a setting of method 'maxl'")


def test_imagefolder_needs_a_root() -> None:
    assert error_of({"data": {"dataset": "imagefolder"}}).startswith("data: dataset imagefolder needs root")


# ---- import paths and callables in the registries --------------------------------------------------------
def test_build_trunk_takes_a_name_an_import_path_or_a_callable() -> None:
    for spec in (f"{USER}:tiny_trunk", user.tiny_trunk):
        trunk, feat_dim = build_trunk(spec, in_channels=3, width=6)
        assert feat_dim == 6 and trunk(torch.randn(2, 3, 16, 16)).shape == (2, 6)
    net = MultiHeadNet(*build_trunk(user.tiny_trunk, width=5, in_features=7), {"main": 2})
    assert net(torch.randn(4, 7))["main"].shape == (4, 2)
    with pytest.raises(TypeError, match=r"must return \(trunk: nn.Module, feat_dim: int\)"):
        build_trunk(lambda **_: torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="last_block needs a built-in backbone"):
        last_block_prefixes(user.tiny_trunk)


def test_build_aux_task_takes_a_name_an_import_path_or_a_callable() -> None:
    rotation = build_aux_task("rotation", "classification")
    assert isinstance(rotation, ViewTasks) and rotation.names == ("rotation",) and rotation.heads == {"rotation": 4}
    assert type(build_aux_task("none", "regression")) is AuxTask
    for spec in (f"{USER}:helpful_target", user.helpful_target):
        task = build_aux_task(spec, "regression")
        assert isinstance(task, LossFnTask) and task.names == ("helper",) and task.task == "regression"
    with pytest.raises(TypeError, match="must return an AuxiliaryTask"):
        build_aux_task(user.not_a_task, "classification")


def test_loss_fn_task_gives_per_sample_losses_and_checks_their_shape() -> None:
    task = user.helpful_target("regression")
    net = MultiHeadNet(torch.nn.Flatten(), 3, {"main": 1, **task.heads})
    batch = task.prepare(torch.randn(5, 3), torch.randn(5, 3), None)
    losses = task.losses(net, batch)
    assert losses.main.shape == (5,) and losses.aux.shape == (5, 1)
    bad = LossFnTask({"a": 1, "b": 1}, lambda out, b: out["a"].squeeze(-1), task="regression")
    net = MultiHeadNet(torch.nn.Flatten(), 3, {"main": 1, **bad.heads})
    with pytest.raises(ValueError, match=r"expected \[5, 2\]"):
        bad.losses(net, batch)


def test_label_generator_gets_its_own_trunk_from_the_factory() -> None:
    cfg = config_from_dict(
        {"method": {"name": "maxl", "psi": 2}, "model": {"backbone": f"{USER}:tiny_trunk", "width": 4}}
    )
    objective = build_objective(cfg, num_classes=3, task="classification", feat_dim=4, in_channels=3)
    model = MultiHeadNet(*build_trunk(cfg.model.backbone, width=4), objective.heads)
    generator = objective.build_auxnet(model)
    assert generator.trunk is not model.trunk
    assert generator(torch.randn(2, 3, 8, 8), torch.tensor([0, 2])).shape == (2, 6)
    own_trunk = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 7))
    calls: list[dict] = []

    def factory(**kwargs: object) -> tuple[torch.nn.Module, int]:
        calls.append(kwargs)
        return own_trunk, 7

    from_callable = build_objective(
        cfg, num_classes=3, task="classification", feat_dim=4, in_channels=3, backbone=factory
    )
    own = from_callable.build_auxnet(model)
    assert isinstance(own, LabelGenerator) and own.trunk is own_trunk  # the callable, not cfg.model.backbone
    assert calls == [{"in_channels": 3, "width": 4, "in_features": None}]
    assert own(torch.randn(2, 3, 8, 8), torch.tensor([0, 2])).shape == (2, 6)


# ---- the default data root ----------------------------------------------------------------------------------
def test_default_data_root_is_a_cache_folder_that_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    default = DataConfig()
    assert default.root == str(Path.home() / ".cache" / "auxray" / "cifar10") and default.download
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert DataConfig().root == str(tmp_path / "xdg" / "auxray" / "cifar10")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    assert DataConfig().root == str(tmp_path / "data" / "cifar10") and DataConfig().download
    named = DataConfig(root=str(tmp_path / "mine"))
    assert not named.download and not DataConfig(dataset="synthetic").download


def test_default_root_is_filled_by_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append(root)
            _write_cifar_batches(Path(root) / "cifar-10-batches-py")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    data = build_data(DataConfig(labeled_fraction=1.0, cache_dir=str(tmp_path / "cache")))
    assert calls == [str(tmp_path / "cifar10")] and data.num_classes == 10
    build_data(DataConfig(labeled_fraction=1.0, cache_dir=str(tmp_path / "cache")))
    assert len(calls) == 1


def test_missing_root_without_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    expected = f"data root not found: {tmp_path / 'cifar10'} (set data.download: true to fetch CIFAR-10 there)"
    with pytest.raises(UserError, match=f"\\A{re.escape(expected)}\\Z"):
        build_data(DataConfig(download=False))
