"""`auxray bench overhead`: what learning the auxiliary part costs, against each method's fixed-weight twin.

Every learned method of ``configs/cifar10_5pct/`` is trained beside a *twin* that does the same inner work with
nothing learned: the loss combiner and JTDS beside ``equal`` (the same rotation task, equal weights), the label
generators beside their own config with ``hypergrad.enabled=false`` (the same extra head, trained on the
generator's initial labels, no outer steps). Method and twin share the data split, seed, backbone, schedule and
the order of the training images. Each row gives the method's wall time per inner step over a whole run (the sum
of its epoch times, outer steps included, evaluation excluded) divided by its twin's, each averaged over seeds,
and the test accuracy (best-on-validation weights) both reach on the same epoch budget.

The training runs are Ray Tune grid trials, as the reproduction's (``auxray.bench.table_runs``), one at a time by
default so that no two timed runs share the CPUs: each method and twin is a run config file written under the
runs folder (``runs/bench_overhead/<out stem>/configs``, a twin with its overrides applied), finished runs are
kept in ``<out stem>.runs.jsonl`` and reused when their resolved config is unchanged, an interrupted bench
resumes its experiment, and a twin shared by two methods is trained once.

The breakdown (``<out stem>_breakdown.json``) times one outer step phase by phase (outer-batch gradient, graph
build, the Hessian-vector products, mixed and direct terms, optimizer, communication) for a few hypergradient
variants, against one plain inner step, with the cosine of each variant's hypergradient to the full-cost one.

    auxray bench overhead --quick --methods auxilearn_combine,maxl --no-breakdown   # minutes: a smoke check
    auxray bench overhead                                                         # 5 methods + 3 twins x 2 seeds
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from auxray.bench.machine import log, usable_cpus
from auxray.bench.outer_breakdown import (
    BACKBONE,
    BREAKDOWN_METHODS,
    breakdown_path,
    hypergrad_settings,
    run_breakdown,
)
from auxray.bench.plan import CONFIG_DIR, Plan, fingerprint, parse_list, parse_seeds, shared_settings
from auxray.bench.table_runs import (
    GridSetup,
    Wanted,
    failed_error,
    gather_runs,
    tracking_uri,
)
from auxray.bench.twins import Twin, fixed_twin, write_run_configs
from auxray.errors import UserError
from auxray.method_specs import SPECS, MethodSpec

DEFAULT_OUT = Path("benchmarks/results/bench_overhead_cpu.json")
DEFAULT_SEEDS = (0, 1)


def _twin(method: MethodSpec) -> Twin:
    """The fixed twin a spec names, keyed `<config>_frozen` when it is a frozen learned config."""
    return fixed_twin(method.name, method)


# The outer step's cost is what this bench measures: methods that take one (forking methods cost B x by design).
TWINS: dict[str, Twin] = {s.name: _twin(s) for s in SPECS.values() if s.learns and not s.forks and s.twin is not None}
DEFAULT_METHODS = tuple(TWINS)


# ---- configs --------------------------------------------------------------------------------------------
def run_order(methods: Sequence[str]) -> list[str]:
    """Method and twin keys to train, each method followed by its twin, every key once."""
    keys: list[str] = []
    for m in methods:
        for key in (m, TWINS[m].name):
            if key not in keys:
                keys.append(key)
    return keys


def config_source(key: str) -> tuple[str, tuple[str, ...]]:
    """The config file stem and the extra overrides of a method or twin key."""
    if key in TWINS:
        return key, ()
    twin = next(t for t in TWINS.values() if t.name == key)
    return twin.config, twin.overrides


def resolve_configs(
    keys: Sequence[str],
    seeds: Sequence[int],
    epochs: int | None,
    quick: bool,
    extra_overrides: Sequence[str],
    config_dir: Path,
) -> dict[tuple[str, int], Any]:
    """Every (key, seed) config, resolved before any training so a bad option fails at once."""
    cfgs = {}
    for key in keys:
        stem, own = config_source(key)
        plan = Plan(epochs, BACKBONE, None, quick, (*extra_overrides, *own), config_dir)
        for s in seeds:
            cfgs[key, s] = plan.config(stem, s)
    return cfgs


def write_configs(keys: Sequence[str], config_dir: Path, target: Path) -> None:
    """Each key's run config file for the grid: its config as it is, a twin's with its own overrides applied."""
    write_run_configs({key: config_source(key) for key in keys}, config_dir, target)


def check_twins_match(methods: Sequence[str], cfgs: Mapping[tuple[str, int], Any], seed: int) -> None:
    """A method and its twin must share data, model and trainer settings, or the timing says nothing."""
    for m in methods:
        mine, theirs = shared_settings(cfgs[m, seed]), shared_settings(cfgs[TWINS[m].name, seed])
        diff = [
            f"{sec}.{k}"
            for sec in mine
            for k in set(mine[sec]) | set(theirs[sec])
            if mine[sec].get(k) != theirs[sec].get(k)
        ]
        if diff:
            raise UserError(f"{m} and its twin {TWINS[m].name} differ in {', '.join(sorted(diff))}")


# ---- the rows -------------------------------------------------------------------------------------------
def timed(run: dict[str, Any]) -> dict[str, Any]:
    """A finished run as build_rows reads it, or a UserError naming it when its diagnostics recorded no timing."""
    if "train_seconds" not in run:
        diag = run.get("diagnostics", {})
        raise UserError(
            f"{run['method']} seed {run['seed']}: no timing diagnostics ({diag.get('error', 'none recorded')})"
        )
    return run


def build_rows(runs: Iterable[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method that has at least one finished run and whose twin has one: the ratio of their mean
    wall seconds per inner step (train_seconds / inner_steps, averaged over seeds), mean test accuracies."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_key.setdefault(r["method"], []).append(r)
    rows = []
    for m in methods:
        twin = TWINS[m].name
        mine = sorted(by_key.get(m, []), key=lambda r: r["seed"])
        theirs = sorted(by_key.get(twin, []), key=lambda r: r["seed"])
        if not mine or not theirs:
            continue
        step = statistics.fmean(r["train_seconds"] / r["inner_steps"] for r in mine)
        twin_step = statistics.fmean(r["train_seconds"] / r["inner_steps"] for r in theirs)
        rows.append(
            {
                "method": m,
                "twin": twin,
                "ratio": step / twin_step,
                "accuracy": statistics.fmean(r["test_accuracy"] for r in mine),
                "twin_accuracy": statistics.fmean(r["test_accuracy"] for r in theirs),
                "accuracies": [r["test_accuracy"] for r in mine],
                "twin_accuracies": [r["test_accuracy"] for r in theirs],
                "seeds": [r["seed"] for r in mine],
                "twin_seeds": [r["seed"] for r in theirs],
                "seconds_per_step": step,
                "twin_seconds_per_step": twin_step,
                "seconds_per_epoch": statistics.fmean(r["train_seconds"] / r["epochs"] for r in mine),
                "twin_seconds_per_epoch": statistics.fmean(r["train_seconds"] / r["epochs"] for r in theirs),
                "outer_steps": [r["outer_steps"] for r in mine],
                "epochs": mine[0]["epochs"],
                "settings": mine[0]["settings"],
            }
        )
    return rows


# ---- the driver -----------------------------------------------------------------------------------------
def run_overhead(
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: Sequence[int] | None = None,
    epochs: int | None = None,
    quick: bool = False,
    extra_overrides: Sequence[str] = (),
    *,
    out: str | Path = DEFAULT_OUT,
    runs_dir: str | Path | None = None,
    fresh: bool = False,
    jobs: int = 1,
    breakdown: bool = True,
    verbose: bool = False,
    config_dir: str | Path = CONFIG_DIR,
) -> list[dict[str, Any]]:
    """Train every method and twin run not yet in the progress file, write the rows (and the breakdown) and
    return the rows. quick: 1 seed unless `seeds` is given, 1 epoch unless `epochs`, 40 labelled images per
    class, 1,000 test images; seeds None: DEFAULT_SEEDS."""
    methods = tuple(methods)
    unknown = [m for m in methods if m not in TWINS]
    if unknown or not methods:
        raise UserError(f"unknown method(s) {unknown or '(none given)'}; choose from {', '.join(TWINS)}")
    seeds = tuple(seeds) if seeds is not None else ((0,) if quick else DEFAULT_SEEDS)
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must name distinct seeds, got {list(seeds)}")
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if quick and epochs is None:
        epochs = 1
    out = Path(out)
    runs_root = (Path(runs_dir) if runs_dir is not None else Path("runs") / "bench_overhead" / out.stem).resolve()
    keys = run_order(methods)
    cfgs = resolve_configs(keys, seeds, epochs, quick, extra_overrides, Path(config_dir))
    check_twins_match(methods, cfgs, seeds[0])

    runs_file = out.with_name(f"{out.stem}.runs.jsonl")
    if fresh:
        runs_file.unlink(missing_ok=True)
        shutil.rmtree(runs_root, ignore_errors=True)
    threads = cfgs[keys[0], seeds[0]].trainer.threads or max(1, usable_cpus() // jobs)
    setup = GridSetup(
        tag=out.stem,
        runs_root=runs_root,
        config_dir=runs_root / "configs",
        overrides=Plan(epochs, BACKBONE, None, quick, tuple(extra_overrides), Path(config_dir)).overrides(),
        jobs=jobs,
        cpus_per_trial=float(threads),
        tracking_uri=tracking_uri(None, runs_root),
        experiment=f"overhead-{out.stem}",
    )
    write_configs(keys, Path(config_dir), setup.config_dir)
    todo = [(key, s) for s in seeds for key in keys]
    wanted = [Wanted(k, s, fingerprint(cfgs[k, s]), BACKBONE, hypergrad_settings(cfgs[k, s])) for k, s in todo]
    known, _, failed = gather_runs(setup, wanted, runs_file, threads, verbose)
    if failed:
        raise failed_error(failed, runs_root)
    runs = [timed(known[w.key]) for w in wanted]
    rows = build_rows(runs, methods)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2, default=float) + "\n")
    log(f"[overhead] wrote {out} ({len(runs)} runs in {runs_file})")
    chosen = [m for m in BREAKDOWN_METHODS if m in methods]
    if breakdown and not chosen:
        log(f"[overhead] no breakdown: it covers {', '.join(BREAKDOWN_METHODS)}, none of which was asked for")
    if breakdown and chosen:
        result = run_breakdown(chosen, epochs, quick, extra_overrides, runs_root / "breakdown", Path(config_dir))
        breakdown_path(out).write_text(json.dumps(result, indent=2, default=float) + "\n")
        log(f"[overhead] wrote {breakdown_path(out)}")
    return rows


def add_arguments(p: Any) -> None:
    """The options of `auxray bench overhead`."""
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated learned methods (default: all of {','.join(DEFAULT_METHODS)})",
    )
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1; --quick: 0)")
    p.add_argument("--epochs", type=int, default=None, help="epoch budget of every run (default: the configs')")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="trials run at once, the CPUs split between them (default 1: timings from an unshared machine)",
    )
    p.add_argument(
        "--quick", action="store_true", help="1 seed, 1 epoch, 40 labelled images per class, 1,000 test images"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override applied to methods and twins alike (repeatable)",
    )
    p.add_argument("--out", default=str(DEFAULT_OUT), help="rows JSON; the progress file and breakdown go beside it")
    p.add_argument(
        "--runs-dir",
        default=None,
        help="folder of the Tune experiments, their trials' files and MLflow store "
        "(default runs/bench_overhead/<out stem>)",
    )
    p.add_argument("--fresh", action="store_true", help="forget finished runs and start over")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false", help="skip the outer-step breakdown")
    p.add_argument("--verbose", action="store_true", help="also print one line per trial as it ends")


def run_from_args(args: Any) -> list[dict[str, Any]]:
    """run_overhead from parsed add_arguments options."""
    return run_overhead(
        methods=parse_list(args.methods),
        seeds=parse_seeds(args.seeds),
        epochs=args.epochs,
        quick=args.quick,
        extra_overrides=tuple(args.overrides),
        out=args.out,
        runs_dir=args.runs_dir,
        fresh=args.fresh,
        jobs=args.jobs,
        breakdown=args.breakdown,
        verbose=args.verbose,
    )
