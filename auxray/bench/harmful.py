"""`auxray bench harmful`: does each learned weighting find the harmful auxiliary task? (issues #19 and #20)

The synthetic regression of ``configs/synthetic_combine.yaml`` has one helpful auxiliary target (the main signal)
and one harmful one (mostly noise). Every run config of ``configs/synthetic_weightings/`` (the loss combiner at full
cost and at the cheap settings, the combiner and JTDS with weights that sum to the number of tasks, ARML,
Auto-lambda, ForkMerge) trains it per seed beside its own fixed twin, as its spec names it: the folder's fixed
method (``equal``: every task at weight 1) for those that start there, the variant itself frozen
(``<variant>_twin``: the same initial weights, no outer steps) for those that start elsewhere, as Auto-lambda at
0.1. A row is one run: each task's initial and final weight and the validation MSE. It
takes seconds, so it is its own bench, not a part of `auxray bench overhead`'s hours of timing runs: a learning
check, not a cost measurement.

    auxray bench harmful --out benchmarks/results/bench_harmful_cpu.json
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from auxray.bench.machine import log
from auxray.bench.plan import config_entries
from auxray.bench.twins import Twin, fixed_twin, has_twin, method_section, section_init_weight, section_method_name
from auxray.bench.weighting_sets import TWIN_SUFFIX
from auxray.errors import UserError
from auxray.method_specs import spec

VARIANT_DIR = Path(__file__).resolve().parents[2] / "configs" / "synthetic_weightings"


def variants() -> tuple[str, ...]:
    """The check's variants: the config stems of configs/synthetic_weightings/ (one run config each)."""
    return config_entries(VARIANT_DIR)


def twin_of(variant: str) -> Twin | None:
    """A variant's fixed twin (None for a fixed variant): a fixed method's config of the folder, or the variant's
    own config frozen, keyed `<variant>_twin`; a twin config missing from the folder is a UserError."""
    section = method_section(VARIANT_DIR, variant)  # read once: the method's name and where its weights start
    method = spec(section_method_name(section))
    if not has_twin(method):
        return None
    twin = fixed_twin(variant, method, TWIN_SUFFIX, section_init_weight(section))
    if twin.config not in variants():
        raise UserError(f"{variant}'s fixed twin {twin.config} has no config in {VARIANT_DIR}")
    return twin


def variant_config(name: str, seed: int, overrides: Sequence[str] = ()) -> Any:
    """The run config of one variant (with a twin's `overrides`) and seed, untracked, on 1 thread."""
    from auxray.config import load_config  # pydantic: only when a run is built

    run = [f"trainer.seed={seed}", f"data.seed={seed}", "trainer.threads=1", "tracking.enabled=false"]
    return load_config(VARIANT_DIR / f"{name}.yaml", [*overrides, *run])


def run_variant(name: str, seed: int, twin: Twin | None = None) -> dict[str, Any]:
    """Train one variant (or, given its `twin`, that twin, keyed by the twin's name) on one seed; its task weights
    before and after training, and the validation MSE."""
    from auxray.data import build_data
    from auxray.methods.weighted import WeightedObjective
    from auxray.train.diagnostics import task_weights_now
    from auxray.train.loop import BilevelTrainer

    cfg = variant_config(twin.config, seed, twin.overrides) if twin else variant_config(name, seed)
    trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    objective = trainer.objective
    if isinstance(objective, WeightedObjective):  # given weights: fixed, or the start of a forking method's merges
        initial = dict(zip(objective.aux_names, objective.weights.tolist(), strict=True))
    else:
        initial = task_weights_now(trainer)
    t0 = time.perf_counter()
    trainer.fit()
    last = trainer.history[-1]
    return {
        "variant": twin.name if twin else name,
        "method": cfg.method.name,
        "seed": seed,
        "initial_weights": initial,
        "weights": _weights(last) or initial,
        "val_mse": last["val_mse"],
        "seconds": time.perf_counter() - t0,
    }


def _weights(metrics: Mapping[str, float]) -> dict[str, float]:
    """The task_weight/<task> entries of a metrics dict, keyed by task."""
    return {k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.startswith("task_weight/")}


def parse_variants(text: str | None) -> tuple[str, ...]:
    """Comma-separated variant names (None: all); an unknown one is a UserError listing the known ones."""
    known = variants()
    names = known if text is None else tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UserError(f"unknown variant(s) {unknown or '(none given)'}; choose from {', '.join(known)}")
    return names


def one_run_per_twin(twins: dict[str, Twin]) -> dict[str, Twin]:
    """Each variant's twin, where frozen twins whose run configs differ only in outer.* (which does nothing without
    outer steps: Auto-lambda with and without its lower bound) are the first such twin, trained once."""
    first: dict[str, Twin] = {}
    out = {}
    for variant, twin in twins.items():
        key = (
            variant_config(twin.config, 0, twin.overrides).model_dump_json(exclude={"outer"})
            if twin.frozen
            else twin.name
        )
        out[variant] = first.setdefault(key, twin)
    return out


def harmful_check(chosen: Sequence[str] | None = None, seeds: Sequence[int] = (0, 1, 2, 3, 4)) -> dict:
    """Every variant on every seed, then each one's fixed twin (added unasked, trained once where variants share
    it, for the MSE comparison): the rows, the seeds and each variant's twin."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must name distinct seeds, got {list(seeds)}")
    names = list(chosen or variants())
    twins = one_run_per_twin({v: t for v in names if (t := twin_of(v)) is not None})
    shared = {t.name: t for t in twins.values()}
    runs: dict[str, Twin | None] = {**dict.fromkeys(twins), **dict.fromkeys(names), **shared}
    rows = []
    for name, twin in runs.items():
        for seed in seeds:
            rows.append(run_variant(name, seed, twin))
        log(f"[harmful] {name}: {len(seeds)} seeds")
    config = str(VARIANT_DIR.relative_to(VARIANT_DIR.parents[1]))
    return {"config": config, "twins": {v: t.name for v, t in twins.items()}, "seeds": list(seeds), "rows": rows}
