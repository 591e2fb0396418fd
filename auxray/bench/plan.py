"""What the reproduction trains: the methods and seeds of the table, and each (method, seed)'s resolved config.

Every method reads its own ``configs/cifar10_5pct/<method>.yaml`` under the same overrides (epochs, backbone,
quick-mode data slice, --set) and its seed, and the table is fair only when the configs then share their data,
model and trainer settings. A run is identified by the fingerprint of its resolved config, so a changed budget,
backbone or config file is another run.

``auxray.config`` (pydantic) is imported inside the functions that need it: the ``auxray`` CLI imports this
module (through ``bench.overhead`` and ``bench.reproduce``) when it builds its parser, and stays quick to start.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auxray.config_yaml import parse_overrides, read_yaml, set_dotted
from auxray.errors import UserError
from auxray.method_specs import SPECS, spec

if TYPE_CHECKING:
    from auxray.config import RunConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "cifar10_5pct"
DEFAULT_METHODS = tuple(s.name for s in SPECS.values() if s.in_table)
DEFAULT_SEEDS = (0, 1, 2)
QUICK_PER_CLASS = 40
QUICK_TEST_LIMIT = 1000

# The settings of hypergrad.* that matter to each hypergradient (a method's own are in its spec).
_HYPERGRAD_KEYS = {
    "neumann": ("method", "steps", "alpha", "every", "hvp", "mode"),
    "cg": ("method", "steps", "tol", "damping", "every", "hvp", "mode"),
    "exact": ("method", "every"),
    "unroll": ("method", "unroll_lr", "every"),
    "fd": ("method", "unroll_lr", "fd_eps", "every"),
}

Key = tuple[str, int]  # (method, seed)


def parse_list(text: str | None) -> list[str]:
    """A comma-separated command-line list (``--methods a,b``), blanks dropped."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    """`--seeds 0,1` as integers (None when not given); anything else is a UserError."""
    if text is None:
        return None
    try:
        return tuple(int(s) for s in parse_list(text))
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers, got {text!r}") from None


def config_entries(config_dir: Path) -> tuple[str, ...]:
    """The table's possible rows: the config files of `config_dir` by stem, in the usual method order (a stem
    names a method, or a variant such as auxilearn_linear), others after them alphabetically."""
    stems = sorted(p.stem for p in Path(config_dir).glob("*.yaml"))
    order = list(SPECS)
    return tuple(sorted(stems, key=lambda s: (order.index(s) if s in order else len(order), s)))


def default_methods(config_dir: Path) -> tuple[str, ...]:
    """What a reproduction trains when no --methods is given: the usual methods, or every config of another folder."""
    return DEFAULT_METHODS if Path(config_dir) == CONFIG_DIR else config_entries(config_dir)


def check_methods(methods: Sequence[str], config_dir: Path = CONFIG_DIR) -> None:
    """Raise UserError unless `methods` names at least one config of `config_dir`, all present."""
    known = config_entries(config_dir)
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise UserError(f"unknown method(s) {unknown or '(none given)'}; choose from {', '.join(known)}")


def default_tag(backbone: str, quick: bool, config_dir: Path = CONFIG_DIR) -> str:
    """The results' file tag: quick_<backbone>, or <config folder>_<backbone>."""
    return f"quick_{backbone}" if quick else f"{Path(config_dir).name}_{backbone}"


# The data keys that say which auxiliary tasks a run has (the side-label table): part of a method's auxiliary set.
AUX_SET_DATA_KEYS = ("aux_table", "aux_columns")


def shared_settings(cfg: Any) -> dict[str, Any]:
    """Everything that must be identical across methods for a fair table: data (bar the seed and the side-label
    table, which names auxiliary tasks as method.aux_task does, so STL needs none), model, trainer (bar the seed and
    where checkpoints go)."""
    d = cfg.model_dump()
    data = {k: v for k, v in d["data"].items() if k not in ("seed", *AUX_SET_DATA_KEYS)}
    trainer = {k: v for k, v in d["trainer"].items() if k not in ("seed", "checkpoint_dir")}
    return {"data": data, "model": d["model"], "trainer": trainer}


def method_settings(cfg: Any) -> dict[str, Any]:
    """The method.*, outer.* and hypergrad.* settings this method actually uses, from its resolved config."""
    method = spec(cfg.method.name)
    out: dict[str, Any] = cfg.method.model_dump(exclude={"name"})
    outer = cfg.outer.model_dump()
    out.update({f"outer.{k}": outer[k] for k in method.outer_keys})
    if method.learns:
        h = cfg.hypergrad.model_dump()
        for k in _HYPERGRAD_KEYS.get(cfg.hypergrad.method, tuple(h)):
            out[f"hypergrad.{k}"] = h[k]
    return out


# Config keys added after tables were recorded, with their defaults: left out of the hash while at the default, so a
# new key does not make every recorded run stale (at its default a run is the one trained before the key existed).
ADDED_KEYS: dict[tuple[str, str], Any] = {("outer", "lower_bound"): None, ("method", "prune_steps"): 0}


def fingerprint(cfg: Any) -> str:
    """A hash of the resolved config, bar where checkpoints go, tracking, and keys added later while at their
    defaults: equal fingerprints, same run."""
    d = cfg.model_dump()
    d["trainer"].pop("checkpoint_dir", None)
    d.pop("tracking", None)
    for (section, key), default in ADDED_KEYS.items():
        if d[section].get(key, default) == default:
            d[section].pop(key, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    """The overrides every method's config gets in one reproduction (all but the seed)."""

    epochs: int | None
    backbone: str
    width: int | None
    quick: bool
    extra_overrides: tuple[str, ...] = ()
    config_dir: Path = CONFIG_DIR

    def overrides(self) -> dict[str, Any]:
        """The shared overrides as dotted keys and values (a table's grid sweeps take them as `overrides`)."""
        out: dict[str, Any] = {"model.backbone": self.backbone}
        if self.epochs is not None:
            out["trainer.epochs"] = self.epochs
        if self.width is not None:
            out["model.width"] = self.width
        if self.quick:
            out.update(
                {
                    "data.labeled_per_class": QUICK_PER_CLASS,
                    "data.labeled_fraction": None,
                    "data.test_limit": QUICK_TEST_LIMIT,
                }
            )
        return {**out, **parse_overrides(self.extra_overrides)}

    def config(self, method: str, seed: int) -> RunConfig:
        """The resolved config of one (method, seed); a bad option raises UserError."""
        from auxray.config import config_from_dict

        path = self.config_dir / f"{method}.yaml"
        raw = read_yaml(path)
        for key, value in {**self.overrides(), "data.seed": seed, "trainer.seed": seed}.items():
            set_dotted(raw, key, value)
        return config_from_dict(raw, str(path))


def resolve_configs(plan: Plan, methods: Sequence[str], seeds: Sequence[int]) -> dict[Key, RunConfig]:
    """Every (method, seed)'s config, resolved before any training so that a bad option fails at once; raises
    UserError when two methods differ in their shared settings (the first method's are the reference)."""
    cfgs = {(m, s): plan.config(m, s) for m in methods for s in seeds}
    reference = shared_settings(cfgs[methods[0], seeds[0]])
    for (m, _), cfg in cfgs.items():
        mine = shared_settings(cfg)
        if mine != reference:
            diff = [
                f"{sec}.{k}: {reference[sec].get(k)!r} ({methods[0]}) vs {mine[sec].get(k)!r} ({m})"
                for sec in reference
                for k in set(reference[sec]) | set(mine[sec])
                if reference[sec].get(k) != mine[sec].get(k)
            ]
            raise UserError("methods must share data/model/trainer settings for a fair table; " + "; ".join(diff))
    return cfgs


def carried_runs(
    plan: Plan,
    methods: Sequence[str],
    seeds: Sequence[int],
    done: Mapping[tuple, dict[str, Any]],
    reference: dict[str, Any],
) -> dict[Key, tuple[dict[str, Any], RunConfig]]:
    """Finished runs of methods not asked for this time whose config (under this plan) is unchanged and shares
    the reference settings: (row, config) by (method, seed). `done` maps (method, seed, fingerprint) to a row.
    The plan should fix the epochs, so a method whose config file has another default is compared fairly."""
    out: dict[Key, tuple[dict[str, Any], RunConfig]] = {}
    for m in config_entries(plan.config_dir):
        if m in methods:
            continue
        for s in seeds:
            try:
                c = plan.config(m, s)
            except Exception:  # no config for it, or an override it does not take
                break
            row = done.get((m, s, fingerprint(c)))
            if row is not None and shared_settings(c) == reference:
                out[m, s] = row, c
    return out


def table_order(methods: Sequence[str], carried: Sequence[str], config_dir: Path = CONFIG_DIR) -> tuple[str, ...]:
    """The table's methods: those asked for, plus carried ones, in the usual order (not "asked for first")."""
    if not carried:
        return tuple(methods)
    order = config_entries(config_dir)
    return tuple(sorted(tuple(methods) + tuple(carried), key=order.index))
