"""`auxray` command line: train, bench (and, from their own modules, sweep and ui).
Bad input is reported in one line with exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from auxray.errors import UserError
from auxray.jsonout import print_json

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"auxray: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one config (single process, or Ray Train with --workers)")
    p.add_argument("config", help="YAML run config")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set trainer.epochs=1 (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last stdout line")
    p.add_argument("--resume", action="store_true", help="resume the newest run of this config from its checkpoint")
    p.add_argument("--workers", type=int, default=None, help="data-parallel Ray Train workers")
    p.add_argument("--gpus-per-worker", type=float, default=None)
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    p.add_argument("--name", default=None, help="run name (default: the config file's stem)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    p.set_defaults(func=cmd_train)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks; each prints JSON")
    bsub = p.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    h = bsub.add_parser("hypergrad", help="time hypergradient methods against a plain training step")
    h.add_argument("--backbones", default="convnet4,resnet18")
    h.add_argument("--ks", default="1,3,5,10")
    h.add_argument("--batch-size", type=int, default=64)
    h.add_argument("--repeats", type=int, default=3)
    h.add_argument("--device", default="cpu")
    h.add_argument("--out", default=None, help="also write the JSON to this file")
    h.set_defaults(func=cmd_bench_hypergrad)
    d = bsub.add_parser("distributed", help="Ray Train overhead and per-outer-step communication")
    d.add_argument("--root", default="../shared/data/cifar10-images.zip", help="CIFAR-10 location")
    d.add_argument("--epochs", type=int, default=3)
    d.add_argument("--per-class", type=int, default=60, help="labelled images per class")
    d.add_argument("--width", type=int, default=16, help="ConvNet-4 base width")
    d.add_argument("--out", default=None, help="also write the JSON to this file")
    d.set_defaults(func=cmd_bench_distributed)
    _add_bench_sweep(bsub)
    _add_bench_trial_cost(bsub)
    _add_bench_sweep_faults(bsub)
    _add_bench_reproduce(bsub)
    _add_bench_overhead(bsub)
    _add_bench_harmful(bsub)
    _add_bench_weighting(bsub)


def _add_bench_overhead(bsub: argparse._SubParsersAction) -> None:
    from auxray.bench.overhead import add_arguments

    o = bsub.add_parser(
        "overhead",
        help="each learned method's time per inner step and accuracy against its "
        "fixed-weight twin, and where an outer step's time goes (resumable)",
    )
    add_arguments(o)
    o.set_defaults(func=cmd_bench_overhead)


def _add_bench_harmful(bsub: argparse._SubParsersAction) -> None:
    h = bsub.add_parser(
        "harmful", help="each learned weighting on a synthetic task with a helpful and a harmful auxiliary (seconds)"
    )
    h.add_argument("--variants", default=None, help="comma-separated variants (default: all; the fixed twin always)")
    h.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0,1,2,3,4)")
    h.add_argument("--out", default=None, help="also write the JSON to this file")
    h.set_defaults(func=cmd_bench_harmful)


def _add_bench_weighting(bsub: argparse._SubParsersAction) -> None:
    from auxray.bench.weighting_command import add_arguments

    w = bsub.add_parser(
        "weighting",
        help="the weighting table: semi-supervised CIFAR-10 (5%% labels), helpful and harmful auxiliary sets, each "
        "learned method beside its fixed twin, resumable (same options as jobs/weighting.py)",
    )
    add_arguments(w)
    w.set_defaults(func=cmd_bench_weighting)


def _add_bench_reproduce(bsub: argparse._SubParsersAction) -> None:
    from auxray.bench.reproduce import add_arguments

    r = bsub.add_parser(
        "reproduce",
        help="the AuxiLearn paper's CIFAR-10 (5%% labels) table, every method, "
        "resumable (same options as jobs/reproduce.py)",
    )
    add_arguments(r)
    r.set_defaults(func=cmd_bench_reproduce)


def _add_bench_sweep(bsub: argparse._SubParsersAction) -> None:
    s = bsub.add_parser(
        "sweep",
        help="TPE+ASHA, random search to the end and PBT on several search seeds: best found against compute",
    )
    s.add_argument("sweep", help="sweep YAML whose base run and space are searched")
    s.add_argument("--trials", type=int, default=None, help="trials per search (default: the sweep's)")
    s.add_argument("--concurrency", type=int, default=None)
    s.add_argument("--seeds", default="0,1,2", help="comma-separated search seeds, one search per strategy each")
    s.add_argument("--strategies", default="tpe_asha,random_full,pbt", help="comma-separated, of these three")
    s.add_argument("--gpus-per-trial", type=float, default=None, help="each trial's GPU share (default: the sweep's)")
    s.add_argument("--storage", default="runs/bench-sweep", help="folder for the Tune experiments and MLflow store")
    s.add_argument("--tracking-uri", default=None, help="default: a new SQLite store in the storage folder")
    s.add_argument("--out", default=None, help="also write the JSON to this file (and its plot beside it, .png)")
    s.set_defaults(func=cmd_bench_sweep)


def _add_bench_trial_cost(bsub: argparse._SubParsersAction) -> None:
    t = bsub.add_parser("trial-cost", help="a sweep trial's fixed cost (start-up, tracking, set-up) against training")
    t.add_argument("--config", default="configs/demo.yaml", help="run config each trial trains (default: the demo)")
    t.add_argument("--trials", type=int, default=4, help="trials per epoch budget (one per seed)")
    t.add_argument("--epochs", default="1,5", help="comma-separated epoch budgets, one grid sweep each")
    t.add_argument("--concurrency", type=int, default=1)
    t.add_argument("--storage", default="runs/bench-trial-cost", help="Tune experiments and MLflow store")
    t.add_argument("--tracking-uri", default=None, help="MLflow store (default: SQLite in the storage folder)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--out", default=None, help="also write the JSON to this file")
    t.set_defaults(func=cmd_bench_trial_cost)


def _add_bench_sweep_faults(bsub: argparse._SubParsersAction) -> None:
    f = bsub.add_parser(
        "sweep-faults",
        help="a sweep against a real MLflow server, clean, with its driver killed and resumed, and with the server "
        "killed for a while; checks that no trial's run is lost or duplicated",
    )
    f.add_argument("sweep", help="sweep YAML (e.g. configs/sweeps/scale_weights.yaml)")
    f.add_argument("--trials", type=int, default=None, help="trials per scenario (default: the sweep's)")
    f.add_argument(
        "--scenarios", default="clean,driver_killed,server_killed", help="comma-separated subset of the scenarios"
    )
    f.add_argument("--outage", type=float, default=30.0, help="seconds the server stays down (server_killed)")
    f.add_argument(
        "--storage", default=None, help="folder for every scenario (default: runs/bench-sweep-faults/<timestamp>)"
    )
    f.add_argument("--out", default=None, help="also write the JSON to this file")
    f.set_defaults(func=cmd_bench_sweep_faults)


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="hyperparameter sweep on Ray Tune (Optuna TPE + ASHA), tracked in MLflow")
    p.add_argument("config", help="sweep YAML (base run config + search space)")
    p.add_argument("--resume", action="store_true", help="continue the sweep after its driver stopped")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (checked before any training)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("--no-progress", action="store_true", help="no line per finished trial")
    p.set_defaults(func=cmd_sweep)


def _add_ui(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="MLflow UI on 127.0.0.1 over the tracking store")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=cmd_ui)


def _add_tracking(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tracking", help="MLflow tracking utilities")
    tsub = p.add_subparsers(dest="tracking", required=True, parser_class=_Parser)
    r = tsub.add_parser("replay", help="send a run's offline spool to the tracking store")
    r.add_argument("spool", help="spool file (.jsonl) written while the store was unreachable")
    r.add_argument("--tracking-uri", default=None, help="store to send to (default: the spool's)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_tracking_replay)


def build_parser() -> argparse.ArgumentParser:
    """The full `auxray` argument parser."""
    parser = _Parser(prog="auxray", description="Auxiliary learning by implicit differentiation, on Ray.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_bench(sub)
    _add_sweep(sub)
    _add_ui(sub)
    _add_tracking(sub)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    """`auxray train CONFIG`: validate, then run in-process or on Ray Train, tracked unless disabled."""
    from auxray.config import load_config

    if args.gpus_per_worker is not None and (args.workers or 1) < 2:
        raise UserError(
            "--gpus-per-worker applies to data-parallel runs: add --workers N (N >= 2); a single-process "
            "run uses trainer.device"
        )
    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"scaling.workers={args.workers}")
    if args.gpus_per_worker is not None:
        overrides.append(f"scaling.gpus_per_worker={args.gpus_per_worker}")
    if args.address is not None:
        overrides.append(f"scaling.address={args.address}")
    cfg = load_config(args.config, overrides)
    # Loaded after the config is valid: torch and torchvision take seconds to import, bad input answers at once.
    from auxray.tracking.training import train_tracked
    from auxray.train.run_plan import plan_run

    plan = plan_run(cfg, name=args.name or Path(args.config).stem, resume=args.resume)
    result = train_tracked(plan, tracking_uri=args.tracking_uri, progress=not args.no_progress)
    if args.json:
        print_json(result)
    else:
        if "test_accuracy" in result:
            shown = f"test accuracy {result['test_accuracy']:.4f}"
        elif "test_mse" in result:
            shown = f"test MSE {result['test_mse']:.4f}"
        else:
            shown = json.dumps(result)
        print(f"{result['method']}: {shown} in {result['seconds']:.1f}s", flush=True)
    return 0


def cmd_bench_hypergrad(args: argparse.Namespace) -> int:
    """`auxray bench hypergrad`: JSON timings of every hypergradient method."""
    from auxray.bench.hypergrad import run_hypergrad_bench

    result = run_hypergrad_bench(
        backbones=tuple(b for b in args.backbones.split(",") if b),
        ks=tuple(int(k) for k in args.ks.split(",") if k),
        batch_size=args.batch_size,
        repeats=args.repeats,
        device=args.device,
    )
    print_json(result, args.out)
    return 0


def cmd_bench_distributed(args: argparse.Namespace) -> int:
    """`auxray bench distributed`: JSON of Ray Train overhead and outer-step traffic."""
    from auxray.bench.distributed import run_distributed_bench

    print_json(
        run_distributed_bench(root=args.root, epochs=args.epochs, per_class=args.per_class, width=args.width), args.out
    )
    return 0


def cmd_bench_reproduce(args: argparse.Namespace) -> int:
    """`auxray bench reproduce`: see auxray.bench.reproduce; the JSON table on stdout."""
    from auxray.bench.reproduce import run_from_args

    print(json.dumps(run_from_args(args), default=float), flush=True)
    return 0


def cmd_bench_overhead(args: argparse.Namespace) -> int:
    """`auxray bench overhead`: see auxray.bench.overhead; the JSON rows on stdout."""
    from auxray.bench.overhead import run_from_args

    print(json.dumps(run_from_args(args), default=float), flush=True)
    return 0


def cmd_bench_harmful(args: argparse.Namespace) -> int:
    """`auxray bench harmful`: see auxray.bench.harmful; the JSON on stdout and in --out."""
    from auxray.bench.harmful import harmful_check, parse_variants
    from auxray.bench.plan import parse_seeds

    seeds = parse_seeds(args.seeds) or ()  # --seeds always has a value (its default); () is refused as no seeds
    print_json(harmful_check(parse_variants(args.variants), seeds), args.out)
    return 0


def cmd_bench_weighting(args: argparse.Namespace) -> int:
    """`auxray bench weighting`: see auxray.bench.weighting; the JSON rows on stdout."""
    from auxray.bench.weighting import run_from_args

    print(json.dumps(run_from_args(args), default=float), flush=True)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """`auxray sweep CONFIG`: see auxray.tune.commands."""
    from auxray.tune.commands import sweep_command

    return sweep_command(
        args.config,
        resume=args.resume,
        tracking_uri=args.tracking_uri,
        as_json=args.json,
        progress=not args.no_progress,
    )


def cmd_ui(args: argparse.Namespace) -> int:
    """`auxray ui`: the MLflow UI."""
    from auxray.tracking.commands import ui_command

    return ui_command(args.port, args.tracking_uri)


def cmd_tracking_replay(args: argparse.Namespace) -> int:
    """`auxray tracking replay SPOOL`."""
    from auxray.tracking.commands import replay_command

    return replay_command(args.spool, args.tracking_uri, args.json)


def cmd_bench_sweep(args: argparse.Namespace) -> int:
    """`auxray bench sweep`: see auxray.bench.sweep."""
    from auxray.bench.plan import parse_list, parse_seeds
    from auxray.bench.sweep import bench_sweep_command

    return bench_sweep_command(
        args.sweep,
        trials=args.trials,
        concurrency=args.concurrency,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        seeds=parse_seeds(args.seeds) or (),
        strategies=parse_list(args.strategies),
        gpus_per_trial=args.gpus_per_trial,
        out=args.out,
    )


def cmd_bench_trial_cost(args: argparse.Namespace) -> int:
    """`auxray bench trial-cost`: see auxray.bench.trial_cost; the JSON on stdout and in --out."""
    from auxray.bench.trial_cost import run_trial_cost_bench
    from auxray.config_yaml import parse_overrides

    try:
        epochs = tuple(int(e) for e in args.epochs.split(",") if e.strip())
    except ValueError:
        raise UserError(f"--epochs takes comma-separated integers, got {args.epochs!r}") from None
    flat = parse_overrides(args.overrides)
    result = run_trial_cost_bench(
        args.config,
        trials=args.trials,
        epochs=epochs,
        concurrency=args.concurrency,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        overrides=flat,
    )
    print_json(result, args.out)
    return 0


def cmd_bench_sweep_faults(args: argparse.Namespace) -> int:
    """`auxray bench sweep-faults`: see auxray.bench.sweep_faults."""
    from auxray.bench.sweep_faults import bench_sweep_faults_command

    return bench_sweep_faults_command(
        args.sweep,
        trials=args.trials,
        scenarios=args.scenarios,
        storage=args.storage,
        outage=args.outage,
        out=args.out,
    )


def run(argv: Sequence[str] | None, parser_factory: Callable[[], argparse.ArgumentParser] = build_parser) -> int:
    """Parse and dispatch; UserError becomes one line on stderr and exit code 2."""
    args = parser_factory().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"auxray: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("auxray: interrupted; checkpoints written so far are kept (resume with --resume)", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(run(argv))


if __name__ == "__main__":
    main()
