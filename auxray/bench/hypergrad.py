"""Hypergradient benchmark: seconds and peak memory of one outer step per method, backbone and K,
against one plain training step and a plain "obvious" reverse-over-reverse Neumann baseline.

It measures what training runs: the problem is the demo's method (AuxiLearn's nonlinear loss combiner with
rotation prediction, built by the same registry the trainer uses), and every auxray hypergradient is taken by
``auxray.train.hyperstep.compute_hypergrad`` (the trainer's outer step at the current W: its BatchNorm guard,
its pure functions over W and phi, ``implicit_from_graph``) on random CIFAR-shaped batches.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation at the call's start;
on CPU the high-water mark of the process RSS above its value at the call's start, sampled every
millisecond by a thread reading /proc/self/statm (after gc and glibc ``malloc_trim``), so it counts
everything the process touched, allocator slack included; ``None`` where /proc is missing.
The memory is taken on the warm-up run; timings are the median (and the min, steadier on a
shared machine) of the following ``repeats`` runs.
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from auxray.config import HypergradConfig, config_from_dict
from auxray.hypergrad import batch_stats_only, select_hvp
from auxray.methods import Batch, Objective, build_objective
from auxray.models import MultiHeadNet, build_trunk
from auxray.train.hypergradient import build_hypergradient
from auxray.train.hyperstep import compute_hypergrad

NUM_CLASSES = 10
ALL_METHODS = ("neumann", "cg", "unroll", "finite_difference", "naive_neumann")
CONFIG_METHOD = {"neumann": "neumann", "cg": "cg", "unroll": "unroll", "finite_difference": "fd"}
CPU_OVERRIDES = {"resnet18": {"batch_size": 32, "repeats": 2, "max_k": 5}}
ALPHA, LR, TOL = 1e-2, 1e-2, 1e-6
PROBLEM = "auxilearn_combine: nonlinear loss combiner over the main and rotation losses (the demo's method)"


@dataclass
class Problem:
    """What the trainer holds at an outer step: the objective, the primary net (W), the aux net (phi), a prepared
    training batch (L_T) and an outer batch (L_A, on the held-out outer set)."""

    objective: Objective
    model: nn.Module
    auxnet: nn.Module
    train: Batch
    outer_batch: Batch

    def inner_loss(self) -> Tensor:
        """L_T(W, phi) on the training batch, through the modules (as an ordinary inner step takes it)."""
        return self.objective.inner(self.model, self.auxnet, self.train).loss

    def hypergrad(self, method: str, k: int | None = None, hvp: str = "revrev") -> tuple[Tensor, ...]:
        """dL_A/dphi by the trainer's own outer step (``compute_hypergrad``), for a bench method name."""
        cfg = HypergradConfig.model_validate(
            {"method": CONFIG_METHOD[method], "steps": k or 0, "alpha": ALPHA, "tol": TOL, "hvp": hvp, "unroll_lr": LR}
        )
        hg = build_hypergradient(cfg)
        return compute_hypergrad(self.objective, self.model, self.auxnet, self.train, self.outer_batch, hg, inner_lr=LR)


def build_problem(backbone: str, batch_size: int, device: str, width: int = 64, seed: int = 0) -> Problem:
    """The demo's objective (nonlinear loss combiner over the main and rotation losses) on a fresh primary net,
    with random CIFAR-shaped training and outer batches prepared by the objective (rotated copies included)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cfg = config_from_dict(
        {
            "model": {"backbone": backbone, "width": width},
            "method": {"name": "auxilearn_combine", "aux_task": "rotation", "combiner": "nonlinear"},
        }
    )
    trunk, feat_dim = build_trunk(backbone, width=width)
    objective = build_objective(cfg, num_classes=NUM_CLASSES, task="classification", feat_dim=feat_dim, in_channels=3)
    model = MultiHeadNet(trunk, feat_dim, objective.heads).to(device).train()
    auxnet = objective.build_auxnet(model)
    assert auxnet is not None
    auxnet = auxnet.to(device).train()

    def batch() -> Batch:
        x = torch.randn(batch_size, 3, 32, 32, generator=gen)
        y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=gen)
        return {k: v.to(device) for k, v in objective.prepare(x, y, gen).items()}

    return Problem(objective, model, auxnet, batch(), batch())


def _fill(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> list[Tensor]:
    """Zeros for None gradients."""
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like)]


def naive_neumann(problem: Problem, steps: int, alpha: float = ALPHA) -> list[Tensor]:
    """The obvious implementation: each Neumann iteration reruns the forward pass and recomputes
    grad(L_T, W, create_graph=True) from scratch, with Python loops over the parameter lists (same losses and
    BatchNorm guard as the trainer's outer step)."""
    params, hparams = list(problem.model.parameters()), list(problem.auxnet.parameters())
    with batch_stats_only(problem.model, problem.auxnet):
        outer = problem.objective.outer(problem.model, problem.outer_batch)
        v = _fill(torch.autograd.grad(outer, params, allow_unused=True), params)
        p = [t.clone() for t in v]
        acc = [t.clone() for t in v]
        for _ in range(steps):
            g = torch.autograd.grad(problem.inner_loss(), params, create_graph=True, allow_unused=True)
            hp = _fill(torch.autograd.grad(g, params, grad_outputs=p, allow_unused=True), params)
            p = [pi - alpha * hi for pi, hi in zip(p, hp)]
            acc = [ai + pi for ai, pi in zip(acc, p)]
        g = torch.autograd.grad(problem.inner_loss(), params, create_graph=True, allow_unused=True)
        mixed = torch.autograd.grad(g, hparams, grad_outputs=[alpha * a for a in acc], allow_unused=True)
    return [-m for m in _fill(mixed, hparams)]


def plain_step(problem: Problem, optimizer: torch.optim.Optimizer) -> None:
    """One ordinary training step of the primary net on L_T: forward, backward, SGD step."""
    optimizer.zero_grad(set_to_none=True)
    problem.inner_loss().backward()
    optimizer.step()


class _PeakMemory:
    """Peak memory above the starting point, in MiB (see module docstring for what is measured)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            return None

    def _sample(self, start: int) -> None:
        peak = start
        while not self._stop.wait(0.001):
            peak = max(peak, self._rss() or peak)
        self.peak_mb = (max(peak, self._rss() or peak) - start) / 2**20

    def __enter__(self) -> _PeakMemory:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        start = self._rss()
        self._thread = threading.Thread(target=self._sample, args=(start,), daemon=True) if start else None
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._start) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()


def _progress(message: str) -> None:
    """One line per finished case on stderr, so a long benchmark shows where it is (stdout stays JSON)."""
    print(f"[bench hypergrad] {message}", file=sys.stderr, flush=True)


def _measure(fn: Callable[[], object], device: str, repeats: int) -> dict[str, float | None]:
    """Warm-up run (memory measured there), then the median seconds of ``repeats`` timed runs."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with _PeakMemory(device) as mem:
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    peak = None if mem.peak_mb is None else round(mem.peak_mb, 1)
    return {"seconds": statistics.median(times), "min_seconds": min(times), "peak_mem_mb": peak}


Case = tuple[dict[str, Any], Callable[[], object]]


def _cases(problem: Problem, ks: tuple[int, ...], methods: tuple[str, ...], hvps: tuple[str, ...]) -> Iterator[Case]:
    """(record fields, callable) for every timed variant."""
    for k in ks:
        for mode in hvps if "neumann" in methods else ():
            yield {"method": "neumann", "hvp": mode, "k": k}, partial(problem.hypergrad, "neumann", k, mode)
        if "cg" in methods:
            yield {"method": "cg", "hvp": "revrev", "k": k}, partial(problem.hypergrad, "cg", k)
        if "naive_neumann" in methods:
            yield {"method": "naive_neumann", "hvp": "revrev", "k": k}, partial(naive_neumann, problem, k)
    for method in ("unroll", "finite_difference"):
        if method in methods:
            yield {"method": method, "hvp": None, "k": None}, partial(problem.hypergrad, method)


def _agreement(problem: Problem, k: int) -> float:
    """Max relative difference between auxray's Neumann (both HVP modes) and the naive baseline."""
    ref = torch.cat([t.reshape(-1) for t in naive_neumann(problem, k)])
    worst = 0.0
    for mode in ("revrev", "fwdrev"):
        flat = torch.cat([t.reshape(-1) for t in problem.hypergrad("neumann", k, mode)])
        worst = max(worst, ((flat - ref).norm() / ref.norm().clamp_min(1e-30)).item())
    return worst


def _bench_backbone(
    backbone: str,
    ks: tuple[int, ...],
    methods: tuple[str, ...],
    hvps: tuple[str, ...],
    batch_size: int,
    repeats: int,
    device: str,
    width: int,
) -> dict:
    """All cases for one backbone; the plain step updates BatchNorm statistics, the outer steps guard them, as in
    training."""
    problem = build_problem(backbone, batch_size, device, width)
    optimizer = torch.optim.SGD(problem.model.parameters(), lr=LR)
    base = _measure(lambda: plain_step(problem, optimizer), device, repeats)
    _progress(f"{backbone}: plain step {base['seconds']:.3g} s")
    records: list[dict[str, Any]] = []
    for fields, fn in _cases(problem, ks, methods, hvps):
        rec = {**fields, **_measure(fn, device, repeats)}
        rec["ratio_to_plain_step"] = rec["seconds"] / base["seconds"]
        records.append(rec)
        _progress(
            f"{backbone}: {fields['method']} K={fields['k'] or '-'} {fields['hvp'] or ''} "
            f"{rec['seconds']:.3g} s ({rec['ratio_to_plain_step']:.3g}x plain step)"
        )
    check = _agreement(problem, min(ks)) if "naive_neumann" in methods and ks else None
    speedup: dict[str, dict[str, float]] = {}
    for k in ks:
        naive = [r["seconds"] for r in records if r["method"] == "naive_neumann" and r["k"] == k]
        for r in records:
            if naive and r["method"] == "neumann" and r["k"] == k:
                speedup.setdefault(str(k), {})[r["hvp"]] = naive[0] / r["seconds"]
    return {
        "backbone": backbone,
        "n_params": sum(p.numel() for p in problem.model.parameters()),
        "n_hparams": sum(p.numel() for p in problem.auxnet.parameters()),
        "batch_size": batch_size,
        "repeats": repeats,
        "ks": list(ks),
        "plain_step": base,
        "results": records,
        "speedup_vs_naive": speedup,
        "naive_vs_auxray_max_rel_diff": check,
    }


def run_hypergrad_bench(
    backbones: tuple[str, ...] = ("convnet4", "resnet18"),
    ks: tuple[int, ...] = (1, 3, 5, 10),
    methods: tuple[str, ...] = ALL_METHODS,
    hvps: tuple[str, ...] = ("revrev", "fwdrev"),
    batch_size: int = 64,
    repeats: int = 3,
    device: str = "cpu",
    width: int = 64,
    overrides: dict[str, dict] | None = None,
) -> dict:
    """Time one outer step of each hypergradient method per backbone; returns a JSON-serialisable dict.

    ``overrides`` maps a backbone to {batch_size, repeats, max_k}; by default on CPU ResNet-18 runs
    with batch 32, 2 repeats and K <= 5. Pass ``{}`` to use the same settings everywhere.
    """
    unknown = set(methods) - set(ALL_METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {', '.join(ALL_METHODS)}")
    if overrides is None:
        overrides = CPU_OVERRIDES if device == "cpu" else {}
    hvps = tuple(select_hvp(h) for h in hvps)
    out = []
    for backbone in backbones:
        o = overrides.get(backbone, {})
        max_k = o.get("max_k")
        bks = tuple(k for k in ks if max_k is None or k <= max_k)
        out.append(
            _bench_backbone(
                backbone,
                bks,
                tuple(methods),
                hvps,
                o.get("batch_size", batch_size),
                o.get("repeats", repeats),
                device,
                width,
            )
        )
    return {
        "device": device if not device.startswith("cuda") else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "alpha": ALPHA,
        "unroll_lr": LR,
        "problem": PROBLEM,
        "hvp_auto": select_hvp("auto"),
        "memory_metric": "cuda max_memory_allocated delta"
        if device.startswith("cuda")
        else "process RSS high-water delta (1 ms sampling of /proc/self/statm)",
        "backbones": out,
    }
