"""A learned (or forking) method's fixed twin: the run that does the same inner work with nothing learned.

The spec names it (``MethodSpec.twin``): a fixed method's config of the same folder (``equal``), trained as it is
and shared by every method whose twin it is, or the method's own config frozen (``hypergrad.enabled: false``: the
same initial weights or labels, no outer steps). A config that starts its weights elsewhere than that fixed method
(``method.init_weight`` other than 1, as JTDS's published 1/8) is twinned with itself frozen: the twin must start
where the method does, or the table credits learning with what the start gives. A twin is a key of a table's
runs with its config file's stem and overrides; the grid reads it from a run config file written with those
overrides applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auxray.config_yaml import apply_overrides, read_yaml
from auxray.method_specs import DEFAULT_METHOD, MethodSpec

FROZEN = ("hypergrad.enabled=false",)
FIXED_START = 1.0  # every task's weight in the fixed method a spec names as twin (equal weights)


@dataclass(frozen=True)
class Twin:
    """A fixed twin: its key among a table's runs, its config file's stem and the overrides applied to it."""

    name: str
    config: str
    overrides: tuple[str, ...] = ()

    @property
    def frozen(self) -> bool:
        """Whether this twin is a learned config with its outer steps off (else a fixed method's config as it is)."""
        return bool(self.overrides)


def has_twin(method: MethodSpec) -> bool:
    """Whether a method has a fixed twin: it learns or forks, and its spec names one."""
    return (method.learns or method.forks) and method.twin is not None


def fixed_twin(stem: str, method: MethodSpec, frozen_suffix: str = "_frozen", init_weight: float | None = None) -> Twin:
    """The fixed twin of the config `stem` of `method`: the twin method's config as it is, or, when the twin is a
    learned method or the config's `init_weight` (its method.init_weight, None when unset) is not the fixed
    method's start, that config (this one when the spec names itself) frozen, keyed `<config><frozen_suffix>`."""
    if method.twin is None:
        raise ValueError(f"{method.name} has no fixed twin")
    own_start = init_weight is not None and init_weight != FIXED_START
    config = stem if method.twin == method.name or own_start else method.twin
    if method.twin_is_frozen or own_start:
        return Twin(f"{config}{frozen_suffix}", config, FROZEN)
    return Twin(config, config)


def method_section(config_dir: Path, stem: str) -> dict[str, Any]:
    """The method: section of config_dir's `stem`.yaml as written (empty when it has none)."""
    import yaml

    raw = yaml.safe_load((config_dir / f"{stem}.yaml").read_text()) or {}
    return dict(raw.get("method") or {})


def section_method_name(section: Mapping[str, Any]) -> str:
    """A config's method.name from its method: section (the default method when it names none)."""
    return str(section.get("name", DEFAULT_METHOD))


def section_init_weight(section: Mapping[str, Any]) -> float | None:
    """A config's method.init_weight from its method: section (None when unset): where its learned weights start."""
    value = section.get("init_weight")
    return None if value is None else float(value)


def write_run_configs(sources: Mapping[str, tuple[str, tuple[str, ...]]], config_dir: Path, target: Path) -> None:
    """One run config file per key under `target`: `config_dir`'s file of the key's stem with the key's overrides
    applied (sources: key -> (stem, overrides)). Data roots resolve against the working directory, so a copy
    elsewhere is the same run."""
    import yaml

    target.mkdir(parents=True, exist_ok=True)
    for key, (stem, overrides) in sources.items():
        raw = apply_overrides(read_yaml(config_dir / f"{stem}.yaml"), list(overrides))
        (target / f"{key}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
