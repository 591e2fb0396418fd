"""A benchmark table's runs as Ray Tune grid sweeps, and the finished trials read back as the table's run rows.

A table wants some (method, seed) pairs, each identified by the fingerprint of its resolved config. Every
invocation runs the pairs not finished yet as grid sweeps (run config files x seeds, the table's shared
overrides as the sweep's `overrides`) under one runs folder, ``runs/reproduce/<tag>/`` by default, one Tune
experiment per group of methods missing the same seeds (usually one per invocation). Beside each experiment
folder lies its manifest (``<name>.table.json``: the sweep and, per pair, its method, seed, fingerprint and
settings); its
trials write ``record.json`` when they end (see auxray.tune.record). Reading the table back is then a merge
of every experiment's finished trials keyed on (method, seed, fingerprint), so:

- an interrupted invocation's experiment is resumed (Tuner.restore: its in-flight trials continue from their
  last epoch, finished ones are not re-run) when it still holds a wanted pair;
- a later invocation with more methods or seeds adds one experiment for what is missing;
- a changed setting (epochs, backbone, a config file's content) changes the fingerprint, so the pair runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auxray.bench.machine import log
from auxray.errors import UserError
from auxray.tune.config import CONFIG_AXIS, SEED_AXIS, SweepConfig, SweepTracking
from auxray.tune.record import read_record, write_json

TRACKING_DB = "mlflow.db"  # the runs folder's own MLflow store, when no tracking URI is asked for
TIMING = ("train_seconds", "inner_steps", "outer_steps")  # a run's timing counters, from its diagnostics
MANIFEST_SUFFIX = ".table.json"  # beside the experiment folder <name>: <name>.table.json

Key = tuple[str, int]  # (method, seed)
RunKey = tuple[str, int, str]  # (method, seed, fingerprint)


@dataclass(frozen=True)
class Wanted:
    """One run a table wants: its method (a config stem), seed, fingerprint and what its row shows of its config."""

    method: str
    seed: int
    fingerprint: str
    backbone: str
    settings: dict[str, Any]

    @property
    def key(self) -> RunKey:
        return (self.method, self.seed, self.fingerprint)


@dataclass(frozen=True)
class GridSetup:
    """What every grid sweep of one table shares."""

    tag: str
    runs_root: Path
    config_dir: Path
    overrides: dict[str, Any]
    jobs: int
    cpus_per_trial: float
    tracking_uri: str
    experiment: str  # the MLflow experiment, also the prefix of progress lines
    command: str = ""  # the invocation that trains the missing runs, kept with each run it trains
    gpus_per_trial: float = 0.0  # GPUs each trial takes (a fraction shares one GPU between trials)


def _sweep(setup: GridSetup, name: str, methods: Sequence[str], seeds: Sequence[int]) -> SweepConfig:
    sweep = SweepConfig(
        name=name,
        search="grid",
        grid={CONFIG_AXIS: [f"{m}.yaml" for m in methods], SEED_AXIS: list(seeds)},
        overrides=setup.overrides,
        concurrency=setup.jobs,
        cpus_per_trial=setup.cpus_per_trial,
        gpus_per_trial=setup.gpus_per_trial,
        storage=str(setup.runs_root),
        tracking=SweepTracking(uri=setup.tracking_uri, experiment=setup.experiment),
    )
    sweep._source_dir = str(setup.config_dir.resolve())
    return sweep


def plan_sweeps(setup: GridSetup, pending: Sequence[Wanted]) -> list[tuple[SweepConfig, list[Wanted]]]:
    """New grid sweeps for the pending runs: methods missing the same seeds share one sweep, named by a hash of
    its runs (so a driver killed before any trial ended finds the same experiment again)."""
    seeds_of: dict[str, list[int]] = {}
    for w in pending:
        seeds_of.setdefault(w.method, []).append(w.seed)
    groups: dict[tuple[int, ...], list[str]] = {}
    for method, missing in seeds_of.items():
        groups.setdefault(tuple(sorted(missing)), []).append(method)
    out = []
    for seeds, methods in groups.items():
        runs = [w for w in pending if w.method in methods and w.seed in seeds]
        digest = hashlib.sha256(json.dumps(sorted(w.key for w in runs)).encode()).hexdigest()[:10]
        out.append((_sweep(setup, f"{setup.tag}-{digest}", methods, seeds), runs))
    return out


def write_manifest(sweep: SweepConfig, runs: Sequence[Wanted], threads: int, command: str = "") -> None:
    """The experiment's manifest: the sweep (to resume it), the command that started it and what each of its
    (config, seed) trials is."""
    sweep.storage_path.mkdir(parents=True, exist_ok=True)
    manifest = {
        "sweep": sweep.model_dump(mode="json", exclude={"trials"}),
        "threads": threads,
        "command": command,
        "runs": [
            {
                "method": w.method,
                "seed": w.seed,
                "fingerprint": w.fingerprint,
                "backbone": w.backbone,
                "settings": w.settings,
            }
            for w in runs
        ],
    }
    write_json(sweep.storage_path / f"{sweep.name}{MANIFEST_SUFFIX}", manifest)


def _manifests(runs_root: Path) -> list[tuple[Path, dict[str, Any]]]:
    if not runs_root.is_dir():
        return []
    found = []
    for path in sorted(runs_root.glob(f"*{MANIFEST_SUFFIX}")):
        try:
            found.append((runs_root / path.name.removesuffix(MANIFEST_SUFFIX), json.loads(path.read_text())))
        except json.JSONDecodeError:
            continue
    return found


def resumable_sweeps(setup: GridSetup, pending: Sequence[Wanted]) -> list[SweepConfig]:
    """Earlier experiments of this table that Tune can restore and that still hold a pending run."""
    from ray import tune

    wanted = {w.key for w in pending}
    out = []
    for exp_dir, manifest in _manifests(setup.runs_root):
        holds = {(r["method"], r["seed"], r["fingerprint"]) for r in manifest["runs"]}
        if holds & wanted and tune.Tuner.can_restore(str(exp_dir)):
            sweep = SweepConfig.model_validate(manifest["sweep"])
            sweep._source_dir = str(setup.config_dir.resolve())
            sweep.storage = str(setup.runs_root)
            out.append(sweep)
    return out


def clear_unrestorable(sweep: SweepConfig) -> None:
    """Remove an experiment folder of this name that Tune cannot restore (a driver killed before Tune saved
    any state: nothing in it finished), so the sweep can start there afresh."""
    from ray import tune

    if sweep.experiment_dir.exists() and not tune.Tuner.can_restore(str(sweep.experiment_dir)):
        shutil.rmtree(sweep.experiment_dir)
        shutil.rmtree(sweep.state_backup_dir, ignore_errors=True)


def finished_rows(runs_root: Path) -> dict[RunKey, dict[str, Any]]:
    """Every finished trial under the runs folder as a run row, by (method, seed, fingerprint); when a run
    finished twice (a re-run after --fresh kept no folder, so only a copied folder can), the later one wins."""
    rows: dict[RunKey, dict[str, Any]] = {}
    for exp_dir, manifest in _manifests(runs_root):
        cells = {(f"{r['method']}.yaml", r["seed"]): r for r in manifest["runs"]}
        trials = exp_dir / "trials"
        for trial_dir in sorted(trials.iterdir()) if trials.is_dir() else []:
            record = read_record(trial_dir)
            if record is None:
                continue
            params = record["params"]
            run = cells.get((Path(str(params.get(CONFIG_AXIS))).name, params.get(SEED_AXIS)))
            if run is None:
                continue
            row = run_row(run, record, trial_dir, manifest["sweep"]["concurrency"], manifest.get("threads"))
            row["command"] = manifest.get("command") or None  # None: an experiment started before it was kept
            key = (row["method"], row["seed"], row["fingerprint"])
            if key not in rows or rows[key]["finished_at"] <= row["finished_at"]:
                rows[key] = row
    return rows


def run_row(
    run: dict[str, Any], record: dict[str, Any], trial_dir: Path, jobs: int, threads: int | None
) -> dict[str, Any]:
    """A finished trial as the table's run row (the format of ``reproduce_<tag>.runs.jsonl``)."""
    summary = record["summary"]
    return {
        "method": run["method"],
        "seed": run["seed"],
        "test_accuracy": summary["test_accuracy"],
        "seconds": summary["seconds"],
        "best_val_accuracy": summary["best_val_accuracy"],
        "epochs": summary["epochs"],
        "final_test_accuracy": summary.get("final_test_accuracy"),
        "best_epoch": summary.get("best_epoch"),
        "backbone": run["backbone"],
        "run_dir": str(trial_dir),
        "fingerprint": run["fingerprint"],
        "settings": run["settings"],
        "diagnostics": record["diagnostics"],
        **{k: record["diagnostics"][k] for k in TIMING if k in record["diagnostics"]},
        "resumed_from_epoch": record.get("resumed_from_epoch"),
        "jobs": jobs,
        "threads": threads,
        "finished_at": record["finished_at"],
    }


def read_runs_file(path: Path) -> dict[RunKey, dict[str, Any]]:
    """Rows of an earlier run record file (a committed table's), by (method, seed, fingerprint)."""
    if not path.is_file():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a torn line
            continue
        rows[row["method"], row["seed"], row.get("fingerprint")] = row
    return rows


def known_runs(runs_file: Path, runs_root: Path) -> dict[RunKey, dict[str, Any]]:
    """Every finished run known without training any: the run record file's and the runs folder's (the folder's
    win where both have one)."""
    return {**read_runs_file(runs_file), **finished_rows(runs_root)}


def write_runs_file(path: Path, rows: dict[RunKey, dict[str, Any]]) -> None:
    """Every known run row, one JSON line each, replacing the file at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    ordered = sorted(rows.values(), key=lambda r: (r["finished_at"], r["method"], r["seed"]))
    tmp.write_text("".join(json.dumps(r, default=float) + "\n" for r in ordered))
    os.replace(tmp, path)


def tracking_uri(track: str | None, runs_root: Path) -> str:
    """Where the trials' MLflow runs go: the runs folder's own SQLite store (no --track), the configured
    store (--track), or the given URI (--track URI)."""
    from auxray.tracking import resolve_uri

    if track is None:
        runs_root.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{runs_root / TRACKING_DB}"
    return resolve_uri(track or None)


def run_missing(setup: GridSetup, pending: list[Wanted], threads: int, verbose: bool) -> dict[RunKey, dict[str, Any]]:
    """Resume earlier experiments that hold pending runs, then run the rest as new grid sweeps (`threads` torch
    threads per trial), all on one Ray instance; return every finished run under the runs folder."""
    from auxray.tracking import check_reachable
    from auxray.tune.sweep import run_sweep, start_ray

    check_reachable(setup.tracking_uri)  # an unreachable store is one line, before Ray starts
    started = start_ray()
    try:
        _check_gpus(setup)
        for sweep in resumable_sweeps(setup, pending):
            log(f"[{setup.experiment}] resuming the interrupted experiment {sweep.experiment_dir}")
            _run(run_sweep, sweep, True, setup, verbose)
        done = finished_rows(setup.runs_root)
        left = [w for w in pending if w.key not in done]
        for sweep, runs in plan_sweeps(setup, left):
            log(f"[{setup.experiment}] {len(runs)} runs as the grid sweep {sweep.experiment_dir}, {setup.jobs} at once")
            clear_unrestorable(sweep)
            write_manifest(sweep, runs, threads, setup.command)
            _run(run_sweep, sweep, False, setup, verbose)
    finally:
        if started:
            import ray

            ray.shutdown()
    return finished_rows(setup.runs_root)


def _check_gpus(setup: GridSetup) -> None:
    """Trials asking for more GPUs than the Ray cluster has would wait forever: one line, before any trains."""
    import ray

    have = ray.cluster_resources().get("GPU", 0.0)
    if setup.gpus_per_trial > have:
        raise UserError(f"--gpus-per-trial is {setup.gpus_per_trial:g} but the Ray cluster has {have:g} GPUs")


def _run(run_sweep: Any, sweep: SweepConfig, resume: bool, setup: GridSetup, verbose: bool) -> None:
    """One grid sweep; a sweep in which every trial failed is reported after the others ran."""
    try:
        run_sweep(sweep, resume=resume, tracking_uri=setup.tracking_uri, progress=verbose)
    except UserError as err:
        log(f"[{setup.experiment}] {err}")


def gather_runs(
    setup: GridSetup,
    todo: Sequence[Wanted],
    runs_file: Path,
    threads: int,
    verbose: bool,
    elsewhere: Mapping[RunKey, dict[str, Any]] | None = None,
) -> tuple[dict[RunKey, dict[str, Any]], list[Wanted], list[Wanted]]:
    """The one driver loop of a table: runs the record file or the runs folder has already, or `elsewhere` has
    (another table's finished runs: the same key is the same run), are reused (logged as skipped), the others
    trained as grid sweeps; the record file is rewritten with every known run.
    Returns (every known row by key, the runs done before, the runs that failed)."""
    wanted = {w.key for w in todo}
    known = {**{k: r for k, r in (elsewhere or {}).items() if k in wanted}, **known_runs(runs_file, setup.runs_root)}
    done_before = [w for w in todo if w.key in known]
    for i, w in enumerate(todo, 1):
        if w in done_before:
            acc = known[w.key]["test_accuracy"]
            name = f"[{setup.experiment} {i}/{len(todo)}] {w.method} seed {w.seed}"
            log(f"{name}: done before, test acc {acc:.4f} (skipped)")
    pending = [w for w in todo if w.key not in known]
    if pending:
        known.update(run_missing(setup, pending, threads, verbose))
    write_runs_file(runs_file, known)
    for w in pending:
        if w.key in known:
            row = known[w.key]
            acc, seconds = row["test_accuracy"], row["seconds"]
            log(f"[{setup.experiment}] {w.method} seed {w.seed}: test acc {acc:.4f} in {seconds:.1f}s")
    return known, done_before, [w for w in pending if w.key not in known]


def check_jobs(jobs: int, gpus_per_trial: float) -> None:
    """--jobs and --gpus-per-trial as a table command takes them, or one line."""
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if gpus_per_trial < 0:
        raise UserError(f"--gpus-per-trial must be at least 0, got {gpus_per_trial:g}")


def failed_error(failed: Sequence[Wanted], runs_root: Path) -> UserError:
    """The one-line error naming the runs that did not finish."""
    shown = ", ".join(f"{w.method} seed {w.seed}" for w in failed)
    return UserError(f"{len(failed)} run(s) failed ({shown}); see the trials under {runs_root}")


def add_run_options(p: Any, overrides_help: str) -> None:
    """The options every table command (reproduce, weighting) shares: overrides, a fresh start, where the MLflow
    runs go, per-trial lines and the trials run at once."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=overrides_help)
    p.add_argument("--fresh", action="store_true", help="forget finished runs (run records, runs folder), start over")
    p.add_argument(
        "--track",
        nargs="?",
        const="",
        default=None,
        metavar="URI",
        help="where the MLflow runs go (every trial is a child run of its grid sweep's parent run): without --track "
        "the runs folder's own store (<runs-dir>/mlflow.db); --track alone the configured store "
        "(MLFLOW_TRACKING_URI, else ./mlflow.db); --track URI that tracking server or SQLite file",
    )
    p.add_argument("--verbose", action="store_true", help="also print one line per trial as it ends")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="trials run at once (the grid sweep's concurrency), the usable CPUs split between them as each "
        "trial's CPUs and torch threads (default 1)",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=0.0,
        help="GPUs each trial takes, on which it trains (a fraction shares a GPU: 0.25 puts 4 trials on one; "
        "default 0, the CPUs)",
    )


def run_options_parts(
    track: str | None, jobs: int, extra_overrides: Sequence[str], gpus_per_trial: float = 0.0
) -> list[str]:
    """The shared options' part of the command line that repeats an invocation (add_run_options' keys)."""
    parts = (["--track", track] if track else ["--track"]) if track is not None else []
    if jobs != 1:
        parts += ["--jobs", str(jobs)]
    if gpus_per_trial:
        parts += ["--gpus-per-trial", f"{gpus_per_trial:g}"]
    for o in extra_overrides:
        parts += ["--set", o]
    return parts
