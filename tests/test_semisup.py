"""Semi-supervised training: an unlabelled pool whose rows add nothing to the main loss (through every method's
gradient rule and in the hypergradient), sharded and ignored as the README says, combinable auxiliary tasks on it,
per-image labels from noise and from a table (a bad table stopped before a run starts), and the learned weights
telling a helpful table column from noise labels."""

from __future__ import annotations

import copy
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torchvision.io import write_png

from auxray.bench.outer_timing import example_batches
from auxray.config import config_from_dict
from auxray.data import UNLABELED, build_data, load_images
from auxray.data import noise_labels as make_noise_labels
from auxray.data.imagefolder import imagefolder_train_keys
from auxray.errors import UserError
from auxray.method_specs import SPECS
from auxray.methods import accuracy
from auxray.methods.base import Batch, InnerResult, main_mean, main_target
from auxray.methods.objectives import CombinerObjective, SchedulerObjective
from auxray.tracking.training import train_tracked
from auxray.train.collective import Collective
from auxray.train.hyperstep import compute_hypergrad, fused_hyperstep
from auxray.train.loop import BilevelTrainer
from auxray.train.run_plan import plan_run
from tests.conftest import tiny_cifar_raw
from tests.test_cli import assert_one_line_error, in_process, write_config

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
    """The tiny CIFAR config with `method`, the rest of the training images as the pool, and `data` settings."""
    raw = tiny_cifar_raw(cifar_zip, tmp_path, **method)
    raw["data"].update({"unlabeled": "rest", "unlabeled_batch_size": 8, **data})
    return raw


def _trainer(raw: dict) -> BilevelTrainer:
    """A one-process trainer for a raw config, its data built as a run builds it."""
    cfg = config_from_dict(raw)
    return BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)


def _identity(grads: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The all-reduce of a one-process run."""
    return grads


def test_rest_is_every_training_image_outside_the_labelled_splits(cifar_zip, tmp_path) -> None:
    """The pool is the rest of the training images, and the splits the main loss is trained (train), tuned on
    (aux, the outer objective) and selected on (val) keep their labels."""
    cfg = config_from_dict(_raw(cifar_zip, tmp_path, {"name": "equal", "aux_task": "rotation"}))
    data = build_data(cfg.data, cfg.method.aux_tasks)
    idx = data.split_indices
    assert data.unlabeled is not None
    labelled = len(idx.train) + len(idx.outer) + len(idx.val)
    assert len(data.unlabeled) == 50_000 - labelled
    assert bool((data.unlabeled.y == UNLABELED).all())
    for split in (data.train, data.outer, data.val):
        assert len(split) > 0 and bool((split.y != UNLABELED).all())


@pytest.mark.parametrize("aux_task", ["rotation", "noise_labels"])
@pytest.mark.parametrize("method", [m for m in METHODS if m != "gcs"])
def test_an_unlabelled_row_adds_nothing_to_the_main_loss(cifar_zip, tmp_path, method, aux_task) -> None:
    """Every method, on a batch of labelled and unlabelled rows (y [N] with rotation, [N, 2] with noise labels),
    through its gradient rule: the main loss is the labelled rows' mean, and no gradient reaches an unlabelled
    row's main logits (neither task reads the main head). GCS, whose rule takes its own gradients, has its own."""
    raw = _raw(cifar_zip, tmp_path, {**METHODS[method], "aux_task": [aux_task]})
    trainer = _trainer(raw)
    batch, _ = example_batches(trainer, seed=3)
    if method == "stl":  # STL draws no pool; give its objective one anyway
        batch, _ = example_batches(_trainer(_raw(cifar_zip, tmp_path, {"name": "equal", "aux_task": [aux_task]})), 3)
    y = main_target(batch["y"], "classification")
    labelled = y != UNLABELED
    assert 0 < int(labelled.sum()) < len(labelled) and batch["y"].dim() == (1 if aux_task == "rotation" else 2)
    outputs: list[dict[str, torch.Tensor]] = []

    def forward(x: torch.Tensor, **kw: object) -> dict[str, torch.Tensor]:
        out = trainer.model(x, **kw)
        out["main"].retain_grad()
        outputs.append(out)
        return out

    res = trainer.objective.inner(forward, trainer.auxnet, batch)
    n = len(y)
    logits = outputs[0]["main"][:n]
    torch.testing.assert_close(res.main_loss, F.cross_entropy(logits[labelled], y[labelled]).detach())
    assert res.main_per_sample is not None and bool((res.main_per_sample[~labelled] == 0).all())
    trainer.objective.gradient_rule.backward(res, trainer.model, _identity)
    grad = outputs[0]["main"].grad[:n]
    assert bool((grad[~labelled] == 0).all())
    assert bool((grad[labelled].abs().sum(dim=1) > 0).all())


def _gcs_reference(trainer: BilevelTrainer, batch: Batch) -> dict[str, torch.Tensor]:
    """W's gradients by GCS written out here: the main loss is cross-entropy over the labelled rows alone; on the
    trunk the auxiliary gradient is added where its cosine to the main one is positive; heads get the sum."""
    model = trainer.model
    res = trainer.objective.inner(model, None, batch)
    y = main_target(batch["y"], "classification")
    labelled = y != UNLABELED
    main = F.cross_entropy(res.logits[labelled], y[labelled])
    assert res.aux_per_sample is not None
    aux = res.aux_per_sample.sum(dim=1).mean()
    trunk = dict(model.trunk.named_parameters(prefix="trunk"))
    g_main = torch.autograd.grad(main, list(trunk.values()), retain_graph=True)
    g_aux = torch.autograd.grad(aux, list(trunk.values()), retain_graph=True)
    flat_main, flat_aux = torch.cat([g.flatten() for g in g_main]), torch.cat([g.flatten() for g in g_aux])
    agree = float(F.cosine_similarity(flat_main, flat_aux, dim=0)) > 0
    heads = dict(model.heads.named_parameters(prefix="heads"))
    g_heads = torch.autograd.grad(main + aux, list(heads.values()), allow_unused=True)
    out = {n: gm + ga if agree else gm for n, gm, ga in zip(trunk, g_main, g_aux)}
    out.update({n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(heads.items(), g_heads)})
    return out


@pytest.mark.parametrize("aux_task", ["rotation", "noise_labels"])
def test_gcs_takes_the_main_gradient_over_the_labelled_rows_only(cifar_zip, tmp_path, aux_task) -> None:
    """GCS's gradient rule (what its training step runs) on labelled and unlabelled rows: W's gradient is the one
    of the labelled rows' mean main loss, not of a mean that counts unlabelled rows as zeros."""
    trainer = _trainer(_raw(cifar_zip, tmp_path, {"name": "gcs", "aux_task": [aux_task]}))
    batch, _ = example_batches(trainer, seed=3)
    assert bool((main_target(batch["y"], "classification") == UNLABELED).any())
    res = trainer.objective.inner(trainer.model, None, batch)
    logged = trainer.objective.gradient_rule.backward(res, trainer.model, _identity)
    got = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    trainer.model.zero_grad(set_to_none=True)
    expected = _gcs_reference(trainer, batch)
    assert set(got) == set(expected) and "grad_cosine/aux" in logged
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, msg=name)


def _labelled_ce(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the labelled rows picked by indexing (the reference for the masked main loss): its mean,
    and per row with 0 on the unlabelled ones (what the combiner sees as their main loss)."""
    y = main_target(batch["y"], "classification")
    rows = (y != UNLABELED).nonzero().flatten()
    ce = F.cross_entropy(logits[rows], y[rows], reduction="none")
    return ce.mean(), torch.zeros(len(y), dtype=ce.dtype).index_put((rows,), ce)


class _ExplicitCombiner(CombinerObjective):
    """The combiner's inner loss with the unlabelled rows left out of the main loss by indexing: mean CE over the
    labelled rows, the combiner over every row with 0 as their main loss."""

    def inner(self, forward, aux, batch) -> InnerResult:
        t = self.aux_task.losses(forward, batch)
        mean, per_row = _labelled_ce(t.logits, batch)
        res = super().inner(forward, aux, batch)
        res.loss = mean + aux(torch.cat([per_row.unsqueeze(1), t.aux], dim=1)).mean()
        return res


class _ExplicitScheduler(SchedulerObjective):
    """JTDS's inner loss with the unlabelled rows left out of the main loss by indexing: mean CE over the labelled
    rows, the scheduler's per-sample weights over every row."""

    def inner(self, forward, aux, batch) -> InnerResult:
        t = self.aux_task.losses(forward, batch, features=True)
        mean, _ = _labelled_ce(t.logits, batch)
        res = super().inner(forward, aux, batch)
        res.loss = mean + (aux(t.features.detach(), t.aux.detach()) * t.aux).sum(dim=1).mean()
        return res


def _explicit(objective: CombinerObjective | SchedulerObjective) -> CombinerObjective | SchedulerObjective:
    """The reference twin of a learned objective: the same tasks and settings, the main loss by indexing."""
    if isinstance(objective, SchedulerObjective):
        return _ExplicitScheduler(SPECS[objective.name], objective.aux_task, 10, objective.feat_dim)
    return _ExplicitCombiner(
        SPECS[objective.name], objective.aux_task, 10, objective.kind, objective.hidden, objective.monotone
    )


@pytest.mark.parametrize(
    ("method", "params", "path"),
    [
        ("linear", "all", "separate"),
        ("nonlinear", "all", "separate"),
        ("jtds", "all", "separate"),
        ("linear", "last_block", "separate"),
        ("linear", "all", "fused"),
        ("jtds", "last_block", "fused"),
    ],
)
def test_the_hypergradient_sees_the_masked_inner_loss(cifar_zip, tmp_path, method, params, path) -> None:
    """The hypergradient over labelled and unlabelled rows, as training computes it (the outer step after the
    inner one, or fused with it; through every parameter or the last block), equals the one of the inner loss
    written with the unlabelled rows indexed out, and differs from one where they had labels."""
    raw = _raw(cifar_zip, tmp_path, {**METHODS[method], "aux_task": ["rotation", "consistency"]})
    raw["trainer"]["dtype"] = "float64"
    raw["hypergrad"]["params"] = params
    trainer = _trainer(raw)
    batch, outer_batch = example_batches(trainer, seed=1)
    assert bool((batch["y"] == UNLABELED).any())

    def hypergrad(objective, b: Batch) -> tuple[torch.Tensor, ...]:
        args = (objective, trainer.model, trainer.auxnet, b, outer_batch, trainer.hypergradient)
        if path == "fused":
            return fused_hyperstep(*args, inner_lr=0.05).hypergrad
        return compute_hypergrad(*args, inner_lr=0.05)

    masked = hypergrad(trainer.objective, batch)
    for got, want in zip(masked, hypergrad(_explicit(trainer.objective), batch), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    labelled_everywhere = dict(batch, y=torch.where(batch["y"] == UNLABELED, 0, batch["y"]))
    assert any(not torch.allclose(a, b) for a, b in zip(masked, hypergrad(trainer.objective, labelled_everywhere)))


def test_accuracy_and_main_mean_count_labelled_rows_only() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 0, UNLABELED, UNLABELED])
    assert float(accuracy(logits, y)) == 0.5
    assert float(main_mean(torch.tensor([1.0, 3.0, 0.0, 0.0]), y != UNLABELED)) == 2.0


def test_semisupervised_run_with_every_view_task_resumes_both_streams(cifar_zip, tmp_path) -> None:
    """JTDS over rotation, consistency, pseudo-labels and noise labels on the pool: it trains, logs a weight per
    task, and a trainer restored from its state draws the very next unlabelled batch."""
    raw = _raw(
        cifar_zip,
        tmp_path,
        {
            "name": "jtds",
            "aux_task": ["rotation", "consistency", "pseudo_labels", "noise_labels"],
            "pseudo_threshold": 0.0,
        },
    )
    raw["trainer"].update(epochs=1, max_steps_per_epoch=3)
    trainer = _trainer(raw)
    trainer.fit()
    weights = {k for k in trainer.history[-1] if k.startswith("task_weight/")}
    assert weights == {f"task_weight/{t}" for t in ("rotation", "consistency", "pseudo_labels", "noise_labels")}
    assert trainer.pool_iter is not None and trainer.pool_iter.state_dict()["position"] == 3
    state = copy.deepcopy(trainer.state_dict())
    expected = next(trainer.pool_stream)
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
    agree = float((first.unlabeled.y[:, 1].long() == full[: len(first.unlabeled)]).float().mean())
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
    linear combiner's hypergradient raises the helpful weight well above the harmful one. One Neumann term: the
    test checks the hypergradient's direction, which three terms (three times the cost) do not change."""
    raw = tiny_cifar_raw(
        cifar_zip, tmp_path, name="auxilearn_combine", combiner="linear", aux_task=["table", "noise_labels"]
    )
    raw["outer"] = {"lr": 0.1}
    raw["data"].update(
        labeled_per_class=60,
        unlabeled="rest",
        unlabeled_batch_size=32,
        aux_table=str(_attributes(cifar_zip, tmp_path)),
        aux_columns=[{"name": "animal", "columns": ["animal"], "kind": "binary"}],
    )
    raw["model"]["width"] = 16
    raw["trainer"].update(epochs=4, batch_size=32, lr=0.03)
    raw["hypergrad"].update(every=1, steps=1)
    trainer = _trainer(raw)
    assert [g.name for g in trainer.data.groups] == ["noise_labels", "animal"]
    trainer.fit()
    last = trainer.history[-1]
    assert last["task_weight/animal"] > 1.5 * max(last["task_weight/noise_labels"], 1.0), last


def _pool_folder(path: Path, images: torch.Tensor) -> Path:
    """A folder of PNG images (``img000.png``, ...) to use as data.unlabeled."""
    path.mkdir(parents=True)
    for i, image in enumerate(images):
        write_png(image, str(path / f"img{i:03d}.png"))
    return path


def test_a_pool_from_a_folder_of_images_trains_with_its_auxiliary_losses(cifar_zip, tmp_path) -> None:
    """A training step on the labelled batch and a batch of the folder's images: the consistency loss it logs is
    the one computed here from the weights before the step, over all 24 rows."""
    images = load_images(config_from_dict(tiny_cifar_raw(cifar_zip, tmp_path)).data)
    pool = _pool_folder(tmp_path / "pool", images.test.x[:24])
    raw = _raw(cifar_zip, tmp_path, {"name": "equal", "aux_task": ["consistency"]}, unlabeled=str(pool))
    trainer = _trainer(raw)
    assert trainer.data.unlabeled is not None and len(trainer.data.unlabeled) == 24
    assert torch.equal(trainer.data.unlabeled.x[0], images.test.x[0])
    x, y = next(iter(trainer.train_iter))
    batch = trainer.prepare(*trainer.with_unlabeled(x, y), torch.Generator().manual_seed(0))
    assert batch["y"].tolist() == y.tolist() + [UNLABELED] * 8
    before = copy.deepcopy(trainer.model)
    stats = trainer.inner_step(batch)
    with torch.no_grad():
        probs = before(torch.cat([batch["x"], batch["x_twin"]]))["main"].softmax(dim=-1)
    n = len(batch["x"])
    expected = (probs[n:] - probs[:n]).pow(2).sum(dim=-1).mean()
    assert stats["aux_loss/consistency"] == pytest.approx(float(expected), rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), trainer.model.parameters()))


def test_stl_ignores_the_pool(cifar_zip, tmp_path) -> None:
    """STL with a pool draws no pool batch: it trains to the very weights STL without one does."""
    trained = []
    for unlabeled in ("rest", "none"):
        raw = _raw(cifar_zip, tmp_path, {"name": "stl"}, unlabeled=unlabeled)
        raw["trainer"].update(epochs=1, max_steps_per_epoch=3)
        trainer = _trainer(raw)
        trainer.fit()
        trained.append(trainer)
    with_pool, without = trained
    assert with_pool.data.unlabeled is not None and with_pool.pool_iter is None
    for (name, a), b in zip(with_pool.model.state_dict().items(), without.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


class _Rank(Collective):
    """One rank of a data-parallel run, without its all-reduces (only how data is sharded is under test)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size


def test_the_pool_is_sharded_across_workers(cifar_zip, tmp_path) -> None:
    """Two workers' pool streams take disjoint halves of the pool that together cover it, every epoch."""
    cfg = config_from_dict(_raw(cifar_zip, tmp_path, {"name": "equal", "aux_task": "rotation"}))
    data = build_data(cfg.data, cfg.method.aux_tasks)
    pools = [BilevelTrainer(cfg, data, collective=_Rank(rank, 2), progress=False).pool_iter for rank in (0, 1)]
    assert data.unlabeled is not None and len(data.unlabeled) % 2 == 0 and None not in pools
    for epoch in (0, 1):
        first, second = (set(p.indices(epoch).tolist()) for p in pools)
        assert len(first) == len(second) == len(data.unlabeled) // 2
        assert first.isdisjoint(second) and first | second == set(range(len(data.unlabeled)))


def test_a_missing_table_value_adds_nothing_to_its_task_loss(cifar_zip, tmp_path) -> None:
    """A two-column binary table task through the gradient rule: a row's loss is the mean over its present
    columns (0 with none), and no gradient reaches the logit of a missing value."""
    keys = imagefolder_train_keys(cifar_zip)
    table = tmp_path / "attrs.csv"
    pacsv.write_csv(
        pa.table({"path": keys, "a": [i % 2 for i in range(len(keys))], "b": [i % 3 == 0 for i in range(len(keys))]}),
        table,
    )
    raw = _raw(
        cifar_zip,
        tmp_path,
        {"name": "equal", "aux_task": ["table"]},
        aux_table=str(table),
        aux_columns=[{"name": "attrs", "columns": ["a", "b"], "kind": "binary"}],
    )
    trainer = _trainer(raw)
    batch, _ = example_batches(trainer, seed=5)
    batch["y"][0, 1] = float("nan")
    batch["y"][1, 1:] = float("nan")
    outputs: list[dict[str, torch.Tensor]] = []

    def forward(x: torch.Tensor, **kw: object) -> dict[str, torch.Tensor]:
        out = trainer.model(x, **kw)
        out["attrs"].retain_grad()
        outputs.append(out)
        return out

    res = trainer.objective.inner(forward, trainer.auxnet, batch)
    trainer.objective.gradient_rule.backward(res, trainer.model, _identity)
    logits, grad, target = outputs[0]["attrs"].detach(), outputs[0]["attrs"].grad, batch["y"][:, 1:]
    present = ~torch.isnan(target)
    bce = F.binary_cross_entropy_with_logits(logits, target.nan_to_num(), reduction="none")
    expected = torch.stack([row[keep].mean() if keep.any() else row.new_zeros(()) for row, keep in zip(bce, present)])
    assert res.aux_per_sample is not None and float(expected[1]) == 0.0
    torch.testing.assert_close(res.aux_per_sample[:, 0].detach(), expected)
    assert bool((grad[~present] == 0).all()) and bool((grad[present] != 0).all())


def _side_table(path: Path, train_keys: list[str], pool_keys: list[str]) -> Path:
    """A CSV "animal" column for the first 100 training images and the first 4 pool images (0, 1, 0, 1)."""
    keys = train_keys[:100] + pool_keys[:4]
    pacsv.write_csv(pa.table({"path": keys, "animal": [i % 2 for i in range(len(keys))]}), path)
    return path


def _side_raw(cifar_zip: Path, tmp_path: Path, pool: Path | str, table: Path | str) -> dict:
    """A config training equal weights on the side table's "animal" task over the labelled images and the pool."""
    return _raw(
        cifar_zip,
        tmp_path,
        {"name": "equal", "aux_task": ["table"]},
        unlabeled=str(pool),
        aux_table=str(table),
        aux_columns=[{"name": "animal", "columns": ["animal"], "kind": "binary"}],
    )


def test_a_table_gives_a_folder_pool_its_side_labels(cifar_zip, tmp_path) -> None:
    """Table rows keyed by a pool image's path inside the pool folder label that image; the pool's other images
    have none, and the outer set stays labelled."""
    images = load_images(config_from_dict(tiny_cifar_raw(cifar_zip, tmp_path)).data)
    pool = _pool_folder(tmp_path / "pool", images.test.x[:6])
    table = _side_table(tmp_path / "side.csv", images.train_keys, [f"img{i:03d}.png" for i in range(6)])
    cfg = config_from_dict(_side_raw(cifar_zip, tmp_path, pool, table))
    data = build_data(cfg.data, cfg.method.aux_tasks)
    assert data.unlabeled is not None and data.unlabeled.y.shape == (6, 2)
    assert bool((data.unlabeled.y[:, 0] == UNLABELED).all())
    assert torch.equal(data.unlabeled.y[:, 1].nan_to_num(-9), torch.tensor([0.0, 1, 0, 1, -9, -9]))
    assert bool((data.outer.y[:, 0] != UNLABELED).all()) and bool((data.val.y[:, 0] != UNLABELED).all())


def test_relative_table_and_pool_paths_resolve_against_the_working_directory(cifar_zip, tmp_path, monkeypatch) -> None:
    """data.aux_table and data.unlabeled given relative to the working directory (as data.root may be) are made
    absolute there before the check, which finds both and logs how many images the table labels."""
    work = tmp_path / "work"
    pool = _pool_folder(work / "pool", torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
    train_keys = imagefolder_train_keys(cifar_zip)
    _side_table(work / "side.csv", train_keys, [f"img{i:03d}.png" for i in range(4)])
    monkeypatch.chdir(work)
    lines: list[str] = []
    plan = plan_run(
        config_from_dict(_side_raw(cifar_zip, tmp_path, "pool", "side.csv")),
        name="relative",
        resume=False,
        log=lines.append,
    )
    table, cfg = (work / "side.csv").resolve(), plan.cfg
    assert plan.table is not None and plan.table.images_matched == 104  # read once: build_data reuses it
    assert cfg.data.aux_table == str(table) and cfg.data.unlabeled == str(pool.resolve())
    total = len(train_keys) + 4
    assert lines == [f"aux table {table}: 104 of {total} images matched ({100 * 104 / total:.1f}%)"]


BAD_TABLES = {
    "no key column": ("file,animal\ntrain/cat/0000.jpg,1\n", "binary", r"no key column 'path'"),
    "no key matches": ("path,animal\nelsewhere/0000.jpg,1\n", "binary", r"none of its 1 keys in column 'path'"),
    "class out of range": ("path,animal\n{0},0\n{1},3\n", "categorical", r"holds class 3, outside 0..1"),
    "fractional class": ("path,animal\n{0},0\n{1},0.5\n", "categorical", r"integers or strings, found 0\.5"),
    "constant regression": ("path,animal\n{0},2.5\n{1},2.5\n", "regression", r"'animal' is constant over the 2 rows"),
}


def _bad_table_raw(cifar_zip: Path, tmp_path: Path, case: str) -> dict:
    """A tracked run (store in tmp_path) whose table fails the check in the way BAD_TABLES[case] names."""
    text, kind, _ = BAD_TABLES[case]
    table = tmp_path / "attributes.csv"
    table.write_text(text.format(*imagefolder_train_keys(cifar_zip)[:2]))
    raw = tiny_cifar_raw(cifar_zip, tmp_path, name="equal", aux_task=["table"])
    column = {"name": "a", "columns": ["animal"], "kind": kind} | ({"classes": 2} if kind == "categorical" else {})
    raw["data"].update(aux_table=str(table), aux_columns=[column])
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    return raw


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_a_bad_table_stops_the_run_before_anything_starts(cifar_zip, tmp_path, monkeypatch, case) -> None:
    """A tracked run with a table that does not fit its images fails in one line before its run folder, its
    MLflow store or anything in the working directory exists (each of which the run makes once it starts)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = config_from_dict(_bad_table_raw(cifar_zip, tmp_path, case))
    with pytest.raises(UserError, match=BAD_TABLES[case][2]) as err:
        train_tracked(plan_run(cfg, name="bad_table"), progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists() and not any(work.iterdir())


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bad_table_on_the_command_line_is_one_line_exit_2(cifar_zip, tmp_path, monkeypatch, capsys, workers) -> None:
    """`auxray train` (in one process, or asking for Ray Train workers) with a table that matches no image: exit 2,
    one line on stderr, and no run folder, MLflow store or Ray session left behind."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = write_config(tmp_path, _bad_table_raw(cifar_zip, tmp_path, "no key matches"))
    proc = in_process(capsys, "train", str(config), "--workers", workers, "--no-progress")
    assert_one_line_error(proc, "attributes.csv", "none of its 1 keys")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists() and not any(work.iterdir())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": {"name": "maxl"}}, "unlabelled images lack"),
        ({"method": {"name": "maxl_fo"}}, "unlabelled images lack"),
        ({"method": {"name": "auxilearn_labels"}}, "unlabelled images lack"),
        ({"method": {"name": "equal", "aux_task": ["rotation", "bogus"]}}, "distinct built-in tasks"),
        ({"method": {"name": "equal", "aux_task": ["table"]}}, "needs data.aux_table"),
        ({"data": {"aux_table": "t.csv"}}, "does not list table"),
        ({"columns": ["main"]}, r"data.aux_columns: table task name 'main' is reserved"),
        ({"columns": ["noise_labels"]}, r"data.aux_columns: table task name 'noise_labels' is reserved"),
        ({"columns": ["rotation"]}, r"data.aux_columns: table task name 'rotation' is reserved"),
        ({"columns": ["size", "colour", "size"]}, r"data.aux_columns: table task name 'size' is given twice"),
        ({"columns": ["a.b"]}, r"data.aux_columns: table task name 'a.b' holds a dot"),
    ],
)
def test_configs_that_cannot_work_are_one_line(cifar_zip, tmp_path, change, message) -> None:
    """A pool with a label method, unknown or unfed tasks, and table tasks named like another head or task are
    rejected when the config is validated."""
    raw = _raw(cifar_zip, tmp_path, {"name": "equal", "aux_task": "rotation"})
    names = change.pop("columns", None)
    if names is not None:
        raw["method"]["aux_task"] = ["table"]
        raw["data"].update(
            aux_table="t.csv", aux_columns=[{"name": n, "columns": ["c"], "kind": "binary"} for n in names]
        )
    for section, values in change.items():
        raw[section] = {**raw[section], **values}
    if SPECS[raw["method"]["name"]].learns_labels:
        raw["method"].pop("aux_task", None)
    with pytest.raises(UserError, match=message) as err:
        config_from_dict(raw)
    assert "\n" not in str(err.value)
