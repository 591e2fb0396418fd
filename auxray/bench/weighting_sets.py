"""The weighting table's auxiliary sets and what each trains: its config folder's methods (config stems) and the
fixed twin of each learned or forking one (``bench.twins``), every run key once, a method followed by its twin.

A set is one config folder of semi-supervised CIFAR-10 (5% labels) whose configs differ only in their method:
``helpful`` (rotation, consistency, pseudo-labels), ``harmful`` (the same plus noise_labels) and ``side_labels``
(data.aux_table's side labels: class attributes given on half the images, brightness, and a random column). A twin
that is a fixed method's config (``equal``) is one key, however many methods it serves; a frozen twin is
``<stem>_twin``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from auxray.bench.plan import config_entries
from auxray.bench.twins import Twin, fixed_twin, has_twin, method_section, section_init_weight, section_method_name
from auxray.errors import UserError
from auxray.method_specs import EQUAL_WEIGHTS, SPECS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
AUX_SETS = {
    "helpful": CONFIGS / "cifar10_5pct_semisup",
    "harmful": CONFIGS / "cifar10_5pct_semisup_noise",
    "side_labels": CONFIGS / "cifar10_5pct_semisup_side",
}
DEFAULT_SETS = ("helpful", "harmful")  # what matters first
# A set whose auxiliary tasks hold another set's plus a harmful one: that set's equal runs are its
# "equal_helpful_subset" row (the weights a person who knew which task hurts would pick), at no extra training.
HELPFUL_SUBSET = {"harmful": "helpful"}
SUBSET_ROW = "equal_helpful_subset"
SUBSET_METHOD = EQUAL_WEIGHTS
TWIN_SUFFIX = "_twin"
SEARCH_ROW = "weight_search"  # the row of a weight search's best weights, trained again on the table's seeds


@dataclass(frozen=True)
class SetPlan:
    """One auxiliary set's runs: the methods asked for, each one's fixed twin (stem -> Twin), and extra keys, each a
    config of the folder with overrides (key -> (stem, overrides): the weight search's best weights on equal)."""

    aux_set: str
    config_dir: Path
    methods: tuple[str, ...]
    twins: dict[str, Twin]
    extra: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, ...]:
        """Every run key once: each method, then its twin; the extra keys last."""
        out: list[str] = []
        for m in self.methods:
            for key in (m, self.twins[m].name) if m in self.twins else (m,):
                if key not in out:
                    out.append(key)
        return (*out, *(k for k in self.extra if k not in out))

    def sources(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Each key's config stem in config_dir and the overrides its run config file gets."""
        frozen = {t.name: (t.config, t.overrides) for t in self.twins.values()}
        given = {**frozen, **self.extra}
        return {k: given.get(k, (k, ())) for k in self.keys}


def parse_sets(names: Sequence[str]) -> tuple[str, ...]:
    """The sets asked for, in order, each once; an unknown name or a set without a config folder is a UserError."""
    unknown = [n for n in names if n not in AUX_SETS]
    if unknown or not names:
        raise UserError(f"unknown aux-task set(s) {unknown or '(none given)'}; choose from {', '.join(AUX_SETS)}")
    missing = [n for n in names if not AUX_SETS[n].is_dir()]
    if missing:
        shown = ", ".join(f"{n} ({AUX_SETS[n].relative_to(CONFIGS.parent)})" for n in missing)
        raise UserError(f"aux-task set(s) without a config folder yet: {shown}")
    return tuple(dict.fromkeys(names))


def set_plan(aux_set: str, config_dir: Path, methods: Sequence[str] | None) -> SetPlan:
    """The runs of one set: `methods` (config stems; None: every config of the folder) and their twins; a stem or
    a twin's config missing from the folder is a UserError naming the set."""
    known = config_entries(config_dir)
    chosen = tuple(methods) if methods is not None else known
    unknown = [m for m in chosen if m not in known]
    if unknown or not chosen:
        raise UserError(
            f"unknown method(s) {unknown or '(none given)'} for aux-task set {aux_set}; choose from {', '.join(known)}"
        )
    twins: dict[str, Twin] = {}
    for stem in chosen:
        section = method_section(config_dir, stem)  # read once: the method's name and where its weights start
        name = section_method_name(section)
        method = SPECS.get(name)
        if method is None or not has_twin(method):
            continue
        twin = fixed_twin(stem, method, TWIN_SUFFIX, section_init_weight(section))
        if twin.config not in known:
            raise UserError(f"{stem}'s fixed twin needs {twin.config}.yaml in {config_dir} (aux-task set {aux_set})")
        twins[stem] = twin
    return SetPlan(aux_set, config_dir, chosen, twins)
