"""`auxray bench weighting`: the weighting table (issues #19 and #20), semi-supervised CIFAR-10 with 5% labels.

Per auxiliary set (``bench.weighting_sets``: helpful, harmful, side_labels), every method of the set's config
folder and the fixed twin of each learned or forking method are trained as Ray Tune grid trials over seeds, by the
reproduction's runner (``bench.table_runs``): an interrupted invocation resumes its experiment, a later one adds
only what is missing, a changed config runs again, and a twin shared by several methods (``equal``) trains once.
The run config files (a frozen twin's with ``hypergrad.enabled: false``) are written under
``<runs-dir>/<set>/configs``; each set's finished runs are kept in ``<out>/weighting_<tag>.<set>.runs.jsonl``.

Rows (``bench.weighting_rows``) go to ``<out>/weighting_<tag>.json`` and ``.md`` with two pictures; a row is
written for every config of a shown set with finished runs (``--methods`` chooses what trains, not what the table
keeps, so a partial invocation never drops rows), and stderr lists the complete (method, aux_set) rows and the seeds
the others miss. The harmful set's ``equal_helpful_subset`` row is the helpful set's ``equal`` runs, and
``--search-result`` adds a set's ``weight_search`` row: a finished weight-search sweep's best weights trained on the
table's seeds (``bench.weighting_search``).

    auxray bench weighting --quick --methods stl,equal       # minutes: a smoke check
    auxray bench weighting --jobs 4                          # the table: helpful then harmful, 3 seeds each
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from auxray.bench.machine import log, machine_info, usable_cpus
from auxray.bench.plan import (
    DEFAULT_SEEDS,
    Plan,
    fingerprint,
    method_settings,
    parse_list,
    parse_seeds,
    resolve_configs,
)
from auxray.bench.table_runs import (
    GridSetup,
    RunKey,
    Wanted,
    check_jobs,
    failed_error,
    gather_runs,
    known_runs,
    tracking_uri,
)
from auxray.bench.twins import write_run_configs
from auxray.bench.weighting_command import canonical_command
from auxray.bench.weighting_rows import completeness, set_rows
from auxray.bench.weighting_search import SearchResult, parse_search_results, read_search
from auxray.bench.weighting_sets import (
    AUX_SETS,
    DEFAULT_SETS,
    HELPFUL_SUBSET,
    SEARCH_ROW,
    SUBSET_METHOD,
    SUBSET_ROW,
    SetPlan,
    parse_sets,
    set_plan,
)
from auxray.errors import UserError
from auxray.method_specs import spec

BACKBONE = "convnet4"
TAG = "cifar10_5pct_semisup"


def _runs_file(out: Path, tag: str, aux_set: str) -> Path:
    return out / f"weighting_{tag}.{aux_set}.runs.jsonl"


def _wanted(sp: SetPlan, plan: Plan, seeds: Sequence[int]) -> dict[tuple[str, int], Wanted]:
    """Every (key, seed) of a set resolved (a bad option fails before any training) as the runner's Wanted."""
    cfgs = resolve_configs(plan, sp.keys, seeds)
    return {(k, s): Wanted(k, s, fingerprint(c), c.model.backbone, method_settings(c)) for (k, s), c in cfgs.items()}


def _other_sets_runs(
    aux_set: str,
    shown: Sequence[str],
    known: Mapping[str, dict[RunKey, dict[str, Any]]],
    out: Path,
    tag: str,
    runs_root: Path,
) -> dict[RunKey, dict[str, Any]]:
    """The finished runs of every set but `aux_set`: as gathered in this invocation, else from their records."""
    found: dict[RunKey, dict[str, Any]] = {}
    for other in shown:
        if other != aux_set:
            found.update(known.get(other) or known_runs(_runs_file(out, tag, other), runs_root / other))
    return found


def run_weighting(
    sets: Sequence[str] = DEFAULT_SETS,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    epochs: int | None = None,
    quick: bool = False,
    extra_overrides: Sequence[str] = (),
    *,
    out_dir: str | Path = "benchmarks/results",
    runs_dir: str | Path | None = None,
    search_results: Sequence[str] = (),
    track: str | None = None,
    jobs: int = 1,
    gpus_per_trial: float = 0.0,
    fresh: bool = False,
    verbose: bool = False,
    status: bool = False,
) -> list[dict[str, Any]]:
    """Train what is missing of each set in order, then write the rows and the page; return the rows.

    quick: 1 seed unless `seeds`, 1 epoch unless `epochs`, 40 labelled images per class, 1,000 test images, tag
    "quick". epochs: every run's budget (None: the configs'); another budget than the configs' is a table of its own,
    tagged `<TAG>_<epochs>ep`. methods: config stems, each present in every set's folder (None: every config of
    each folder). status: train nothing and write no table; report the rows of the finished runs and what is left."""
    t_start = time.perf_counter()
    command = canonical_command(
        sets,
        methods,
        seeds,
        epochs,
        quick,
        extra_overrides,
        out_dir,
        runs_dir,
        search_results,
        track,
        jobs,
        gpus_per_trial,
    )
    sets = parse_sets(tuple(sets))
    # Read before any training: a path that is not a finished sweep is bad input, one line, nothing trained.
    given = {s: read_search(path) for s, path in parse_search_results(list(search_results), sets).items()}
    seeds = tuple(seeds) if seeds is not None else ((0,) if quick else DEFAULT_SEEDS)
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must name distinct seeds, got {list(seeds)}")
    check_jobs(jobs, gpus_per_trial)
    if status and fresh:
        raise UserError("--status trains nothing and forgets nothing; drop --fresh")
    if quick and epochs is None:
        epochs = 1
    # Another budget is another table (its own runs folder, records and page), never mixed into the shipped one's.
    tag = "quick" if quick else TAG if epochs in (None, _shipped_epochs(sets[0])) else f"{TAG}_{epochs}ep"
    out = Path(out_dir)
    runs_root = (Path(runs_dir) if runs_dir is not None else Path("runs") / "weighting" / tag).resolve()
    # Sets not asked for this time but with runs on record stay in the table (read, not trained), all their methods.
    carried = tuple(s for s in AUX_SETS if s not in sets and AUX_SETS[s].is_dir() and _runs_file(out, tag, s).is_file())
    shown = tuple(s for s in AUX_SETS if s in sets or s in carried)
    if fresh:
        for s in sets:
            _search_file(out, tag, s).unlink(missing_ok=True)
    # A set's weight search: given now (then its row's runs train, and it is kept for later invocations) or kept.
    searches = {s: found for s in shown if (found := given.get(s) or SearchResult.load(_search_file(out, tag, s)))}
    # --methods chooses what trains, never which rows the table keeps: a set's rows are every config with runs, in
    # its folder's order whichever methods an invocation names.
    trains = {s: set_plan(s, AUX_SETS[s], methods) for s in sets}
    plans = {s: set_plan(s, AUX_SETS[s], None) for s in shown}
    for s, search in searches.items():
        plans[s] = replace(plans[s], extra={SEARCH_ROW: (SUBSET_METHOD, search.overrides())})
    if not status:
        for s, search in given.items():
            search.save(_search_file(out, tag, s))
    # The run config files go under the runs folder; a status report writes them to a scratch folder (removed when
    # it is collected) and nothing to the runs folder.
    scratch = tempfile.TemporaryDirectory(prefix="auxray-weighting-") if status else None
    config_root = Path(scratch.name) if scratch is not None else runs_root
    grids = {s: Plan(epochs, BACKBONE, None, quick, tuple(extra_overrides), config_root / s / "configs") for s in shown}
    if fresh:
        for s in sets:
            _runs_file(out, tag, s).unlink(missing_ok=True)
            shutil.rmtree(runs_root / s, ignore_errors=True)
    for s, sp in plans.items():
        write_run_configs(sp.sources(), sp.config_dir, grids[s].config_dir)
    wanted = {s: _wanted(plans[s], grids[s], seeds) for s in shown}
    threads = grids[sets[0]].config(plans[sets[0]].keys[0], seeds[0]).trainer.threads or max(1, usable_cpus() // jobs)
    uri = tracking_uri(track, runs_root)

    known: dict[str, dict[RunKey, dict[str, Any]]] = {}
    failed: list[Wanted] = []
    for s in sets:
        setup = GridSetup(
            tag=f"{tag}-{s}",
            runs_root=runs_root / s,
            config_dir=grids[s].config_dir,
            overrides=grids[s].overrides(),
            jobs=jobs,
            cpus_per_trial=float(threads),
            tracking_uri=uri,
            experiment=f"weighting-{tag}-{s}",
            command=command,
            gpus_per_trial=gpus_per_trial,
        )
        # The weight search's runs train when its result is given now; a kept one's row shows the runs it has.
        keys = [*trains[s].keys, *([SEARCH_ROW] if s in given else [])]
        todo = [wanted[s][k, seed] for seed in seeds for k in keys]
        # A run of the same method, seed and config in another set (STL, which has no auxiliary task) is this run.
        elsewhere = {} if fresh else _other_sets_runs(s, shown, known, out, tag, runs_root)
        if status:
            known[s] = {**elsewhere, **known_runs(_runs_file(out, tag, s), runs_root / s)}
            left = [f"{w.method} seed {w.seed}" for w in todo if w.key not in known[s]]
            done = len(todo) - len(left)
            log(f"[weighting] {s}: {done} of {len(todo)} runs finished; to train: {', '.join(left) or 'none'}")
            continue
        known[s], _, lost = gather_runs(setup, todo, _runs_file(out, tag, s), threads, verbose, elsewhere)
        failed += lost

    for s in carried:
        known[s] = known_runs(_runs_file(out, tag, s), runs_root / s)
    # A set's rows show every seed on record, not only this invocation's: training some seeds (--seeds 0,1) does not
    # shrink the rows that others trained, and extra seeds (3, 4) join the rows that have them. Completeness is
    # reported against the invocation's seeds.
    on_record = {s: _seeds_on_record(seeds, wanted[s], known[s], plans[s], grids[s]) for s in shown}
    wanted = {s: ws for s, (_, ws) in on_record.items()}
    rows: list[dict[str, Any]] = []
    by_set: dict[str, list[dict[str, Any]]] = {}
    complete: list[str] = []
    incomplete: list[str] = []
    for s in shown:
        subset = None
        if HELPFUL_SUBSET.get(s) and SUBSET_METHOD in plans[s].keys:
            subset = _subset_runs(
                HELPFUL_SUBSET[s], grids[s], runs_root, out, tag, on_record[s][0], known.get(HELPFUL_SUBSET[s])
            )
        asked = _asked_keys(trains[s], s in given) if s in trains else ()
        mine, ok, missing, by_set[s] = _set_table(plans[s], wanted[s], known[s], on_record[s][0], seeds, subset, asked)
        if s in searches:
            for row in mine:
                if row["method"] == SEARCH_ROW:
                    with_search(row, searches[s])
        rows += mine
        complete += ok
        incomplete += missing
    for line in complete:
        log(f"[weighting] complete: {line}")
    for line in incomplete:
        log(f"[weighting] incomplete: {line}")
    if rows and not status:
        budget = grids[sets[0]].config(plans[sets[0]].keys[0], seeds[0]).trainer.epochs
        devices = [r["diagnostics"].get("device") for rs in known.values() for r in rs.values() if "diagnostics" in r]
        meta = {
            "title": f"semi-supervised CIFAR-10, 5% labels, {BACKBONE}, {budget} epochs",
            "sets": list(shown),
            "carried": list(carried),
            "aux_tasks": {s: _aux_tasks(grids[s], plans[s], seeds[0]) for s in shown},
            "seeds": list(seeds),
            "epochs": budget,
            "config_dirs": {s: f"configs/{AUX_SETS[s].name}" for s in shown},
            "command": command,
            "commands": _commands(known, wanted),
            "machine": machine_info(next((d for d in devices if d), None)),
            "complete": complete,
            "incomplete": incomplete,
            "wall_seconds": time.perf_counter() - t_start,
        }
        _write(out, tag, rows, by_set, meta)
    if failed:
        raise failed_error(failed, runs_root)
    return rows


def _seeds_on_record(
    seeds: Sequence[int],
    wanted: dict[tuple[str, int], Wanted],
    known: Mapping[RunKey, dict[str, Any]],
    sp: SetPlan,
    plan: Plan,
) -> tuple[tuple[int, ...], dict[tuple[str, int], Wanted]]:
    """A set's seeds to show: the invocation's and every other seed with a finished run of one of its rows' configs
    as planned now (a record of a changed config does not count); and its wanted runs with those seeds' added."""
    extra = sorted({key[1] for key in known} - set(seeds))
    if not extra:
        return tuple(seeds), wanted
    more = {**wanted, **_wanted(sp, plan, extra)}
    found = {x for (_, x), w in more.items() if x in extra and w.key in known}
    return tuple(sorted({*seeds, *found})), more


def _search_file(out: Path, tag: str, aux_set: str) -> Path:
    return out / f"weighting_{tag}.{aux_set}.search.json"


def with_search(row: dict[str, Any], search: SearchResult) -> None:
    """The weight_search row's search part: its compute (every trial's seconds) added to its runs', its weights
    (fixed: the runs report none), and what the search was."""
    row["compute"] += search.compute
    row["final_weights"] = dict(search.weights)
    row["search"] = {k: v for k, v in asdict(search).items() if k != "weights"}


def _shipped_epochs(aux_set: str) -> int:
    """The epoch budget of a set's shipped configs (its equal.yaml's, which every set has)."""
    from auxray.config import load_config  # pydantic: see auxray.bench.plan

    return load_config(AUX_SETS[aux_set] / f"{SUBSET_METHOD}.yaml", []).trainer.epochs


def _set_table(
    sp: SetPlan,
    wanted: dict[tuple[str, int], Wanted],
    known: dict[RunKey, dict[str, Any]],
    shown: Sequence[int],
    seeds: Sequence[int],
    subset: list[dict[str, Any]] | None,
    asked: Collection[str],
) -> tuple[list[dict[str, Any]], list[str], list[str], list[dict[str, Any]]]:
    """One set's rows over the `shown` seeds, its complete and incomplete report lines against the invocation's
    `seeds` (for the `asked` rows and those with runs) and its learned or forking methods' runs (for the weights
    plot). subset: the equal_helpful_subset runs, if a row."""
    runs = {k: [known[wanted[k, x].key] for x in shown if wanted[k, x].key in known] for k in sp.keys}
    twins = {m: t.name for m, t in sp.twins.items()}
    rows = set_rows(sp.aux_set, sp.keys, runs, twins, subset or (), SUBSET_ROW, SUBSET_METHOD)
    keys = [*sp.keys, SUBSET_ROW] if subset is not None else list(sp.keys)
    done = {k: [r["seed"] for r in rs] for k, rs in {**runs, SUBSET_ROW: subset or []}.items()}
    keys = [k for k in keys if k in asked or done.get(k)]
    ok, missing = completeness(sp.aux_set, keys, seeds, done)
    return rows, ok, missing, [r for k in sp.twins for r in runs.get(k, [])]


def _asked_keys(train: SetPlan, searched: bool) -> tuple[str, ...]:
    """The rows an invocation asks of a set: what it trains, the helpful subset with equal, the search it was given."""
    subset = (SUBSET_ROW,) if SUBSET_METHOD in train.keys else ()
    return (*train.keys, *subset, *((SEARCH_ROW,) if searched else ()))


def _subset_runs(
    helpful: str,
    plan: Plan,
    runs_root: Path,
    out: Path,
    tag: str,
    seeds: Sequence[int],
    known: dict[RunKey, dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    """The helpful set's equal runs under the same plan (no training: read from its records when not run now)."""
    source = AUX_SETS[helpful]
    runs = known if known is not None else known_runs(_runs_file(out, tag, helpful), runs_root / helpful)
    found = []
    for s in seeds:
        key = (SUBSET_METHOD, s, fingerprint(replace(plan, config_dir=source).config(SUBSET_METHOD, s)))
        if key in runs:
            found.append(runs[key])
    return found


def _commands(
    known: dict[str, dict[RunKey, dict[str, Any]]], wanted: dict[str, dict[tuple[str, int], Wanted]]
) -> list[str]:
    """The commands that trained the runs the table shows, each once, in the order their first run finished."""
    behind = [known[s][w.key] for s, ws in wanted.items() for w in ws.values() if w.key in known.get(s, {})]
    behind.sort(key=lambda r: r["finished_at"])
    return list(dict.fromkeys(r.get("command") or UNRECORDED for r in behind))


UNRECORDED = "(runs from before commands were recorded)"


def _aux_tasks(plan: Plan, sp: SetPlan, seed: int) -> str:
    """The set's auxiliary tasks, from its first method that weighs given ones (the table's by their names)."""
    for k in sp.keys:
        cfg = plan.config(k, seed)
        if spec(cfg.method.name).needs_aux_task:
            table = f"table ({', '.join(t.name for t in cfg.data.aux_columns)})"
            return ", ".join(table if t == "table" else t for t in cfg.method.aux_tasks)
    return ""


def _write(
    out: Path, tag: str, rows: list[dict[str, Any]], by_set: dict[str, list[dict[str, Any]]], meta: dict[str, Any]
) -> None:
    """weighting_<tag>.json (the rows), its two pictures and the Markdown page."""
    from auxray.bench.weighting_page import plot_compute, plot_weights, render_markdown

    out.mkdir(parents=True, exist_ok=True)
    (out / f"weighting_{tag}.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
    weights = plot_weights(by_set, out / f"weighting_{tag}_weights.png", f"Task weights: {meta['title']}")
    meta["weights_picture"] = weights.name if weights else None
    compute = plot_compute(rows, out / f"weighting_{tag}_compute.png", meta["title"])
    meta["compute_picture"] = compute.name if compute else None
    (out / f"weighting_{tag}.md").write_text(render_markdown(rows, meta))
    log(f"[weighting] wrote {out / f'weighting_{tag}.json'} and {out / f'weighting_{tag}.md'}")


def run_from_args(args: Any) -> list[dict[str, Any]]:
    """run_weighting from parsed add_arguments options."""
    seeds = parse_seeds(args.seeds or None)
    return run_weighting(
        sets=tuple(parse_list(args.sets)),
        methods=tuple(parse_list(args.methods)) if args.methods is not None else None,
        seeds=seeds,
        epochs=args.epochs,
        quick=args.quick,
        extra_overrides=tuple(args.overrides),
        out_dir=args.out_dir,
        runs_dir=args.runs_dir,
        search_results=tuple(args.search_results),
        track=args.track,
        jobs=args.jobs,
        gpus_per_trial=args.gpus_per_trial,
        fresh=args.fresh,
        verbose=args.verbose,
        status=args.status,
    )
