"""`auxray bench distributed`: what the Ray layer costs and what an outer step communicates.

Measures (1) inner+outer steps per second of a 1-worker Ray Train run against the single-process loop
on the same work, and (2) for "global" and "local" Neumann modes, the time and all-reduced bytes per
outer step with 1 and 2 workers (or, with GPUs, 1..N GPU workers)."""

from __future__ import annotations

import time
from pathlib import Path
from statistics import median
from typing import Any

import torch

from auxray.config import config_from_dict
from auxray.data import build_data
from auxray.train.launch import train
from auxray.train.loop import BilevelTrainer
from auxray.train.ray_cluster import ensure_ray
from auxray.train.run_plan import plan_run


def bench_config(root: str, cache_dir: str | None, epochs: int, per_class: int, width: int) -> dict[str, Any]:
    """A learned-auxiliary CIFAR-10 run with an outer step every 2 inner steps."""
    return {
        "data": {
            "dataset": "cifar10",
            "root": root,
            "cache_dir": cache_dir,
            "labeled_per_class": per_class,
            "labeled_fraction": None,
            "outer_fraction": 0.2,
            "val_fraction": 0.1,
            "test_limit": 500,
        },
        "model": {"backbone": "convnet4", "width": width},
        "method": {"name": "auxilearn_combine", "aux_task": "rotation"},
        "trainer": {"epochs": epochs, "batch_size": 32, "lr": 0.03, "seed": 0, "threads": 1},
        "hypergrad": {"method": "neumann", "steps": 3, "alpha": 0.01, "every": 2},
        "tracking": {"enabled": False},
    }


def _rates(history: list[dict[str, Any]]) -> dict[str, float]:
    """Median over epochs after the first (warm-up) of the per-epoch rates."""
    rows = history[1:] or history
    return {
        "steps_per_second": median(h["steps_per_second"] for h in rows),
        "outer_step_seconds": median(h.get("outer_step_seconds", 0.0) for h in rows),
        "outer_step_allreduce_bytes": median(h.get("outer_step_allreduce_bytes", 0.0) for h in rows),
    }


def run_distributed_bench(
    root: str = "../shared/data/cifar10-images.zip",
    cache_dir: str | None = None,
    epochs: int = 3,
    per_class: int = 60,
    width: int = 16,
    workers: tuple[int, ...] = (1, 2),
    storage: str = "runs/bench",
) -> dict[str, Any]:
    """Single process vs 1-worker Ray Train, then global/local modes over `workers`, as one JSON dict."""
    raw = bench_config(root, cache_dir, epochs, per_class, width)
    raw["trainer"]["checkpoint_dir"] = str(Path(storage).resolve())
    cfg = config_from_dict(raw)
    gpus = torch.cuda.device_count()
    if gpus:
        raw["trainer"]["threads"] = None
        workers = tuple(range(1, gpus + 1))
    t0 = time.perf_counter()
    single = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    single.fit()
    assert single.auxnet is not None  # the benchmarked method learns phi
    out: dict[str, Any] = {
        "config": {
            "backbone": "convnet4",
            "width": width,
            "labeled_per_class": per_class,
            "epochs": epochs,
            "batch_size": 32,
            "neumann_steps": 3,
            "outer_every": 2,
            "primary_params": sum(p.numel() for p in single.model.parameters()),
            "phi_params": sum(p.numel() for p in single.auxnet.parameters()),
        },
        "device": "cuda" if gpus else "cpu",
        "single_process": {**_rates(single.history), "wall_seconds": time.perf_counter() - t0},
        "ray": [],
    }
    ensure_ray(None)  # started once for every run below, not inside the first one's timing
    for mode in ("global", "local"):
        for n in workers:
            run_raw = {
                **raw,
                "hypergrad": {**raw["hypergrad"], "mode": mode},
                "scaling": {"workers": n, "use_ray": True, "gpus_per_worker": 1 if gpus else 0, "max_failures": 0},
            }
            t1 = time.perf_counter()
            result = train(plan_run(config_from_dict(run_raw), name=f"bench-{mode}-{n}"), progress=False)
            row = {
                "mode": mode,
                "workers": n,
                **_rates(result["history"]),
                "wall_seconds": time.perf_counter() - t1,
                "phi_round_trip_bytes": 2 * out["config"]["phi_params"] * 4,
            }
            out["ray"].append(row)
    one = next(r for r in out["ray"] if r["mode"] == "global" and r["workers"] == 1)
    out["ray_1worker_over_single_steps_per_second"] = (
        one["steps_per_second"] / out["single_process"]["steps_per_second"]
    )
    return out
