"""Hypergradient benchmark: seconds and peak memory of one outer step per method, backbone and K,
against one plain training step and a plain "obvious" reverse-over-reverse Neumann baseline.

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
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from auxray.hypergrad import (
    finite_difference_hypergrad,
    frozen_batchnorm_stats,
    functional_implicit_hypergrad,
    select_hvp,
    unrolled_hypergrad,
)

HEADS = {"main": 10, "aux": 50}
ALL_METHODS = ("neumann", "cg", "unroll", "finite_difference", "naive_neumann")
CPU_OVERRIDES = {"resnet18": {"batch_size": 32, "repeats": 2, "max_k": 5}}
ALPHA, LR = 1e-2, 1e-2


@dataclass
class Problem:
    """Primary net, a loss-combiner phi and two batches: L_T on the train batch, L_A on the aux batch."""

    model: nn.Module
    combiner: nn.Module
    train: tuple[Tensor, Tensor, Tensor]
    aux: tuple[Tensor, Tensor]

    def __post_init__(self) -> None:
        self.w_names = [n for n, _ in self.model.named_parameters()]
        self.w = tuple(p for _, p in self.model.named_parameters())
        self.phi_names = [n for n, _ in self.combiner.named_parameters()]
        self.phi = tuple(p for _, p in self.combiner.named_parameters())
        self.buffers = dict(self.model.named_buffers())

    def inner_from(self, out: dict[str, Tensor], combiner: Callable[[Tensor], Tensor]) -> Tensor:
        """L_T = mean(l_main + softplus(combiner([l_main, l_aux]))) over the train batch."""
        _, y, y_aux = self.train
        l_main = F.cross_entropy(out["main"], y, reduction="none")
        l_aux = F.cross_entropy(out["aux"], y_aux, reduction="none")
        weighted = F.softplus(combiner(torch.stack([l_main, l_aux], 1))).squeeze(1)
        return (l_main + weighted).mean()

    def inner_fn(self, w: tuple[Tensor, ...], phi: tuple[Tensor, ...]) -> Tensor:
        """Pure L_T(W, phi)."""
        out = functional_call(self.model, {**self.buffers, **dict(zip(self.w_names, w))}, (self.train[0],))
        return self.inner_from(out, lambda z: functional_call(self.combiner, dict(zip(self.phi_names, phi)), (z,)))

    def outer_fn(self, w: tuple[Tensor, ...]) -> Tensor:
        """Pure L_A(W): main-task cross-entropy on the aux batch."""
        out = functional_call(self.model, {**self.buffers, **dict(zip(self.w_names, w))}, (self.aux[0],))
        return F.cross_entropy(out["main"], self.aux[1])


def build_problem(backbone: str, batch_size: int, device: str, width: int = 64, seed: int = 0) -> Problem:
    """Random CIFAR-shaped batches, a fresh primary net and a 2 -> 1 linear loss combiner."""
    from auxray.models import build_primary

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_primary(backbone, heads=HEADS, width=width).to(device).train()
    combiner = nn.Linear(2, 1).to(device)

    def batch() -> tuple[Tensor, Tensor, Tensor]:
        x = torch.randn(batch_size, 3, 32, 32, generator=gen)
        y = torch.randint(0, HEADS["main"], (batch_size,), generator=gen)
        y_aux = torch.randint(0, HEADS["aux"], (batch_size,), generator=gen)
        return x.to(device), y.to(device), y_aux.to(device)

    train, aux = batch(), batch()
    return Problem(model, combiner, train, aux[:2])


def _fill(grads, like):
    """Zeros for None gradients."""
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like)]


def naive_neumann(problem: Problem, steps: int, alpha: float = ALPHA) -> list[Tensor]:
    """The obvious implementation: each Neumann iteration reruns the forward pass and recomputes
    grad(L_T, W, create_graph=True) from scratch, with Python loops over the parameter lists."""
    params, hparams = list(problem.model.parameters()), list(problem.combiner.parameters())
    outer = F.cross_entropy(problem.model(problem.aux[0])["main"], problem.aux[1])
    v = _fill(torch.autograd.grad(outer, params, allow_unused=True), params)
    p = [t.clone() for t in v]
    acc = [t.clone() for t in v]
    for _ in range(steps):
        inner = problem.inner_from(problem.model(problem.train[0]), problem.combiner)
        g = torch.autograd.grad(inner, params, create_graph=True)
        hp = _fill(torch.autograd.grad(g, params, grad_outputs=p, allow_unused=True), params)
        p = [pi - alpha * hi for pi, hi in zip(p, hp)]
        acc = [ai + pi for ai, pi in zip(acc, p)]
    inner = problem.inner_from(problem.model(problem.train[0]), problem.combiner)
    g = torch.autograd.grad(inner, params, create_graph=True)
    mixed = torch.autograd.grad(g, hparams, grad_outputs=[alpha * a for a in acc], allow_unused=True)
    return [-m for m in _fill(mixed, hparams)]


def plain_step(problem: Problem, optimizer: torch.optim.Optimizer) -> None:
    """One ordinary training step of the primary net on L_T: forward, backward, SGD step."""
    optimizer.zero_grad(set_to_none=True)
    problem.inner_from(problem.model(problem.train[0]), problem.combiner).backward()
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


def _cases(problem: Problem, ks: tuple[int, ...], methods: tuple[str, ...], hvps: tuple[str, ...]):
    """(record fields, callable) for every timed variant."""
    common = dict(alpha=ALPHA, tol=1e-6)
    for k in ks:
        for mode in hvps if "neumann" in methods else ():
            yield {"method": "neumann", "hvp": mode, "k": k}, lambda k=k, mode=mode: functional_implicit_hypergrad(
                problem.inner_fn, problem.outer_fn, problem.w, problem.phi, method="neumann", steps=k, hvp=mode, **common)
        if "cg" in methods:
            yield {"method": "cg", "hvp": "revrev", "k": k}, lambda k=k: functional_implicit_hypergrad(
                problem.inner_fn, problem.outer_fn, problem.w, problem.phi, method="cg", steps=k, hvp="revrev", **common)
        if "naive_neumann" in methods:
            yield {"method": "naive_neumann", "hvp": "revrev", "k": k}, lambda k=k: naive_neumann(problem, k)
    if "unroll" in methods:
        yield {"method": "unroll", "hvp": None, "k": None}, lambda: unrolled_hypergrad(
            problem.inner_fn, problem.outer_fn, problem.w, problem.phi, lr=LR)
    if "finite_difference" in methods:
        yield {"method": "finite_difference", "hvp": None, "k": None}, lambda: finite_difference_hypergrad(
            problem.inner_fn, problem.outer_fn, problem.w, problem.phi, lr=LR)


def _agreement(problem: Problem, k: int) -> float:
    """Max relative difference between auxray's Neumann (both HVP modes) and the naive baseline."""
    ref = torch.cat([t.reshape(-1) for t in naive_neumann(problem, k)])
    worst = 0.0
    for mode in ("revrev", "fwdrev"):
        got = functional_implicit_hypergrad(problem.inner_fn, problem.outer_fn, problem.w, problem.phi,
                                            method="neumann", steps=k, alpha=ALPHA, hvp=mode)
        flat = torch.cat([t.reshape(-1) for t in got])
        worst = max(worst, ((flat - ref).norm() / ref.norm().clamp_min(1e-30)).item())
    return worst


def _bench_backbone(backbone: str, ks: tuple[int, ...], methods: tuple[str, ...], hvps: tuple[str, ...],
                    batch_size: int, repeats: int, device: str, width: int) -> dict:
    """All cases for one backbone, with BatchNorm normalising by batch statistics only."""
    problem = build_problem(backbone, batch_size, device, width)
    bns = [m for m in problem.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    optimizer = torch.optim.SGD(problem.model.parameters(), lr=LR)
    with frozen_batchnorm_stats(problem.model):
        for bn in bns:
            bn.track_running_stats = False
        base = _measure(lambda: plain_step(problem, optimizer), device, repeats)
        _progress(f"{backbone}: plain step {base['seconds']:.3g} s")
        records = []
        for fields, fn in _cases(problem, ks, methods, hvps):
            rec = {**fields, **_measure(fn, device, repeats)}
            rec["ratio_to_plain_step"] = rec["seconds"] / base["seconds"]
            records.append(rec)
            _progress(f"{backbone}: {fields['method']} K={fields['k'] or '-'} {fields['hvp'] or ''} "
                      f"{rec['seconds']:.3g} s ({rec['ratio_to_plain_step']:.3g}x plain step)")
        check = _agreement(problem, min(ks)) if "naive_neumann" in methods and ks else None
        for bn in bns:
            bn.track_running_stats = True
    speedup = {}
    for k in ks:
        naive = [r["seconds"] for r in records if r["method"] == "naive_neumann" and r["k"] == k]
        for r in records:
            if naive and r["method"] == "neumann" and r["k"] == k:
                speedup.setdefault(str(k), {})[r["hvp"]] = naive[0] / r["seconds"]
    return {
        "backbone": backbone,
        "n_params": sum(p.numel() for p in problem.w),
        "n_hparams": sum(p.numel() for p in problem.phi),
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
        out.append(_bench_backbone(backbone, bks, tuple(methods), hvps, o.get("batch_size", batch_size),
                                   o.get("repeats", repeats), device, width))
    return {
        "device": device if not device.startswith("cuda") else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "alpha": ALPHA,
        "unroll_lr": LR,
        "hvp_auto": select_hvp("auto"),
        "memory_metric": "cuda max_memory_allocated delta" if device.startswith("cuda")
        else "process RSS high-water delta (1 ms sampling of /proc/self/statm)",
        "backbones": out,
    }
