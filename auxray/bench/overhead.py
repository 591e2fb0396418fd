"""`auxray bench overhead`: what learning the auxiliary part costs, against each method's fixed-weight twin.

Every learned method of ``configs/cifar10_5pct/`` is trained beside a *twin* that does the same inner work with
nothing learned: the loss combiner and JTDS beside ``equal`` (the same rotation task, equal weights), the label
generators beside their own config with ``hypergrad.enabled=false`` (the same extra head, trained on the
generator's initial labels, no outer steps). Method and twin share the data split, seed, backbone, schedule and
the order of the training images. Each row gives the method's wall time per inner step over a whole run (the sum
of its epoch times, outer steps included, evaluation excluded) divided by its twin's, each averaged over seeds,
and the test accuracy (best-on-validation weights) both reach on the same epoch budget.

The training runs go through the reproduction machinery (``auxray.bench.runner``, ``auxray.bench.store``):
finished runs are kept in ``<out stem>.runs.jsonl`` and reused when their resolved config is unchanged, so an
interrupted bench resumes and a twin shared by two methods is trained once.

The breakdown (``<out stem>_breakdown.json``) times one outer step phase by phase (aux-batch gradient, graph
build, the Hessian-vector products, mixed and direct terms, optimizer, communication) for a few hypergradient
variants, against one plain inner step, with the cosine of each variant's hypergradient to the full-cost one.

    auxray bench overhead --quick --methods auxilearn_combine,maxl --no-breakdown   # minutes: a smoke check
    auxray bench overhead                                                         # 5 methods + 3 twins x 2 seeds
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auxray.bench.outer_breakdown import (
    BACKBONE,
    BREAKDOWN_METHODS,
    breakdown_path,
    harmful_check,
    hypergrad_settings,
    run_breakdown,
)
from auxray.bench.plan import CONFIG_DIR, fingerprint, method_overrides, parse_list, shared_settings
from auxray.bench.runner import fmt_seconds, log, threads_per_job, train_all
from auxray.bench.store import append_run, read_runs
from auxray.errors import UserError
from auxray.method_specs import SPECS, MethodSpec

DEFAULT_OUT = Path("benchmarks/results/bench_overhead_cpu.json")
DEFAULT_SEEDS = (0, 1)
FROZEN = ("hypergrad.enabled=false",)


@dataclass(frozen=True)
class Twin:
    """A learned method's fixed-weight twin: its key in the progress file, its config file and overrides."""

    name: str
    config: str
    overrides: tuple[str, ...] = ()


def _twin(method: MethodSpec) -> Twin:
    """The fixed twin a spec names: a fixed method's config as it is, or the learned one's with outer steps off."""
    assert method.twin is not None
    if method.twin_is_frozen:
        return Twin(f"{method.twin}_frozen", method.twin, FROZEN)
    return Twin(method.twin, method.twin)


# The outer step's cost is what this bench measures: methods that take one (forking methods cost B x by design).
TWINS: dict[str, Twin] = {s.name: _twin(s) for s in SPECS.values() if s.learns and s.twin is not None}
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
    ckpt_root: Path,
    config_dir: Path,
) -> dict[tuple[str, int], Any]:
    """Every (key, seed) config, resolved before any training so a bad option fails at once."""
    # pydantic takes ~0.4 s to import; this module is imported whenever the CLI builds its parser.
    from auxray.config import load_config

    cfgs = {}
    for key in keys:
        stem, own = config_source(key)
        for s in seeds:
            cfgs[key, s] = load_config(
                config_dir / f"{stem}.yaml",
                method_overrides(s, epochs, BACKBONE, None, quick, False, ckpt_root, [*extra_overrides, *own]),
            )
    return cfgs


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
def run_record(key: str, seed: int, cfg: Any, summary: dict[str, Any], diag: dict[str, Any]) -> dict[str, Any]:
    """The progress-file line of one finished run."""
    if "train_seconds" not in diag:
        raise RuntimeError(f"{key} seed {seed}: no timing diagnostics ({diag.get('error', 'none recorded')})")
    return {
        "method": key,
        "seed": seed,
        "fingerprint": fingerprint(cfg),
        "test_accuracy": summary["test_accuracy"],
        "seconds": summary["seconds"],
        "epochs": summary["epochs"],
        "train_seconds": diag["train_seconds"],
        "inner_steps": diag["inner_steps"],
        "outer_steps": diag["outer_steps"],
        "run_dir": summary.get("run_dir"),
        "settings": hypergrad_settings(cfg),
        "diagnostics": diag,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


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


def train_missing(
    keys: Sequence[str],
    seeds: Sequence[int],
    cfgs: dict[tuple[str, int], Any],
    runs_file: Path,
    jobs: int,
    resume: bool,
    verbose: bool,
) -> list[dict[str, Any]]:
    """Reuse the runs the progress file has with the same fingerprint, train the others (appending each as it
    finishes, with an ETA on stderr); returns every run of this invocation."""
    done = {(r["method"], r["seed"], r.get("fingerprint")): r for r in read_runs(runs_file)}
    todo = [(key, s) for s in seeds for key in keys]
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for key, s in todo:
        row = done.get((key, s, fingerprint(cfgs[key, s])))
        if row is not None:
            results[key, s] = row
            log(f"[overhead] {key} seed {s}: done before, test acc {row['test_accuracy']:.4f} (skipped)")
    pending = [p for p in todo if p not in results]
    threads = threads_per_job(jobs) if jobs > 1 else None
    spent: dict[str, list[float]] = {}
    for key, s, summary, diag in train_all(pending, cfgs, False, verbose, resume, jobs, threads):
        row = {**run_record(key, s, cfgs[key, s], summary, diag), "jobs": jobs, "threads": threads}
        append_run(runs_file, row)
        results[key, s] = row
        spent.setdefault(key, []).append(row["seconds"])
        left = [p for p in pending if p not in results]
        overall = statistics.fmean(x for v in spent.values() for x in v)
        eta = sum(statistics.fmean(spent[k]) if k in spent else overall for k, _ in left) / jobs
        log(
            f"[overhead {len(results)}/{len(todo)}] {key} seed {s}: {row['train_seconds']:.1f}s training, "
            f"{row['outer_steps']} outer steps, test acc {row['test_accuracy']:.4f} "
            f"(ETA {fmt_seconds(eta)} for {len(left)} more)"
        )
    return [results[p] for p in todo]


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
    ckpt_root = (Path(runs_dir) if runs_dir is not None else Path("runs") / "bench_overhead" / out.stem).resolve()
    keys = run_order(methods)
    cfgs = resolve_configs(keys, seeds, epochs, quick, extra_overrides, ckpt_root, Path(config_dir))
    check_twins_match(methods, cfgs, seeds[0])

    runs_file = out.with_name(f"{out.stem}.runs.jsonl")
    if fresh and runs_file.exists():
        runs_file.unlink()
    runs = train_missing(keys, seeds, cfgs, runs_file, jobs, not fresh, verbose)
    rows = build_rows(runs, methods)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2, default=float) + "\n")
    log(f"[overhead] wrote {out} ({len(runs)} runs in {runs_file})")
    chosen = [m for m in BREAKDOWN_METHODS if m in methods]
    if breakdown and not chosen:
        log(f"[overhead] no breakdown: it covers {', '.join(BREAKDOWN_METHODS)}, none of which was asked for")
    if breakdown and chosen:
        result = run_breakdown(chosen, epochs, quick, extra_overrides, ckpt_root, Path(config_dir))
        result["harmful_auxiliary"] = harmful_check((0,) if quick else (0, 1, 2))
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
        help="runs trained at once, each in its own process (default 1: timings from an unshared machine)",
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
    p.add_argument("--runs-dir", default=None, help="checkpoint folder (default runs/bench_overhead/<out stem>)")
    p.add_argument("--fresh", action="store_true", help="forget finished runs and start over")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false", help="skip the outer-step breakdown")
    p.add_argument("--verbose", action="store_true", help="also print each run's per-epoch lines")


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    """`--seeds 0,1` as integers (None when not given); anything else is a UserError."""
    if text is None:
        return None
    try:
        return tuple(int(s) for s in parse_list(text))
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers, got {text!r}") from None


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
