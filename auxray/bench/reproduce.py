"""`auxray bench reproduce`: the AuxiLearn paper's CIFAR-10 (5% labels) table, re-run with auxray.

Every method in ``configs/cifar10_5pct/`` is trained for the same epoch budget, with the same data split,
backbone and inner-optimiser settings, over a few seeds, in this process (``run_training``). Each finished
run is appended to ``<out_dir>/reproduce_<tag>.runs.jsonl`` at once, so an interrupted job keeps what it
finished and a re-run skips those runs (a run is reused only when its resolved config is the same: a changed
budget, backbone or config file re-runs it). The table is then written as ``reproduce_<tag>.json`` (a list of
rows) and ``reproduce_<tag>.md`` (the table beside the paper's numbers, the settings each method used, the
command, machine and data).

    python jobs/reproduce.py --quick                 # 1 seed, 1 epoch, 400 images: the CI-time check
    python jobs/reproduce.py                         # 3 seeds x 8 methods, the configs' epoch budget

This module is the command (its options, the driver and the line that repeats it); the parts live beside it:
``bench.plan`` (which runs and configs), ``bench.runner`` (training them, one at a time or in a process pool),
``bench.store`` (the progress file), ``bench.table`` (the rows and the Markdown page, with the paper's numbers)
and ``bench.run_diagnostics`` (what each run records after its last epoch).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auxray.bench.plan import (
    CONFIG_DIR,
    DEFAULT_SEEDS,
    Key,
    Plan,
    carried_runs,
    check_methods,
    default_methods,
    default_tag,
    fingerprint,
    method_settings,
    parse_list,
    resolve_configs,
    shared_settings,
    table_order,
)
from auxray.bench.runner import fmt_seconds, log, machine_info, threads_per_job, train_all
from auxray.bench.store import append_run, by_fingerprint, read_runs
from auxray.bench.table import build_table, data_note, render_markdown
from auxray.errors import UserError
from auxray.method_specs import spec

if TYPE_CHECKING:
    from auxray.config import RunConfig


def run_reproduce(
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    epochs: int | None = None,
    backbone: str = "convnet4",
    width: int | None = None,
    out_dir: str | Path = "benchmarks/results",
    tag: str | None = None,
    quick: bool = False,
    extra_overrides: Sequence[str] = (),
    *,
    fresh: bool = False,
    runs_dir: str | Path | None = None,
    tracking: bool = False,
    verbose: bool = False,
    config_dir: str | Path = CONFIG_DIR,
    command: str | None = None,
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Train every (method, seed) not yet in the progress file, then write the JSON and Markdown tables.

    quick: 1 seed (unless `seeds` is given), 1 epoch (unless `epochs`), 40 labelled images
    per class and 1,000 test images. jobs: runs trained at once (each in its own process, the CPUs split
    between them). methods: config stems of config_dir (default: default_methods). Returns the JSON table (one
    dict per method)."""
    t_start = time.perf_counter()
    config_dir = Path(config_dir)
    methods = tuple(methods) if methods is not None else default_methods(config_dir)
    command = command or canonical_command(
        methods,
        None if seeds is DEFAULT_SEEDS else seeds,
        epochs,
        backbone,
        width,
        out_dir,
        tag,
        quick,
        extra_overrides,
        runs_dir,
        tracking,
        jobs,
        config_dir,
    )
    check_methods(methods, config_dir)
    if quick and seeds is DEFAULT_SEEDS:  # the default, not seeds asked for explicitly
        seeds = (0,)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise UserError("no seeds given")
    if quick and epochs is None:
        epochs = 1
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    tag = tag or default_tag(backbone, quick, config_dir)
    out = Path(out_dir)
    runs_file = out / f"reproduce_{tag}.runs.jsonl"
    ckpt_root = Path(runs_dir) if runs_dir is not None else Path("runs") / "reproduce" / tag
    plan = Plan(epochs, backbone, width, quick, tracking, ckpt_root.resolve(), tuple(extra_overrides), Path(config_dir))
    cfgs = resolve_configs(plan, methods, seeds)  # a bad option fails before any training
    reference = shared_settings(cfgs[methods[0], seeds[0]])
    epochs = cfgs[methods[0], seeds[0]].trainer.epochs

    if fresh and runs_file.exists():
        runs_file.unlink()
    done = by_fingerprint(read_runs(runs_file))
    todo = [(m, s) for s in seeds for m in methods]
    fps = {key: fingerprint(cfg) for key, cfg in cfgs.items()}
    results: dict[Key, dict[str, Any]] = {}
    pending: list[Key] = []
    for i, (m, s) in enumerate(todo, 1):
        row = done.get((m, s, fps[m, s]))
        if row is None:
            pending.append((m, s))
            continue
        results[m, s] = row
        log(f"[reproduce {i}/{len(todo)}] {m} seed {s}: done before, test acc {row['test_accuracy']:.4f} (skipped)")
    skipped = len(results)
    threads = threads_per_job(jobs) if jobs > 1 else None
    spent: dict[str, list[float]] = {}
    for m, s, summary, diag in train_all(pending, cfgs, tracking, verbose, not fresh, jobs, threads):
        row = _run_row(m, s, summary, diag, cfgs[m, s], fps[m, s], jobs, threads)
        append_run(runs_file, row)
        results[m, s] = row
        spent.setdefault(m, []).append(row["seconds"])
        left = [p for p in pending if p not in results]
        log(
            f"[reproduce {len(results)}/{len(todo)}] {m} seed {s}: test acc {row['test_accuracy']:.4f} in "
            f"{row['seconds']:.1f}s (ETA {fmt_seconds(_eta(spent, left, jobs))} for {len(left)} more)"
        )
    ran = len(results) - skipped

    # Methods not asked for this time but finished earlier with the same settings stay in the table, so a partial
    # re-run (say --methods jtds after a fix) adds to the table rather than replacing it.
    carried = carried_runs(replace(plan, epochs=epochs), methods, seeds, done, reference)
    for key, (row, cfg) in carried.items():
        results[key], cfgs[key] = row, cfg
    carried_methods = list(dict.fromkeys(m for m, _ in carried))
    table_methods = table_order(methods, carried_methods, config_dir)
    finished = [results[m, s] for s in seeds for m in table_methods if (m, s) in results]
    table = build_table(finished, table_methods)
    sizes = next((r["diagnostics"].get("sizes") for r in finished if r.get("diagnostics", {}).get("sizes")), None)
    device = next((r["diagnostics"].get("device") for r in finished if r.get("diagnostics", {}).get("device")), None)
    first = cfgs[methods[0], seeds[0]]
    meta = {
        "tag": tag,
        "quick": quick,
        "command": command,
        "backbone": backbone,
        "config_dir": _shown(config_dir),
        "width": first.model.width,
        "epochs": epochs,
        "seeds": list(seeds),
        "shared": reference,
        "settings": {m: method_settings(next(cfgs[m, x] for x in seeds if (m, x) in cfgs)) for m in table_methods},
        "aux_sets": {m: aux_set(next(cfgs[m, x] for x in seeds if (m, x) in cfgs)) for m in table_methods},
        "carried": carried_methods,
        "data_note": data_note(first, sizes),
        "machine": machine_info(device),
        "wall_seconds": time.perf_counter() - t_start,
        "ran": ran,
        "skipped": skipped,
        "runs_file": str(runs_file),
        "jobs": jobs,
        "threads_per_job": threads,
    }
    _write_table(out, tag, table, finished, meta)
    log(
        f"[reproduce] {ran} runs trained, {skipped} reused, {meta['wall_seconds']:.1f}s; wrote "
        f"{out / f'reproduce_{tag}.json'} and {out / f'reproduce_{tag}.md'}"
    )
    return table


def _run_row(
    method: str,
    seed: int,
    summary: dict[str, Any],
    diag: dict[str, Any],
    cfg: RunConfig,
    fp: str,
    jobs: int,
    threads: int | None,
) -> dict[str, Any]:
    """The progress file's line for one finished run."""
    return {
        "method": method,
        "seed": seed,
        "test_accuracy": summary["test_accuracy"],
        "seconds": summary["seconds"],
        "best_val_accuracy": summary["best_val_accuracy"],
        "epochs": summary["epochs"],
        "final_test_accuracy": summary.get("final_test_accuracy"),
        "best_epoch": summary.get("best_epoch"),
        "backbone": cfg.model.backbone,
        "run_dir": summary.get("run_dir"),
        "fingerprint": fp,
        "settings": method_settings(cfg),
        "diagnostics": diag,
        "resumed_from_epoch": summary.get("resumed_from_epoch"),
        "jobs": jobs,
        "threads": threads,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _eta(spent: dict[str, list[float]], left: Sequence[Key], jobs: int) -> float:
    """Seconds the runs left should take: each method's mean so far (else the overall mean), `jobs` at a time."""
    overall = [x for v in spent.values() for x in v]
    return sum(sum(spent[m]) / len(spent[m]) if m in spent else sum(overall) / len(overall) for m, _ in left) / jobs


def _write_table(
    out: Path, tag: str, table: list[dict[str, Any]], finished: list[dict[str, Any]], meta: dict[str, Any]
) -> None:
    """reproduce_<tag>.json (the rows, each with its method's settings), .png and .md."""
    from auxray.bench.reproduce_plot import plot_reproduce, plot_task_weights  # matplotlib: once a table is written

    out.mkdir(parents=True, exist_ok=True)
    for row in table:
        row["settings"] = meta["settings"][row["method"]]
        row["aux_set"] = meta["aux_sets"][row["method"]]
    (out / f"reproduce_{tag}.json").write_text(json.dumps(table, indent=2, default=float) + "\n")
    pool = meta["shared"]["data"].get("unlabeled", "none")
    title = (
        f"CIFAR-10, 5% labels{'' if pool == 'none' else f' + unlabelled pool ({pool})'}: {meta['backbone']}, "
        f"{meta['epochs']} epochs, seeds {', '.join(map(str, meta['seeds']))}"
    )
    picture = plot_reproduce(table, out / f"reproduce_{tag}.png", title)
    meta["picture"] = picture.name if picture else None
    weights = plot_task_weights(finished, out / f"reproduce_{tag}_weights.png", f"Learned task weights: {title}")
    meta["weights_picture"] = weights.name if weights else None
    (out / f"reproduce_{tag}.md").write_text(render_markdown(table, finished, meta))


def aux_set(cfg: RunConfig) -> str:
    """A row's auxiliary tasks as the table names them ("none" for a method that trains on the main loss alone,
    the label generator's "labels" for label methods)."""
    if spec(cfg.method.name).baseline:
        return "none"
    return "+".join(cfg.method.aux_tasks)


def _shown(path: Path) -> str:
    """A path as the command line shows it: relative to the working directory when it lies inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def canonical_command(
    methods: Sequence[str],
    seeds: Sequence[int] | None,
    epochs: int | None,
    backbone: str,
    width: int | None,
    out_dir: str | Path,
    tag: str | None,
    quick: bool,
    extra_overrides: Sequence[str],
    runs_dir: str | Path | None,
    tracking: bool,
    jobs: int = 1,
    config_dir: Path = CONFIG_DIR,
) -> str:
    """The `python jobs/reproduce.py ...` line that repeats this invocation."""
    parts = ["python", "jobs/reproduce.py"]
    if quick:
        parts.append("--quick")
    if Path(config_dir) != CONFIG_DIR:
        parts += ["--config-dir", _shown(Path(config_dir))]
    if tuple(methods) != default_methods(Path(config_dir)):
        parts += ["--methods", ",".join(methods)]
    if seeds is not None:  # None: the default seeds
        parts += ["--seeds", ",".join(str(s) for s in seeds)]
    if epochs is not None:
        parts += ["--epochs", str(epochs)]
    if backbone != "convnet4":
        parts += ["--backbone", backbone]
    if width is not None:
        parts += ["--width", str(width)]
    if str(out_dir) != "benchmarks/results":
        parts += ["--out-dir", str(out_dir)]
    if runs_dir is not None:
        parts += ["--runs-dir", str(runs_dir)]
    if tag is not None:
        parts += ["--tag", tag]
    if tracking:
        parts.append("--track")
    if jobs != 1:
        parts += ["--jobs", str(jobs)]
    for o in extra_overrides:
        parts += ["--set", o]
    return shlex.join(parts)


def add_arguments(p: Any) -> None:
    """The options shared by `python jobs/reproduce.py` and `auxray bench reproduce`."""
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 seed, 1 epoch, 40 labelled images per class, 1,000 test images (a few minutes on CPU)",
    )
    p.add_argument(
        "--config-dir",
        default=str(CONFIG_DIR),
        help="folder of the table's configs, one per row (default configs/cifar10_5pct; "
        "configs/cifar10_5pct_semisup* for the semi-supervised tables)",
    )
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated config names of --config-dir (default: the usual methods, or all of another folder)",
    )
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; --quick: 0)")
    p.add_argument("--epochs", type=int, default=None, help="epoch budget for every method (default: the configs')")
    p.add_argument("--backbone", default="convnet4", choices=["convnet4", "vgg16", "resnet18"])
    p.add_argument("--width", type=int, default=None, help="ConvNet-4 base width (default: the configs')")
    p.add_argument("--out-dir", default="benchmarks/results", help="where the tables and the progress file go")
    p.add_argument("--runs-dir", default=None, help="checkpoint folder (default runs/reproduce/<tag>)")
    p.add_argument("--tag", default=None, help="file tag (default cifar10_5pct_<backbone>, --quick: quick_<backbone>)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override applied to every method (repeatable)",
    )
    p.add_argument("--fresh", action="store_true", help="forget finished runs and start over")
    p.add_argument("--track", action="store_true", help="log each run to MLflow (off by default)")
    p.add_argument("--verbose", action="store_true", help="also print each run's per-epoch lines")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, each in its own process with the CPUs split between them (default 1)",
    )


def run_from_args(args: Any) -> list[dict[str, Any]]:
    """run_reproduce from parsed add_arguments options."""
    try:
        seeds = tuple(int(s) for s in parse_list(args.seeds)) if args.seeds else DEFAULT_SEEDS
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
    config_dir = Path(args.config_dir)
    if not config_dir.is_dir():
        raise UserError(f"--config-dir {config_dir} is not a folder of configs")
    return run_reproduce(
        methods=tuple(parse_list(args.methods)) if args.methods is not None else None,
        config_dir=config_dir,
        seeds=seeds,
        epochs=args.epochs,
        backbone=args.backbone,
        width=args.width,
        out_dir=args.out_dir,
        tag=args.tag,
        quick=args.quick,
        extra_overrides=tuple(args.overrides),
        fresh=args.fresh,
        runs_dir=args.runs_dir,
        tracking=args.track,
        verbose=args.verbose,
        jobs=args.jobs,
    )
