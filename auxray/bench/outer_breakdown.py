"""Where one outer step's time goes, per learned method and hypergradient variant, against a plain inner step,
for `auxray bench overhead`.

torch and the trainer are imported inside the functions that use them: the CLI imports this module (through
auxray.bench.overhead) to build its parser."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from auxray.bench.machine import log, machine_info
from auxray.bench.plan import Plan
from auxray.method_specs import SPECS

BACKBONE = "convnet4"
SETTING_KEYS = ("method", "every", "steps", "reuse_graph", "batch_size", "params")
BREAKDOWN_METHODS = tuple(s.name for s in SPECS.values() if s.learns and s.hypergradient_steps)
# Each variant changes one thing from "full" (so a shipped config's own choices do not leak into the others);
# "shipped" is the config file as it is.
VARIANTS: dict[str, tuple[str, ...]] = {
    "full (recompute, all params)": (
        "hypergrad.reuse_graph=false",
        "hypergrad.params=all",
        "hypergrad.batch_size=null",
    ),
    "reuse_graph": ("hypergrad.reuse_graph=true", "hypergrad.params=all", "hypergrad.batch_size=null"),
    "last_block": ("hypergrad.reuse_graph=true", "hypergrad.params=last_block", "hypergrad.batch_size=null"),
    "batch_size=32": ("hypergrad.reuse_graph=false", "hypergrad.params=all", "hypergrad.batch_size=32"),
    "shipped": (),
}
WARMUP = 1
REPEATS = 3


def hypergrad_settings(cfg: Any) -> dict[str, Any]:
    """The hypergrad.* settings that set an outer step's cost, from a resolved config."""
    h = cfg.hypergrad.model_dump()
    return {k: h[k] for k in SETTING_KEYS}


# ---- one outer step, phase by phase ---------------------------------------------------------------------
def _median_phases(samples: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def time_variant(trainer: Any) -> dict[str, Any]:
    """Median plain inner step and median outer-step phases over REPEATS after WARMUP, and the mean cosine of
    the configured hypergradient to the full-cost one on the timed batches (taken before each step)."""
    # torch takes seconds to import; the CLI imports this module to build its parser.
    from auxray.bench.outer_timing import example_batches, outer_step_breakdown
    from auxray.train.diagnostics import hypergrad_cosine

    plain = []
    for i in range(WARMUP + REPEATS):
        batch, _ = example_batches(trainer, i)
        t0 = time.perf_counter()
        trainer.inner_step(batch)
        plain.append(time.perf_counter() - t0)
    phases, cosines = [], []
    for i in range(WARMUP + REPEATS):
        train_batch, outer_batch = example_batches(trainer, 1000 + i)
        if i >= WARMUP:
            cosines.append(hypergrad_cosine(trainer, train_batch, outer_batch))
        sample = outer_step_breakdown(trainer, train_batch, outer_batch)
        if i >= WARMUP:
            phases.append(sample)
    plain_step = statistics.median(plain[WARMUP:])
    median = _median_phases(phases)
    return {
        "plain_step_seconds": plain_step,
        "phases": median,
        "total_over_plain_step": median["total"] / plain_step,
        "cosine_to_full": statistics.fmean(cosines),
    }


def run_breakdown(
    methods: Sequence[str],
    epochs: int | None,
    quick: bool,
    extra_overrides: Sequence[str],
    ckpt_root: Path,
    config_dir: Path,
) -> dict[str, Any]:
    """Per method and hypergradient variant: one outer step's phases against a plain inner step."""
    # torch and the trainer take seconds to import; the CLI imports this module to build its parser.
    from auxray.data import build_data
    from auxray.train.loop import BilevelTrainer

    data_cache: dict[str, Any] = {}
    out: list[dict[str, Any]] = []
    device = None
    for m in methods:
        variants = []
        for name, overrides in VARIANTS.items():
            local = ("tracking.enabled=false", f"trainer.checkpoint_dir={ckpt_root}")
            cfg = Plan(epochs, BACKBONE, None, quick, (*local, *extra_overrides, *overrides), config_dir).config(m, 0)
            key = cfg.data.model_dump_json()
            if key not in data_cache:
                data_cache[key] = build_data(cfg.data, cfg.method.aux_tasks)
            trainer = BilevelTrainer(cfg, data_cache[key], progress=False)
            device = str(trainer.device)
            log(f"[overhead breakdown] {m}: {name}")
            variants.append(
                {
                    "variant": name,
                    "overrides": list(overrides),
                    "settings": hypergrad_settings(cfg),
                    **time_variant(trainer),
                }
            )
        out.append({"method": m, "variants": variants})
    return {"machine": machine_info(device), "warmup": WARMUP, "repeats": REPEATS, "quick": quick, "methods": out}


def breakdown_path(out: Path) -> Path:
    """Where the breakdown of the rows file `out` goes."""
    return out.with_name(f"{out.stem}_breakdown.json")
