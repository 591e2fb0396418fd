"""`auxray bench harmful`: does each learned weighting find the harmful auxiliary task? (issues #19 and #20)

The synthetic regression of ``configs/synthetic_combine.yaml`` has one helpful auxiliary target (the main signal)
and one harmful one (mostly noise). Every weighting variant (the loss combiner at full cost and at the cheap
settings, the combiner and JTDS with weights that sum to the number of tasks, ARML, Auto-lambda, ForkMerge) trains
it per seed beside ``equal``, the fixed twin of them all (every task at weight 1, nothing learned). A row is one
run: each task's initial and final weight and the validation MSE. It takes seconds, so it is its own bench, not a
part of `auxray bench overhead`'s hours of timing runs: a learning check, not a cost measurement.

    auxray bench harmful --out benchmarks/results/bench_harmful_cpu.json
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from auxray.bench.machine import log
from auxray.errors import UserError

BASE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic_combine.yaml"
TWIN = "equal"
_COMBINER = {"name": "auxilearn_combine", "aux_task": "targets", "combiner": "linear"}
_NEUMANN = {"method": "neumann", "steps": 5, "alpha": 0.01, "every": 2}
_PER_RUN = {"lr_per": "run", "lr": 2.0}  # the shipped normalised configs' budget: lr / the run's phi steps each
# Each variant's method, outer and hypergrad sections, replacing the base config's (the rest is the base's).
# Settings are the shipped configs' or the tests' starting values, not chosen for this check.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "combiner_full": {
        "method": _COMBINER,
        "outer": {"lr": 0.05},
        "hypergrad": {**_NEUMANN, "reuse_graph": False, "params": "all"},
    },
    "combiner_cheap": {
        "method": _COMBINER,
        "outer": {"lr": 0.05},
        "hypergrad": {**_NEUMANN, "reuse_graph": True, "params": "last_block"},
    },
    "combiner_cheap_every6": {
        "method": _COMBINER,
        "outer": {"lr": 0.05},
        "hypergrad": {**_NEUMANN, "reuse_graph": True, "params": "last_block", "every": 6},
    },
    "combiner_sum_to_k": {
        "method": {**_COMBINER, "weight_norm": "sum_to_tasks"},
        "outer": _PER_RUN,
        "hypergrad": _NEUMANN,
    },
    "jtds_sum_to_k": {
        "method": {"name": "jtds", "aux_task": "targets", "weight_norm": "sum_to_tasks"},
        "outer": _PER_RUN,
        "hypergrad": _NEUMANN,
    },
    "arml": {"method": {"name": "arml", "aux_task": "targets"}, "outer": {"lr": 0.05}, "hypergrad": {"every": 2}},
    "autolambda": {
        "method": {"name": "autolambda", "aux_task": "targets"},
        "outer": {"lr": 0.01},
        "hypergrad": {"method": "fd", "every": 2},
    },
    "forkmerge": {"method": {"name": "forkmerge", "aux_task": "targets", "merge_every": 9}},  # a period an epoch
    TWIN: {"method": {"name": "equal", "aux_task": "targets"}},
}


def variant_config(name: str, seed: int) -> Any:
    """The run config of one variant and seed: the base config with the variant's sections, untracked, 1 thread."""
    import yaml

    from auxray.config import config_from_dict  # pydantic: only when a run is built

    base = yaml.safe_load(BASE_CONFIG.read_text())
    raw = {k: v for k, v in base.items() if k not in ("method", "outer", "hypergrad")}
    raw.update(VARIANTS[name])
    raw["data"] = {**raw["data"], "seed": seed}
    raw["trainer"] = {**raw["trainer"], "seed": seed, "threads": 1}
    raw["tracking"] = {"enabled": False}
    return config_from_dict(raw, source=f"harmful-check variant {name!r}")


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
    names = tuple(VARIANTS) if text is None else tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise UserError(f"unknown variant(s) {unknown or '(none given)'}; choose from {', '.join(VARIANTS)}")
    return names


def harmful_check(variants: Sequence[str] = tuple(VARIANTS), seeds: Sequence[int] = (0, 1, 2, 3, 4)) -> dict:
    """Every variant on every seed (the fixed twin always included, for the MSE comparison): the rows and seeds."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must name distinct seeds, got {list(seeds)}")
    names = tuple(dict.fromkeys([*variants, TWIN]))
    rows = []
    for name in names:
        for seed in seeds:
            rows.append(run_variant(name, seed))
        log(f"[harmful] {name}: {len(seeds)} seeds")
    config = str(BASE_CONFIG.relative_to(BASE_CONFIG.parents[1]))
    return {"config": config, "twin": TWIN, "seeds": list(seeds), "rows": rows}
