"""Run configuration: pydantic schemas for one YAML file, validated on load, with ``--set`` overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from auxray.config_yaml import apply_overrides, read_yaml
from auxray.errors import UserError
from auxray.importpath import check_import_path
from auxray.method_settings import AUX_TASKS, MethodSettings, OuterOptimizer
from auxray.method_specs import DEFAULT_METHOD, SPECS, HypergradMethod, defining_method

BACKBONES = ("convnet4", "vgg16", "resnet18", "mlp")
UNLABELED_CHOICES = ("none", "rest")
# Names a table task cannot take: its name is its head's and its loss's, beside the main head, the trunk's features
# and the built-in auxiliary tasks.
RESERVED_TASK_NAMES = ("main", "features", *AUX_TASKS)
DATA_ENV = "AUXRAY_DATA"


def data_home() -> Path:
    """Where data sets live unless a config says otherwise: $AUXRAY_DATA, else $XDG_CACHE_HOME/auxray, else
    ~/.cache/auxray (a folder any user has, unlike this repository's ../shared/data)."""
    chosen = os.environ.get(DATA_ENV)
    if chosen:
        return Path(chosen).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "auxray"


def default_data_root() -> str:
    """The default CIFAR-10 folder, ``data_home()/cifar10``, which a run fills by download when it is empty."""
    return str(data_home() / "cifar10")


def _downloads_by_default(data: dict[str, Any]) -> bool:
    """data.download's default: true only for CIFAR-10 at the default root (never fetch into a path the user named)."""
    return data.get("dataset") == "cifar10" and data.get("root") == default_data_root()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TableTask(_Section):
    """One auxiliary task from columns of data.aux_table: binary (one or many 0/1 columns), categorical (one
    column of class ids; classes inferred unless given) or regression (one or many numeric columns, standardised)."""

    name: str = Field(min_length=1)
    columns: list[str] = Field(min_length=1)
    kind: Literal["binary", "categorical", "regression"]
    classes: int | None = Field(None, gt=1)

    @model_validator(mode="after")
    def _one_categorical_column(self) -> TableTask:
        if self.kind == "categorical" and len(self.columns) != 1:
            raise ValueError(f"table task {self.name!r}: a categorical task takes one column")
        if self.classes is not None and self.kind != "categorical":
            raise ValueError(f"table task {self.name!r}: classes applies to categorical tasks only")
        return self


class DataConfig(_Section):
    """Which data set, where it lives, and how the few-label / outer / validation splits are carved.

    outer_fraction: the share of the labelled images held out as the outer set, on whose main-task loss the
    outer (upper-level) step judges the auxiliary network.

    root defaults to ``default_data_root()`` (a cache folder), and download to true there: CIFAR-10 is fetched
    on first use. A root the config names is never downloaded into unless download: true is set too.
    """

    dataset: Literal["cifar10", "imagefolder", "synthetic"] = "cifar10"
    root: str = Field(default_factory=default_data_root)
    cache_dir: str | None = None
    download: bool = Field(default_factory=_downloads_by_default)
    labeled_fraction: float | None = Field(0.05, gt=0, le=1)
    labeled_per_class: int | None = Field(None, gt=0)
    outer_fraction: float = Field(0.1, ge=0, lt=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_limit: int | None = Field(None, gt=0)
    augment: bool = True
    image_size: int = Field(32, gt=0)
    seed: int = 0
    # Images without main labels that auxiliary losses train on: none; rest (every training image outside the
    # labelled train / outer / validation subsets); or a folder or .zip of images (flat or class folders).
    unlabeled: str = "none"
    unlabeled_batch_size: int | None = Field(None, gt=0)  # per inner step; unset: trainer.batch_size
    # Auxiliary labels from a table (method.aux_task: table): a Parquet or CSV file keyed by each image's path
    # relative to the data root (class folder included), and the tasks its columns make.
    aux_table: str | None = None
    aux_key: str = "path"
    aux_columns: list[TableTask] = Field(default_factory=list)

    @field_validator("aux_columns")
    @classmethod
    def _distinct_task_names(cls, tasks: list[TableTask]) -> list[TableTask]:
        """Each table task names its own head and loss: no two alike, none a reserved name, no dot."""
        seen: set[str] = set()
        for task in tasks:
            if task.name in RESERVED_TASK_NAMES:
                raise ValueError(
                    f"table task name {task.name!r} is reserved ({', '.join(RESERVED_TASK_NAMES)}); rename the task"
                )
            if "." in task.name:
                raise ValueError(f"table task name {task.name!r} holds a dot, which a head name cannot")
            if task.name in seen:
                raise ValueError(f"table task name {task.name!r} is given twice; give each task its own name")
            seen.add(task.name)
        return tasks

    @property
    def pool_path(self) -> str | None:
        """data.unlabeled when it names a folder or zip of images (not one of UNLABELED_CHOICES), else None."""
        return None if self.unlabeled in UNLABELED_CHOICES else self.unlabeled

    @model_validator(mode="after")
    def _one_budget(self) -> DataConfig:
        if self.outer_fraction + self.val_fraction >= 1:
            raise ValueError("outer_fraction + val_fraction must be below 1")
        if self.dataset == "imagefolder" and "root" not in self.model_fields_set:
            raise ValueError("dataset imagefolder needs root (a folder or .zip of class folders)")
        return self


class ModelConfig(_Section):
    """Backbone of the primary network (and of the label generator).

    backbone: a built-in trunk, or a user's own as ``"package.module:factory"``, where
    ``factory(in_channels=..., width=..., in_features=...)`` returns ``(trunk, feat_dim)``: an ``nn.Module`` mapping
    inputs to flat features ``[B, feat_dim]`` (see ``auxray.models.build_trunk``). The path is imported on validation.
    """

    backbone: str = "convnet4"
    width: int = Field(64, gt=0)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        return check_import_path(v, BACKBONES, "backbone")


def _method_tag(value: Any) -> str | None:
    """The method.name that tags a method: section (None when it has none, which RunConfig fills in)."""
    if isinstance(value, dict):
        name = value.get("name")
        return name if isinstance(name, str) else None
    return value.name if isinstance(value, MethodSettings) else None


if TYPE_CHECKING:
    MethodSection = MethodSettings
else:
    # One settings model per method, tagged by its name: another method's knob is an unknown key.
    MethodSection = Annotated[
        Union[tuple(Annotated[s.settings, Tag(name)] for name, s in SPECS.items())],  # noqa: UP007
        Discriminator(_method_tag),
    ]
METHOD_SECTION: TypeAdapter[MethodSettings] = TypeAdapter(MethodSection)


def default_method() -> MethodSettings:
    """The method: section of a config that names no method."""
    return SPECS[DEFAULT_METHOD].settings(name=DEFAULT_METHOD)


# Keys that moved, by their new place: a config naming an old one is one line saying where it went.
MOVED_KEYS = {
    "method.aux_lr": "outer.lr",
    "method.aux_lr_per": "outer.lr_per",
    "method.aux_weight_decay": "outer.weight_decay",
    "method.aux_optimizer": "outer.optimizer",
    "method.aux_grad_clip": "outer.grad_clip",
    "data.aux_fraction": "data.outer_fraction",
}


def moved(key: str) -> str | None:
    """Where a moved dotted key lives now (None: it did not move)."""
    return MOVED_KEYS.get(key)


def _names(data: dict[str, Any], key: str) -> bool:
    """Whether a raw config mapping sets the dotted `section.key`."""
    section, name = key.split(".")
    return isinstance(data.get(section), dict) and name in data[section]


class TrainerConfig(_Section):
    """Inner (primary-network) optimisation, checkpoints and evaluation."""

    epochs: int = Field(10, gt=0)
    batch_size: int = Field(128, gt=0)
    eval_batch_size: int = Field(1000, gt=0)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    scheduler: Literal["none", "cosine", "step"] = "cosine"
    max_steps_per_epoch: int | None = Field(None, gt=0)
    seed: int = 0
    device: str = "auto"
    threads: int | None = Field(None, gt=0)
    checkpoint_dir: str | None = None
    checkpoint_every: int = Field(1, gt=0)
    dtype: Literal["float32", "float64"] = "float32"


class HypergradConfig(_Section):
    """How the auxiliary network's hypergradient is computed (auxray.hypergrad's rules), and what it may skip.

    enabled: false keeps the aux net at its initial value (no outer steps): a learned method's fixed twin.
    reuse_graph: at an outer step the training batch's forward and backward run once; the same gradient
    updates W and its graph serves the Hessian-vector products (no second pass over the batch).
    batch_size: the hypergradient uses at most this many samples of the training and outer batches.
    params: which primary parameters the hypergradient differentiates through: "all", or "last_block" (the heads
    and the trunk's last block; the rest held fixed). Heads alone would give zero: no head but the main one
    touches the main loss, and the main head's gradient does not depend on phi.
    report_cosine: also compute the full-cost hypergradient at each epoch's last outer step and log its
    cosine with the cheap one (hypergrad_cosine), so the trade is visible.
    """

    method: HypergradMethod = "neumann"
    steps: int = Field(3, ge=0)
    alpha: float = Field(0.01, gt=0)
    tol: float = Field(1e-6, gt=0)
    damping: float = Field(0.0, ge=0)
    every: int = Field(30, gt=0)
    hvp: Literal["auto", "fwdrev", "revrev"] = "revrev"
    unroll_lr: float | None = Field(None, gt=0)
    fd_eps: float = Field(0.01, gt=0)
    mode: Literal["global", "local"] = "global"
    enabled: bool = True
    reuse_graph: bool = True
    batch_size: int | None = Field(None, gt=0)
    params: Literal["all", "last_block"] = "all"
    report_cosine: bool = False
    # Hypergradients of this many outer batches (each every `every` inner steps) averaged into one phi step, to
    # lower their noise; the run's last incomplete group is not applied. Logged: hypergrad_successive_cosine.
    accumulate: int = Field(1, ge=1)


class ScalingConfig(_Section):
    """Data-parallel Ray Train settings; workers=1 and no address keeps the run in one process."""

    workers: int = Field(1, ge=1)
    gpus_per_worker: float = Field(0, ge=0)
    use_ray: bool = False
    address: str | None = None
    max_failures: int = Field(2, ge=0)
    # A forking method's branches on this many Ray actors at once (each one CPU and gpus_per_worker GPUs), joined
    # at `address` or on a local Ray; 0 trains them one after another in the run's process. Same results.
    branch_actors: int = Field(0, ge=0)


class TrackingConfig(_Section):
    """MLflow tracking: None uses a local SQLite store in the working directory."""

    uri: str | None = None
    experiment: str = "auxray"
    run_name: str | None = None
    enabled: bool = True


class RunConfig(_Section):
    """One bi-level training run."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodSection = Field(default_factory=default_method)
    outer: OuterOptimizer = Field(default_factory=OuterOptimizer)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    hypergrad: HypergradConfig = Field(default_factory=HypergradConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_method(cls, data: Any) -> Any:
        """A method: section that names no method is the default method's; a moved key is one line naming its new
        place."""
        if not isinstance(data, dict):
            return data
        gone = [f"{old} moved to {new}" for old, new in MOVED_KEYS.items() if _names(data, old)]
        if gone:
            raise ValueError("; ".join(gone))
        if isinstance(data.get("method"), dict) and "name" not in data["method"]:
            return {**data, "method": {"name": DEFAULT_METHOD, **data["method"]}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        m = self.method
        method = SPECS[m.name]
        if method.needs_aux_task and m.aux_tasks == ("none",):
            raise ValueError(
                f"method {m.name!r} needs an auxiliary task (method.aux_task: rotation, or targets for "
                "data that carries them, or your own as 'package.module:factory')"
            )
        self._data_for_tasks()
        if method.inner_sgd and self.trainer.optimizer != "sgd":
            raise ValueError(
                f"method {m.name!r} looks ahead along the inner SGD step (momentum, weight decay); "
                "set trainer.optimizer: sgd"
            )
        if self.scaling.branch_actors and not method.forks:
            raise ValueError(f"scaling.branch_actors trains a forking method's branches; method {m.name!r} forks none")
        if method.forks and self.scaling.workers > 1:
            raise ValueError(
                f"method {m.name!r} trains its branches in one process; set scaling.workers: 1 "
                "(data-parallel branches are not supported yet)"
            )
        if self.hypergrad.params == "last_block" and self.model.backbone not in BACKBONES:
            raise ValueError(
                f"hypergrad.params: last_block needs a built-in model.backbone ({', '.join(BACKBONES)}); "
                f"the last block of {self.model.backbone!r} is unknown, so use hypergrad.params: all"
            )
        self._own_hypergradient()
        # Set to other than its default (a dumped config names every key), for a method that does not read it.
        unread = [k for k, v in self.outer.model_dump().items() if v != OuterOptimizer.model_fields[k].get_default()]
        for key in (k for k in unread if k not in method.outer_keys):
            raise ValueError(f"outer.{key} does nothing for method {m.name!r}; drop it")
        if self.hypergrad.accumulate != 1 and not (method.learns and method.hypergradient_steps):
            raise ValueError(f"hypergrad.accumulate groups outer steps; method {m.name!r} takes none, so drop it")
        if self.hypergrad.method == "unroll" and self.hypergrad.hvp == "fwdrev":
            raise ValueError(
                "hypergrad.hvp: fwdrev takes the H-vector products of an implicit hypergradient (neumann, cg, "
                "exact); hypergrad.method: unroll takes none"
            )
        return self

    def _data_for_tasks(self) -> None:
        """The unlabelled pool and the table go with the methods and tasks that can use them."""
        m, d = self.method, self.data
        if d.unlabeled != "none" and SPECS[m.name].learns_labels:
            raise ValueError(
                f"method {m.name!r} generates labels from the main label, which unlabelled images lack; "
                "set data.unlabeled: none or pick a method that weighs given auxiliary tasks"
            )
        if d.unlabeled != "none" and d.dataset == "synthetic":
            raise ValueError("data.unlabeled takes images; the synthetic data set has none to spare")
        if "table" in m.aux_tasks and (d.aux_table is None or not d.aux_columns):
            raise ValueError("method.aux_task: table needs data.aux_table (a Parquet or CSV file) and data.aux_columns")
        if d.aux_table is not None and "table" not in m.aux_tasks:
            raise ValueError("data.aux_table is set but method.aux_task does not list table")

    def _own_hypergradient(self) -> None:
        """A method defined by its hypergradient (a label method) picks it unless hypergrad.method is given; a given
        one must be its own."""
        method, h = SPECS[self.method.name], self.hypergrad
        allowed = method.hypergradients
        if not allowed or h.method in allowed:
            return
        if "method" not in h.model_fields_set:
            h.method = allowed[0]
            return
        other = defining_method(h.method)
        choices = " or ".join([", ".join(allowed[:-1]), allowed[-1]] if len(allowed) > 1 else allowed)
        raise ValueError(
            f"method.name: {method.name} learns {'labels' if method.learns_labels else 'task weights'} by "
            f"{method.hypergradient_words} (hypergrad.method: {choices}), "
            f"not hypergrad.method: {h.method} (that pairing is method.name: {other.name if other else 'none'}); "
            "leave hypergrad.method unset and the method picks its own"
        )


def _problem(e: Any) -> str:
    """One validation error as `key: what is wrong` (a check across keys names them in its message)."""
    where = [str(p) for p in e["loc"]]
    msg = str(e.get("ctx", {}).get("error", e["msg"])) if e["type"] == "value_error" else e["msg"]
    if where[:1] == ["method"] and e["type"] == "union_tag_invalid":
        return f"method.name: unknown method {e['ctx']['tag']!r}; choose one of {', '.join(SPECS)}"
    if where[:1] == ["method"] and e["type"] == "union_tag_not_found":
        return "method: a mapping of settings whose name is a method's (method.name)"
    if where[:1] == ["method"] and len(where) > 1 and where[1] in SPECS:
        tag, where = where[1], ["method", *where[2:]]  # drop the union's tag: the method's name
        if e["type"] == "extra_forbidden":
            return f"{'.'.join(where)}: not a setting of method {tag!r}"
        if len(where) == 1:  # a check across the method's settings names them in its message
            return msg
    loc = ".".join(where)
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{loc}: {msg}" if loc else msg


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming every invalid or unknown key."""
    return f"invalid config {source}: " + "; ".join(_problem(e) for e in err.errors())


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> RunConfig:
    """Validate a raw mapping into a RunConfig."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load, override and validate a run config; relative data roots resolve against the working directory."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return config_from_dict(raw, str(path))
