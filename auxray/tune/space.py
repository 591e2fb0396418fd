"""The sweep's search space as Optuna distributions (TPE), Ray Tune domains (random search) or grid axes
(grid search), and the search algorithm and scheduler built from a SweepConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auxray.tune.config import ParamSpace, SweepConfig

OPTUNA_DB = "optuna.db"


def optuna_distribution(spec: ParamSpace) -> Any:
    """One Optuna distribution."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if spec.type == "choice":
        return CategoricalDistribution(list(spec.values or []))
    low, high = spec.bounds()
    if spec.type == "int":
        return IntDistribution(int(low), int(high), log=spec.is_log)
    return FloatDistribution(float(low), float(high), log=spec.is_log)


def tune_domain(spec: ParamSpace) -> Any:
    """One Ray Tune domain (integer upper bounds inclusive, as in Optuna)."""
    from ray import tune

    if spec.type == "choice":
        return tune.choice(list(spec.values or []))
    low, high = spec.bounds()
    if spec.type == "int":
        make = tune.lograndint if spec.is_log else tune.randint
        return make(int(low), int(high) + 1)
    return (tune.loguniform if spec.is_log else tune.uniform)(float(low), float(high))


def startup_trials(trials: int) -> int:
    """Random trials before TPE models the results: a third of the budget, between 2 and 10."""
    return min(10, max(2, trials // 3))


def optuna_storage(sweep: SweepConfig) -> Any:
    """The sweep's Optuna study storage: SQLite beside the Tune experiment, so a resumed sweep reloads it."""
    from optuna.storages import RDBStorage

    db = sweep.storage_path / f"{sweep.name}.{OPTUNA_DB}"
    db.parent.mkdir(parents=True, exist_ok=True)
    return RDBStorage(f"sqlite:///{Path(db).resolve()}", engine_kwargs={"connect_args": {"timeout": 30}})


def search_setup(sweep: SweepConfig) -> tuple[Any, dict[str, Any]]:
    """(search_alg, param_space): TPE through OptunaSearch with its own space, random search over Tune
    domains, or every combination of the grid axes once; each limited to `concurrency` trials at a time."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    if sweep.search == "grid":
        grid = {key: tune.grid_search(list(values)) for key, values in sweep.grid.items()}
        return BasicVariantGenerator(max_concurrent=sweep.concurrency), grid
    if sweep.search == "random":
        space = {key: tune_domain(spec) for key, spec in sweep.space.items()}
        return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=sweep.concurrency), space

    from optuna.samplers import TPESampler

    from auxray.tune.durable import DurableConcurrencyLimiter, DurableOptunaSearch

    searcher = DurableOptunaSearch(
        {key: optuna_distribution(spec) for key, spec in sweep.space.items()},
        metric=sweep.metric,
        mode=sweep.mode,
        sampler=TPESampler(seed=sweep.seed, n_startup_trials=startup_trials(sweep.trials)),
        storage=optuna_storage(sweep),
        study_name=sweep.name,
    )
    return DurableConcurrencyLimiter(searcher, max_concurrent=sweep.concurrency), {}


def scheduler_for(sweep: SweepConfig, epochs: int) -> Any:
    """ASHA over epochs (one Tune iteration per epoch), population-based training over the searched keys, or
    FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s = sweep.scheduler
    if s.type == "pbt":
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=s.perturbation_interval,
            hyperparam_mutations={key: tune_domain(spec) for key, spec in sweep.space.items()},
            quantile_fraction=s.quantile_fraction,
            resample_probability=s.resample_probability,
            synch=s.synch,
        )
    if s.type == "none" or epochs <= s.grace_period:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration", max_t=epochs, grace_period=s.grace_period, reduction_factor=s.reduction_factor
    )
