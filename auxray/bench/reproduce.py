"""`auxray bench reproduce`: the AuxiLearn paper's CIFAR-10 (5% labels) table, re-run with auxray.

Every method in ``configs/cifar10_5pct/`` is trained for the same epoch budget, with the same data split,
backbone and inner-optimiser settings, over a few seeds, as the trials of Ray Tune grid sweeps (config files x
seeds; ``bench.table_runs`` says how the runs of several invocations merge): an interrupted invocation resumes
its experiment, a later one with more methods or seeds adds only what is missing, and a changed setting runs
again. Every trial is an MLflow child run under its sweep's parent run. The finished runs are written to
``<out_dir>/reproduce_<tag>.runs.jsonl`` (so a committed table can be rendered again without the runs folder:
its rows count as finished while their fingerprints match), and the table as ``reproduce_<tag>.json`` (a list of
rows) and ``reproduce_<tag>.md`` (the table beside the paper's numbers, the settings each method used, the
command, machine and data).

    python jobs/reproduce.py --quick                 # 1 seed, 1 epoch, 400 images: the CI-time check
    python jobs/reproduce.py                         # 3 seeds x 8 methods, the configs' epoch budget

This module is the command (its options, the driver and the line that repeats it); the parts live beside it:
``bench.plan`` (which runs and configs), ``bench.table_runs`` (the grid sweeps and their finished trials),
``bench.table`` (the rows and the Markdown page, with the paper's numbers) and ``bench.reproduce_plot``.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auxray.bench.machine import log, machine_info, usable_cpus
from auxray.bench.plan import (
    CONFIG_DIR,
    DEFAULT_SEEDS,
    Plan,
    carried_runs,
    check_methods,
    default_methods,
    default_tag,
    fingerprint,
    method_settings,
    parse_list,
    parse_seeds,
    resolve_configs,
    shared_settings,
    table_order,
)
from auxray.bench.table import build_table, data_note, render_markdown
from auxray.bench.table_runs import (
    GridSetup,
    Wanted,
    add_run_options,
    check_jobs,
    failed_error,
    gather_runs,
    run_options_parts,
    tracking_uri,
)
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
    track: str | None = None,
    verbose: bool = False,
    config_dir: str | Path = CONFIG_DIR,
    command: str | None = None,
    jobs: int = 1,
    gpus_per_trial: float = 0.0,
) -> list[dict[str, Any]]:
    """Train every (method, seed) not finished yet as Tune grid trials, then write the JSON and Markdown tables.

    quick: 1 seed (unless `seeds` is given), 1 epoch (unless `epochs`), 40 labelled images per class and 1,000
    test images. jobs: trials at once, the usable CPUs split between them (and gpus_per_trial GPUs each). track:
    None logs to the runs folder's own MLflow store, "" to the configured one (MLFLOW_TRACKING_URI, else
    ./mlflow.db), else that URI. methods: config stems of config_dir (default: default_methods). Returns the JSON
    table (one dict per method)."""
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
        track,
        jobs,
        config_dir,
        gpus_per_trial,
    )
    check_methods(methods, config_dir)
    if quick and seeds is DEFAULT_SEEDS:  # the default, not seeds asked for explicitly
        seeds = (0,)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise UserError("no seeds given")
    if quick and epochs is None:
        epochs = 1
    check_jobs(jobs, gpus_per_trial)
    tag = tag or default_tag(backbone, quick, config_dir)
    out = Path(out_dir)
    runs_file = out / f"reproduce_{tag}.runs.jsonl"
    runs_root = (Path(runs_dir) if runs_dir is not None else Path("runs") / "reproduce" / tag).resolve()
    plan = Plan(epochs, backbone, width, quick, tuple(extra_overrides), config_dir)
    cfgs = resolve_configs(plan, methods, seeds)  # a bad option fails before any training
    reference = shared_settings(cfgs[methods[0], seeds[0]])
    epochs = cfgs[methods[0], seeds[0]].trainer.epochs
    wanted = {
        (m, s): Wanted(m, s, fingerprint(cfg), cfg.model.backbone, method_settings(cfg)) for (m, s), cfg in cfgs.items()
    }

    if fresh:
        runs_file.unlink(missing_ok=True)
        shutil.rmtree(runs_root, ignore_errors=True)
    todo = [(m, s) for s in seeds for m in methods]
    threads = cfgs[methods[0], seeds[0]].trainer.threads or max(1, usable_cpus() // jobs)
    setup = GridSetup(
        tag=tag,
        runs_root=runs_root,
        config_dir=config_dir,
        overrides=plan.overrides(),
        jobs=jobs,
        cpus_per_trial=float(threads),
        tracking_uri=tracking_uri(track, runs_root),
        experiment=f"reproduce-{tag}",
        command=command,
        gpus_per_trial=gpus_per_trial,
    )
    known, done_before, failed = gather_runs(setup, [wanted[k] for k in todo], runs_file, threads, verbose)
    results = {k: known[wanted[k].key] for k in todo if wanted[k].key in known}
    ran = len(results) - len(done_before)

    # Methods not asked for this time but finished earlier with the same settings stay in the table, so a partial
    # re-run (say --methods jtds after a fix) adds to the table rather than replacing it.
    carried = carried_runs(replace(plan, epochs=epochs), methods, seeds, known, reference)
    for key, (row, cfg) in carried.items():
        results[key], cfgs[key] = row, cfg
    carried_methods = list(dict.fromkeys(m for m, _ in carried))
    table_methods = table_order(methods, carried_methods, config_dir)
    table_methods = tuple(m for m in table_methods if any((m, s) in results for s in seeds))
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
        "skipped": len(done_before),
        "runs_file": str(runs_file),
        "jobs": jobs,
        "threads_per_job": threads,
    }
    if table:
        _write_table(out, tag, table, finished, meta)
        log(
            f"[reproduce] {ran} runs trained, {len(done_before)} reused, {meta['wall_seconds']:.1f}s; wrote "
            f"{out / f'reproduce_{tag}.json'} and {out / f'reproduce_{tag}.md'}"
        )
    if failed:
        raise failed_error(failed, runs_root)
    return table


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
    track: str | None,
    jobs: int = 1,
    config_dir: Path = CONFIG_DIR,
    gpus_per_trial: float = 0.0,
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
    return shlex.join(parts + run_options_parts(track, jobs, extra_overrides, gpus_per_trial))


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
    p.add_argument(
        "--runs-dir",
        default=None,
        help="folder of the table's Tune experiments, their trials' files and (without --track) their MLflow store "
        "(default runs/reproduce/<tag>)",
    )
    p.add_argument("--tag", default=None, help="file tag (default cifar10_5pct_<backbone>, --quick: quick_<backbone>)")
    add_run_options(p, "extra config override applied to every method (repeatable)")


def run_from_args(args: Any) -> list[dict[str, Any]]:
    """run_reproduce from parsed add_arguments options."""
    seeds = parse_seeds(args.seeds or None) or DEFAULT_SEEDS
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
        track=args.track,
        verbose=args.verbose,
        jobs=args.jobs,
        gpus_per_trial=args.gpus_per_trial,
    )
