"""Sweep configuration: a base run config, overrides, and a search space over the settings that
hypergradients cannot tune (outer learning rate, Neumann depth and step, update period, ...); or, with
``search: grid``, grid axes whose every combination is one trial (a benchmark table: run config files x seeds)."""

from __future__ import annotations

import copy
import itertools
import math
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from auxray.config import RunConfig, config_from_dict, format_validation_error, moved
from auxray.config_yaml import read_yaml
from auxray.config_yaml import set_dotted as set_config_key
from auxray.errors import UserError
from auxray.paths import absolute_paths, output_path

Scalar = bool | int | float | str | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpace(_Strict):
    """One searched key: a float range (uniform or log), an integer range, or a choice of values."""

    type: Literal["loguniform", "uniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Scalar] | None = None
    log: bool = False

    @model_validator(mode="after")
    def _complete(self) -> ParamSpace:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty `values` list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} range needs `low` and `high`")
        if not self.low < self.high:
            raise ValueError("`low` must be below `high`")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError("a loguniform range needs `low` > 0")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int range needs whole-number `low` and `high`")
        return self

    @property
    def is_log(self) -> bool:
        """True for log-scaled ranges."""
        return self.type == "loguniform" or (self.type in ("uniform", "int") and self.log)

    def bounds(self) -> tuple[float, float]:
        """`low` and `high` of a range (set on every validated range; only a choice has none)."""
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} range needs `low` and `high`")
        return self.low, self.high

    def samples(self) -> list[Any]:
        """Representative values (both ends, or every choice) used to validate the key against RunConfig."""
        if self.type == "choice":
            return list(self.values or [])
        low, high = self.bounds()
        if self.type == "int":
            return [int(low), int(high)]
        return [float(low), float(high)]


class SchedulerConfig(_Strict):
    """Early stopping: ASHA over epochs (training_iteration); population-based training (pbt: every
    perturbation_interval epochs a trial in the bottom quantile_fraction copies the checkpoint of one in the top,
    primary net, aux net and both optimizers, and perturbs the searched keys by x0.8 / x1.2, or resamples one with
    resample_probability); or none (every trial runs to the end)."""

    type: Literal["asha", "none", "pbt"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2, gt=1)
    perturbation_interval: int = Field(2, ge=1)
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)
    synch: bool = False  # pbt: perturb once every trial reached the interval (slower, reproducible exploits)


class SweepTracking(_Strict):
    """Where the sweep's parent and trial runs go; unset fields fall back to the base config's tracking."""

    uri: str | None = None
    experiment: str | None = None


# What a population-based sweep may perturb: settings read when a trial restarts from a copied checkpoint (the inner
# schedule, the data and the model come from the checkpoint or the split, so trainer.*, data.* and model.* do not).
PBT_KEYS = ("method.", "outer.", "hypergrad.")


def unperturbable(space: Mapping[str, Any]) -> list[str]:
    """The searched keys population-based training cannot perturb (outside PBT_KEYS), sorted."""
    return sorted(k for k in space if not k.startswith(PBT_KEYS))


CONFIG_AXIS = "config"  # grid axis of run config files (relative to the sweep file): each trial's base
SEED_AXIS = "seed"  # grid axis setting data.seed and trainer.seed together


class SweepConfig(_Strict):
    """One sweep file: a searched `space` (tpe, random), or `grid` axes (grid: every combination once)."""

    base: str | None = None
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    overrides: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, ParamSpace] = Field(default_factory=dict)
    grid: dict[str, list[Scalar]] = Field(default_factory=dict)
    trials: int = Field(8, ge=1)
    concurrency: int = Field(2, ge=1)
    search: Literal["tpe", "random", "grid"] = "tpe"
    seed: int = 0
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    metric: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    cpus_per_trial: float = Field(1, gt=0)
    # A single-process trial's share of a GPU (0.25: four trials per GPU); Ray then shows the trial only the GPU it
    # was given. 0 asks for none (a trial still sees the node's GPUs, unaccounted).
    gpus_per_trial: float = Field(0, ge=0)
    storage: str = "runs/sweeps"
    tracking: SweepTracking = Field(default_factory=SweepTracking)
    _source_dir: str = PrivateAttr(".")
    _cwd: str = PrivateAttr(default_factory=os.getcwd)

    @model_validator(mode="after")
    def _search_inputs(self) -> SweepConfig:
        if self.scheduler.type == "pbt":
            if self.search != "random":
                raise ValueError(
                    "scheduler: pbt mutates each trial's settings as it trains; use search: random (its first "
                    "settings), not tpe's model or a grid's fixed combinations"
                )
            fixed = unperturbable(self.space)
            if fixed:
                raise ValueError(
                    f"scheduler: pbt perturbs settings a run reads again after copying a checkpoint "
                    f"({', '.join(p + '*' for p in PBT_KEYS)}); {', '.join(fixed)} would be ignored or change the "
                    "data mid-run: search it with tpe or random"
                )
        if self.search != "grid":
            if self.grid:
                raise ValueError("`grid` axes need `search: grid`")
            if not self.space:
                raise ValueError("the search space is empty")
            if self.base is None:
                raise ValueError("`base` (the run config) is missing")
            return self
        if self.space:
            raise ValueError("a grid sweep takes `grid` axes, not `space`")
        if not self.grid:
            raise ValueError("a grid sweep needs `grid` axes")
        empty = [key for key, values in self.grid.items() if not values]
        if empty:
            raise ValueError(f"grid axis {empty[0]!r} has no values")
        if self.base is None and CONFIG_AXIS not in self.grid:
            raise ValueError(f"a grid sweep needs `base` or a `{CONFIG_AXIS}` axis of run config files")
        if "trials" in self.model_fields_set:
            raise ValueError("`trials` is the number of grid combinations with `search: grid`; leave it out")
        if "scheduler" not in self.model_fields_set:  # a table runs every combination to the end
            self.scheduler = SchedulerConfig(type="none")
        self.trials = math.prod(len(values) for values in self.grid.values())
        return self

    @property
    def base_path(self) -> Path:
        """The base run config, relative to the sweep file's folder (a grid's first config file without `base`)."""
        return self.config_path(None)

    def config_path(self, config: Any) -> Path:
        """A run config file of the sweep (`base` when `config` is None), relative to the sweep file's folder."""
        if config is None:
            config = self.base if self.base is not None else self.grid[CONFIG_AXIS][0]
        p = Path(str(config)).expanduser()
        return p if p.is_absolute() else Path(self._source_dir) / p

    def grid_params(self) -> list[dict[str, Any]]:
        """Every combination of the grid axes, one trial's parameters each ([{}] for a searched sweep)."""
        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*self.grid.values())]

    def first_params(self) -> dict[str, Any]:
        """Parameters of a representative trial: a grid's first combination, none for a searched sweep."""
        return self.grid_params()[0]

    @property
    def storage_path(self) -> Path:
        """Absolute folder holding the Tune experiment (relative to the working directory the sweep was
        loaded in: trials run elsewhere)."""
        return output_path(self.storage, cwd=Path(self._cwd)).resolve()

    @property
    def experiment_dir(self) -> Path:
        """The Tune experiment folder of this sweep."""
        return self.storage_path / self.name

    def trial_files_dir(self, trial_id: str) -> Path:
        """A trial's own files (best.pt, metrics.jsonl, plots, attempts.jsonl). Not Tune's trial folder: an
        actor Tune reuses for the next trial keeps reporting the previous trial's folder."""
        return self.experiment_dir / "trials" / trial_id

    @property
    def state_backup_dir(self) -> Path:
        """Last-known-good copies of the experiment's state files (see auxray.tune.durable)."""
        return self.storage_path / f".{self.name}.state-backup"

    @property
    def epochs(self) -> int:
        """Epochs of one full trial (a grid's longest, when it has a trainer.epochs axis)."""
        if self.search == "grid":
            return max(self.trial_config(params).trainer.epochs for params in self.grid_params())
        return self.base_config().trainer.epochs

    def base_raw(self, config: Any = None) -> dict[str, Any]:
        """A run config's raw mapping (`base`, or a grid's `config` value) with the sweep's overrides applied."""
        raw = read_yaml(self.config_path(config))
        for key, value in self.overrides.items():
            set_dotted(raw, key, value)
        return raw

    def base_config(self) -> RunConfig:
        """The validated base config before any trial parameters (a grid's first combination)."""
        if self.search == "grid":
            return self.trial_config(self.first_params())
        return config_from_dict(self.base_raw(), f"{self.base_path} (with sweep overrides)")

    def trial_config(self, params: dict[str, Any]) -> RunConfig:
        """The run config of one trial: base (or its `config`) + overrides + the trial's parameters, with paths
        made absolute (trials run in their own working directories)."""
        raw = trial_raw(self, params)
        cfg = config_from_dict(raw, f"trial of sweep {self.name}")
        return absolute_paths(cfg, Path(self._cwd))


def trial_raw(sweep: SweepConfig, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's raw config mapping: its run config file, the overrides, then its parameters (the `seed` axis
    sets data.seed and trainer.seed)."""
    raw = sweep.base_raw(params.get(CONFIG_AXIS))
    for key, value in params.items():
        if key == CONFIG_AXIS:
            continue
        for target in ("data.seed", "trainer.seed") if key == SEED_AXIS else (key,):
            set_dotted(raw, target, value)
    return raw


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``section.key`` in a raw config mapping (a copy of value), creating sections as needed."""
    set_config_key(raw, key, copy.deepcopy(value), source="sweep key")


def _fields(annotation: Any) -> dict[str, Any]:
    """The fields of a section's type: a model's own, or any member's of a tagged union of models (the method:
    section, whose trials are validated against their own method's)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _fields(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return {k: v for member in typing.get_args(annotation) for k, v in _fields(member).items()}
    return getattr(annotation, "model_fields", None) or {}


def _known_key(key: str) -> bool:
    """Whether a dotted key names a field of RunConfig, or one entry of a mapping field (method.task_weights.X)."""
    model: Any = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = _fields(model)
        if part not in fields:
            return False
        model = fields[part].annotation
        if typing.get_origin(model) is dict:
            return i == len(parts) - 2  # the mapping's own entry: its values are validated with the config
    return not _fields(model)


def _check_key(sweep: SweepConfig, what: str, key: str) -> None:
    """A sweep's key must name a run config key; a moved one is one line naming its new place."""
    if moved(key) is not None:
        raise UserError(f"sweep {sweep.name}: {what} key {key} moved to {moved(key)}")
    if not _known_key(key):
        raise UserError(f"sweep {sweep.name}: {what} key {key!r} is not a run config key")


def validate_grid(sweep: SweepConfig) -> None:
    """Every grid axis names a run config key (or `config` files that exist, or `seed`), and every combination
    validates as a run config."""
    for key, values in sweep.grid.items():
        if key == CONFIG_AXIS:
            for value in values:
                if not isinstance(value, str) or not sweep.config_path(value).is_file():
                    raise UserError(f"sweep {sweep.name}: grid config {value!r} is not a run config file")
        elif key == SEED_AXIS:
            bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool)]
            if bad:
                raise UserError(f"sweep {sweep.name}: grid seed {bad[0]!r} is not an integer")
        else:
            _check_key(sweep, "grid", key)
    for params in sweep.grid_params():
        try:
            RunConfig.model_validate(trial_raw(sweep, params))
        except ValidationError as err:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise UserError(format_validation_error(err, f"sweep {sweep.name} with {shown}")) from None


def validate_space(sweep: SweepConfig) -> None:
    """Every overridden or searched key must exist in RunConfig and accept the values the search may pick."""
    for key in sweep.overrides:
        _check_key(sweep, "override", key)
    if sweep.search == "grid":
        validate_grid(sweep)
        return
    base = sweep.base_raw()
    for key, spec in sweep.space.items():
        _check_key(sweep, "space", key)
        for value in spec.samples():
            raw = copy.deepcopy(base)
            set_dotted(raw, key, value)
            try:
                RunConfig.model_validate(raw)
            except ValidationError as err:
                msg = format_validation_error(err, f"sweep {sweep.name} with {key}={value!r}")
                raise UserError(msg) from None
    sweep.base_config()


def load_sweep(path: str | Path) -> SweepConfig:
    """Read, validate and check a sweep file (bad keys or values are one-line UserErrors)."""
    p = Path(path)
    raw = read_yaml(p)
    raw.setdefault("name", p.stem)
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(format_validation_error(err, str(p))) from None
    sweep._source_dir = str(p.resolve().parent)
    if sweep.base is not None and not sweep.base_path.is_file():
        raise UserError(f"sweep {p}: base config not found: {sweep.base_path}")
    validate_space(sweep)
    return sweep


def finite(value: Any) -> float | None:
    """A finite float, or None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
