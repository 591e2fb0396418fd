"""`auxray bench harmful`: does each learned weighting find the harmful auxiliary task? (issues #19 and #20)

The synthetic regression of ``configs/synthetic_combine.yaml`` has one helpful auxiliary target (the main signal)
and one harmful one (mostly noise). Every run config of ``configs/synthetic_weightings/`` (the loss combiner at full
cost and at the cheap settings, the combiner and JTDS with weights that sum to the number of tasks, ARML,
Auto-lambda, ForkMerge) trains it per seed beside the folder's one fixed method, the twin of them all (every task
at weight 1, nothing learned). A row is one run: each task's initial and final weight and the validation MSE. It
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
from auxray.bench.weighting_sets import method_name
from auxray.errors import UserError
from auxray.method_specs import spec

VARIANT_DIR = Path(__file__).resolve().parents[2] / "configs" / "synthetic_weightings"


def variants() -> tuple[str, ...]:
    """The check's variants: the config stems of configs/synthetic_weightings/ (one run config each)."""
    return config_entries(VARIANT_DIR)


def fixed_twin() -> str:
    """The variant whose method neither learns nor forks: the fixed twin every other variant is compared with."""
    methods = {v: spec(method_name(VARIANT_DIR, v)) for v in variants()}
    fixed = [v for v, m in methods.items() if not (m.learns or m.forks)]
    if len(fixed) != 1:
        raise UserError(f"{VARIANT_DIR} needs exactly one config of a fixed method (the twin), has {fixed}")
    return fixed[0]


def variant_config(name: str, seed: int) -> Any:
    """The run config of one variant and seed, untracked, on 1 thread."""
    from auxray.config import load_config  # pydantic: only when a run is built

    overrides = [f"trainer.seed={seed}", f"data.seed={seed}", "trainer.threads=1", "tracking.enabled=false"]
    return load_config(VARIANT_DIR / f"{name}.yaml", overrides)


def run_variant(name: str, seed: int) -> dict[str, Any]:
    """Train one variant on one seed; its task weights before and after training, and the validation MSE."""
    from auxray.data import build_data
    from auxray.methods.weighted import WeightedObjective
    from auxray.train.diagnostics import task_weights_now
    from auxray.train.loop import BilevelTrainer

    cfg = variant_config(name, seed)
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
        "variant": name,
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


def harmful_check(chosen: Sequence[str] | None = None, seeds: Sequence[int] = (0, 1, 2, 3, 4)) -> dict:
    """Every variant on every seed (the fixed twin always included, for the MSE comparison): the rows and seeds."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must name distinct seeds, got {list(seeds)}")
    twin = fixed_twin()
    names = (*(v for v in (chosen or variants()) if v != twin), twin)
    rows = []
    for name in names:
        for seed in seeds:
            rows.append(run_variant(name, seed))
        log(f"[harmful] {name}: {len(seeds)} seeds")
    config = str(VARIANT_DIR.relative_to(VARIANT_DIR.parents[1]))
    return {"config": config, "twin": twin, "seeds": list(seeds), "rows": rows}
