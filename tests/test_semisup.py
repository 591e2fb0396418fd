"""Semi-supervised training: an unlabelled pool whose rows add nothing to the main loss (in every method and in
the hypergradient), combinable auxiliary tasks on it, per-image labels from noise and from a table, and the
learned weights telling a helpful table column from noise labels."""

from __future__ import annotations

import copy
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torchvision.io import write_png

from auxray.config import config_from_dict
from auxray.data import UNLABELED, build_data, load_images
from auxray.data import noise_labels as make_noise_labels
from auxray.errors import UserError
from auxray.methods import accuracy
from auxray.methods.base import main_mean
from auxray.methods.objectives import CombinerObjective
from auxray.train.diagnostics import example_batches
from auxray.train.hyperstep import compute_hypergrad
from auxray.train.launch import plan_run
from auxray.train.loop import BilevelTrainer
from tests.conftest import tiny_cifar_raw

METHODS = {
    "stl": {"name": "stl"},
    "equal": {"name": "equal"},
    "uncertainty": {"name": "uncertainty"},
    "gcs": {"name": "gcs"},
    "linear": {"name": "auxilearn_combine", "combiner": "linear"},
    "nonlinear": {"name": "auxilearn_combine", "combiner": "nonlinear"},
    "jtds": {"name": "jtds"},
}
ANIMALS = ("bird", "cat", "deer", "dog", "frog", "horse")


def _raw(cifar_zip: Path, tmp_path: Path, method: dict, **data: object) -> dict:
    raw = tiny_cifar_raw(cifar_zip, tmp_path, **method)
    raw["data"].update({"unlabeled": "rest", "unlabeled_batch_size": 8, **data})
    return raw


def _trainer(raw: dict) -> BilevelTrainer:
    cfg = config_from_dict(raw)
    return BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)


def test_rest_is_every_training_image_outside_the_labelled_splits(cifar_zip, tmp_path) -> None:
    cfg = config_from_dict(_raw(cifar_zip, tmp_path, {"name": "equal", "aux_task": "rotation"}))
    data = build_data(cfg.data, cfg.method.aux_tasks)
    idx = data.split_indices
    assert data.unlabeled is not None
    labelled = len(idx.train) + len(idx.aux) + len(idx.val)
    assert len(data.unlabeled) == 50_000 - labelled
    assert bool((data.unlabeled.y == UNLABELED).all())
    assert bool((data.train.y != UNLABELED).all()) and bool((data.val.y != UNLABELED).all())


@pytest.mark.parametrize("method", list(METHODS))
def test_an_unlabelled_row_adds_nothing_to_the_main_loss(cifar_zip, tmp_path, method) -> None:
    """Every method, on a batch of labelled and unlabelled rows: the main loss is the labelled rows' mean, and
    no gradient reaches an unlabelled row's main logits (rotation reads only the rotated copies' own head)."""
    raw = _raw(cifar_zip, tmp_path, {**METHODS[method], "aux_task": "rotation"})
    trainer = _trainer(raw)
    batch, _ = example_batches(trainer, seed=3)
    if method == "stl":  # STL draws no pool; give its objective one anyway
        batch, _ = example_batches(_trainer(_raw(cifar_zip, tmp_path, {"name": "equal", "aux_task": "rotation"})), 3)
    labelled = batch["y"] != UNLABELED
    assert 0 < int(labelled.sum()) < len(labelled)
    outputs: list[dict[str, torch.Tensor]] = []

    def forward(x: torch.Tensor, **kw: object) -> dict[str, torch.Tensor]:
        out = trainer.model(x, **kw)
        out["main"].retain_grad()
        outputs.append(out)
        return out

    res = trainer.objective.inner(forward, trainer.auxnet, batch)
    n = len(batch["y"])
    logits = outputs[0]["main"][:n]
    expected = F.cross_entropy(logits[labelled], batch["y"][labelled])
    torch.testing.assert_close(res.main_loss, expected.detach())
    assert res.main_per_sample is not None and bool((res.main_per_sample[~labelled] == 0).all())
    res.loss.backward()
    grad = outputs[0]["main"].grad[:n]
    assert bool((grad[~labelled] == 0).all())
    assert bool((grad[labelled].abs().sum(dim=1) > 0).all())


class _ExplicitCombiner(CombinerObjective):
    """The combiner's inner loss with the unlabelled rows left out of the main loss by indexing (the reference
    for the masked one): mean CE over the labelled rows, the combiner over every row with 0 as their main loss."""

    def inner(self, forward, aux, batch):
        t = self.aux_task.losses(forward, batch)
        labelled = batch["y"] != UNLABELED
        ce = F.cross_entropy(t.logits[labelled], batch["y"][labelled], reduction="none")
        main = torch.zeros(len(labelled), dtype=ce.dtype).index_put((labelled.nonzero().flatten(),), ce)
        res = super().inner(forward, aux, batch)
        res.loss = ce.mean() + aux(torch.cat([main.unsqueeze(1), t.aux], dim=1)).mean()
        return res


def test_the_hypergradient_sees_the_masked_inner_loss(cifar_zip, tmp_path) -> None:
    raw = _raw(cifar_zip, tmp_path, {**METHODS["linear"], "aux_task": ["rotation", "consistency"]})
    raw["trainer"]["dtype"] = "float64"
    trainer = _trainer(raw)
    batch, aux_batch = example_batches(trainer, seed=1)
    objective = trainer.objective
    explicit = _ExplicitCombiner("auxilearn_combine", objective.aux_task, 10, "linear", [10], None)

    def hypergrad(obj, b):
        return compute_hypergrad(obj, trainer.model, trainer.auxnet, b, aux_batch, trainer.cfg.hypergrad, inner_lr=0.05)

    masked = hypergrad(objective, batch)
    for got, want in zip(masked, hypergrad(explicit, batch), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    labelled_everywhere = dict(batch, y=torch.where(batch["y"] == UNLABELED, 0, batch["y"]))
    assert any(not torch.allclose(a, b) for a, b in zip(masked, hypergrad(objective, labelled_everywhere)))


def test_accuracy_and_main_mean_count_labelled_rows_only() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 0, UNLABELED, UNLABELED])
    assert float(accuracy(logits, y)) == 0.5
    assert float(main_mean(torch.tensor([1.0, 3.0, 0.0, 0.0]), y != UNLABELED)) == 2.0


def test_semisupervised_run_with_every_view_task_resumes_both_streams(cifar_zip, tmp_path) -> None:
    """JTDS over rotation, consistency, pseudo-labels and noise labels on the pool: it trains, logs a weight per
    task, and a trainer restored from its state draws the very next unlabelled batch."""
    raw = _raw(cifar_zip, tmp_path, {"name": "jtds", "aux_task": ["rotation", "consistency", "pseudo_labels",
                                                                  "noise_labels"], "pseudo_threshold": 0.0})
    raw["trainer"].update(epochs=1, max_steps_per_epoch=3)
    trainer = _trainer(raw)
    trainer.fit()
    weights = {k for k in trainer.history[-1] if k.startswith("task_weight/")}
    assert weights == {f"task_weight/{t}" for t in ("rotation", "consistency", "pseudo_labels", "noise_labels")}
    assert trainer.pool_iter is not None and trainer.pool_iter.state_dict()["position"] == 3
    state = copy.deepcopy(trainer.state_dict())
    expected = next(trainer._pool_stream)
    restored = _trainer(raw)
    restored.load_state_dict(state)
    got = restored.with_unlabeled(torch.zeros(0, 3, 32, 32), torch.zeros(0, 2))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_noise_labels_are_a_fixed_random_class_per_image(cifar_zip, tmp_path) -> None:
    raw = _raw(cifar_zip, tmp_path, {"name": "equal", "aux_task": ["noise_labels"]})
    cfg = config_from_dict(raw)
    first, second = build_data(cfg.data, cfg.method.aux_tasks), build_data(cfg.data, cfg.method.aux_tasks)
    assert torch.equal(first.train.y, second.train.y)
    full = make_noise_labels(50_000, 10, cfg.data.seed)
    assert torch.equal(first.train.y[:, 1].long(), full[first.split_indices.train])
    agree = float((first.unlabeled.y[:, 1].long() == full[:len(first.unlabeled)]).float().mean())
    assert agree < 0.2  # the pool's own images, not the first rows of the data set


def _attributes(cifar_zip: Path, tmp_path: Path) -> Path:
    """An attribute table for the shipped CIFAR zip: "animal" (helpful: a function of the class) for every
    training image, keyed by the image's path in the zip."""
    images = load_images(config_from_dict(tiny_cifar_raw(cifar_zip, tmp_path)).data)
    animal = torch.tensor([c in ANIMALS for c in images.classes])[images.train.y]
    path = tmp_path / "attributes.parquet"
    pq.write_table(pa.table({"path": images.train_keys, "animal": animal.int().numpy()}), path)
    return path


def test_a_table_column_earns_more_weight_than_noise_labels(cifar_zip, tmp_path) -> None:
    """The AuxiLearn paper's one helpful, one harmful auxiliary on images: a table's "animal" attribute (a
    function of the main class) and noise labels, on the labelled images and the pool (too many to memorise). The
    linear combiner's hypergradient raises the helpful weight and leaves the harmful one the lowest (seeds 0-2
    gave animal 2.2-2.8 against noise 0.7-1.1 after 4 epochs)."""
    raw = tiny_cifar_raw(cifar_zip, tmp_path, name="auxilearn_combine", combiner="linear", aux_lr=0.1,
                         aux_task=["table", "noise_labels"])
    raw["data"].update(labeled_per_class=60, unlabeled="rest", unlabeled_batch_size=32,
                       aux_table=str(_attributes(cifar_zip, tmp_path)),
                       aux_columns=[{"name": "animal", "columns": ["animal"], "kind": "binary"}])
    raw["model"]["width"] = 16
    raw["trainer"].update(epochs=4, batch_size=32, lr=0.03)
    raw["hypergrad"].update(every=1, steps=3)
    trainer = _trainer(raw)
    assert [g.name for g in trainer.data.groups] == ["noise_labels", "animal"]
    trainer.fit()
    last = trainer.history[-1]
    assert last["task_weight/animal"] > 1.5 * max(last["task_weight/noise_labels"], 1.0), last


def test_a_pool_from_a_folder_of_images_trains_with_its_auxiliary_losses(cifar_zip, tmp_path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    images = load_images(config_from_dict(tiny_cifar_raw(cifar_zip, tmp_path)).data)
    for i in range(24):
        write_png(images.test.x[i], str(pool / f"img{i:03d}.png"))
    raw = _raw(cifar_zip, tmp_path, {"name": "equal", "aux_task": ["consistency"]}, unlabeled=str(pool))
    raw["trainer"].update(epochs=1, max_steps_per_epoch=2)
    trainer = _trainer(raw)
    assert trainer.data.unlabeled is not None and len(trainer.data.unlabeled) == 24
    assert torch.equal(trainer.data.unlabeled.x[0], images.test.x[0])
    trainer.fit()
    assert trainer.history[-1]["aux_loss/consistency"] > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": {"name": "maxl"}}, "unlabelled images lack"),
        ({"method": {"name": "equal", "aux_task": ["rotation", "bogus"]}}, "distinct built-in tasks"),
        ({"method": {"name": "equal", "aux_task": ["table"]}}, "needs data.aux_table"),
        ({"data": {"aux_table": "t.csv"}}, "does not list table"),
    ],
)
def test_configs_that_cannot_work_are_one_line(cifar_zip, tmp_path, change, message) -> None:
    raw = _raw(cifar_zip, tmp_path, {"name": "equal", "aux_task": "rotation"})
    for section, values in change.items():
        raw[section] = {**raw[section], **values}
    if raw["method"]["name"] == "maxl":
        raw["method"].pop("aux_task", None)
    with pytest.raises(UserError, match=message) as err:
        config_from_dict(raw)
    assert "\n" not in str(err.value)


def test_a_bad_table_stops_the_run_before_anything_starts(cifar_zip, tmp_path) -> None:
    table = tmp_path / "attributes.csv"
    table.write_text("file,animal\ntrain/cat/0000.jpg,1\n")
    raw = tiny_cifar_raw(cifar_zip, tmp_path, name="equal", aux_task=["table"])
    raw["data"].update(aux_table=str(table), aux_columns=[{"name": "a", "columns": ["animal"], "kind": "binary"}])
    with pytest.raises(UserError, match="path") as err:
        plan_run(config_from_dict(raw), name="bad_table", resume=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()
