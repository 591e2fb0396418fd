"""What a sweep left in MLflow, checked against what Ray Tune says its trials did: child runs per trial (none
duplicated, none left RUNNING), every finished trial's metrics there, the parent's summary right.

The check is a pure function of plain records (`check_sweep`); `read_runs` fills them from an MLflow store."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from auxray.tracking.tracker import KIND_TAG, PARENT_TAG, SWEEP_TAG
from auxray.tune.runs import TRIAL_TAG

ORPHANED_TAG = "auxray.orphaned"
TOLERANCE = 1e-9


@dataclass(frozen=True)
class ChildRun:
    """One trial's child run as MLflow holds it."""

    run_id: str
    trial_id: str | None
    status: str  # FINISHED, RUNNING, FAILED, KILLED
    val_steps: tuple[int, ...] = ()  # epochs with a logged val_accuracy
    best_val: float | None = None  # the highest logged val_accuracy
    test_accuracy: float | None = None
    orphaned: bool = False  # a trial the resumed experiment did not know (auxray.tune.runs.tag_orphans)


@dataclass(frozen=True)
class ParentRun:
    """A sweep's parent run and the summary it logged."""

    run_id: str
    status: str
    best_val_accuracy: float | None = None
    best_trial: str | None = None


@dataclass(frozen=True)
class TrialOutcome:
    """One Tune trial, from the sweep's result: epochs it ran, whether it errored."""

    trial_id: str
    epochs: int
    error: bool = False


@dataclass
class SweepCheck:
    """The counts of one scenario's row (see check_sweep)."""

    child_runs: int
    finished: int
    running_left: int
    statuses: dict[str, int]
    duplicated: int
    missing_metrics: int
    runs_lost: int
    orphaned: int
    parent_summary_ok: bool
    problems: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The counts as a JSON-ready mapping."""
        return dict(vars(self))


def metrics_complete(run: ChildRun, trial: TrialOutcome, epochs: int) -> bool:
    """The run has val_accuracy at every epoch the trial ran and, for a trial that ran every epoch, test_accuracy."""
    if set(range(1, trial.epochs + 1)) - set(run.val_steps):
        return False
    return trial.epochs < epochs or run.test_accuracy is not None


def check_sweep(
    parents: list[ParentRun], children: list[ChildRun], trials: list[TrialOutcome], epochs: int
) -> SweepCheck:
    """Compare the MLflow runs of a sweep with Tune's trials (`epochs`: a full trial's epochs).

    - duplicated: child runs beyond the first of any one Tune trial id;
    - running_left: child runs still RUNNING;
    - missing_metrics: FINISHED runs of a Tune trial lacking what that trial logged (val_accuracy per epoch it
      ran, test_accuracy when it ran every epoch);
    - runs_lost: Tune trials that did not error and have no FINISHED child run with complete metrics;
    - orphaned: runs of trials Tune does not know (a killed driver's last trials, replaced on resume);
    - parent_summary_ok: one FINISHED parent whose best val accuracy is the highest over the finished children
      of trials that ran every epoch, and whose best trial is one reaching it."""
    problems: list[str] = []
    by_id = {t.trial_id: t for t in trials}
    per_trial = Counter(r.trial_id for r in children if r.trial_id is not None)
    duplicated = sum(n - 1 for n in per_trial.values() if n > 1)
    problems += [f"trial {tid} has {n} child runs" for tid, n in sorted(per_trial.items()) if n > 1]
    missing = 0
    good: set[str] = set()
    for run in children:
        trial = by_id.get(run.trial_id or "")
        if run.status != "FINISHED" or trial is None:
            continue
        if metrics_complete(run, trial, epochs):
            good.add(trial.trial_id)
        else:
            missing += 1
            problems.append(f"run {run.run_id} of trial {trial.trial_id} lacks metrics (val steps {run.val_steps})")
    lost = sorted(t.trial_id for t in trials if not t.error and t.trial_id not in good)
    problems += [f"trial {tid} has no finished child run with its metrics" for tid in lost]
    statuses = Counter(r.status for r in children)
    problems += [f"run {r.run_id} of trial {r.trial_id} left RUNNING" for r in children if r.status == "RUNNING"]
    summary_ok = _parent_ok(parents, children, by_id, epochs, problems)
    return SweepCheck(
        child_runs=len(children),
        finished=statuses.get("FINISHED", 0),
        running_left=statuses.get("RUNNING", 0),
        statuses=dict(sorted(statuses.items())),
        duplicated=duplicated,
        missing_metrics=missing,
        runs_lost=len(lost),
        orphaned=sum(r.orphaned or (r.trial_id or "") not in by_id for r in children),
        parent_summary_ok=summary_ok,
        problems=problems,
    )


def _parent_ok(
    parents: list[ParentRun],
    children: list[ChildRun],
    trials: dict[str, TrialOutcome],
    epochs: int,
    problems: list[str],
) -> bool:
    """Whether the one parent ended FINISHED with the best full trial's val accuracy and id (problems appended)."""
    if len(parents) != 1:
        problems.append(f"{len(parents)} parent runs")
        return False
    parent = parents[0]
    full = {
        r.trial_id: r.best_val
        for r in children
        if r.status == "FINISHED"
        and r.best_val is not None
        and r.trial_id in trials
        and trials[r.trial_id].epochs >= epochs
    }
    if parent.status != "FINISHED":
        problems.append(f"parent run {parent.run_id} is {parent.status}")
        return False
    if not full or parent.best_val_accuracy is None:
        problems.append("no finished full trial or no best_val_accuracy on the parent")
        return False
    best = max(full.values())
    if abs(parent.best_val_accuracy - best) > TOLERANCE:
        problems.append(f"parent best_val_accuracy {parent.best_val_accuracy} but the best full trial has {best}")
        return False
    best_trial_val = full.get(parent.best_trial or "")
    if best_trial_val is None or abs(best_trial_val - best) > TOLERANCE:
        problems.append(f"parent's best trial {parent.best_trial} is not one with the best val accuracy {best}")
        return False
    return True


def read_runs(uri: str, experiment: str, sweep_name: str) -> tuple[list[ParentRun], list[ChildRun]]:
    """The parent runs of sweep `sweep_name` and their child runs in `experiment`, with each child's val_accuracy
    history."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get(KIND_TAG) == "sweep" and r.data.tags.get(SWEEP_TAG) == sweep_name]
    parent_ids = {p.info.run_id for p in parents}
    children = []
    for r in runs:
        if r.data.tags.get(PARENT_TAG) not in parent_ids:
            continue
        history = client.get_metric_history(r.info.run_id, "val_accuracy")
        children.append(
            ChildRun(
                run_id=r.info.run_id,
                trial_id=r.data.tags.get(TRIAL_TAG),
                status=r.info.status,
                val_steps=tuple(sorted({m.step for m in history})),
                best_val=max((m.value for m in history), default=None),
                test_accuracy=r.data.metrics.get("test_accuracy"),
                orphaned=ORPHANED_TAG in r.data.tags,
            )
        )
    return [
        ParentRun(
            run_id=p.info.run_id,
            status=p.info.status,
            best_val_accuracy=p.data.metrics.get("best_val_accuracy"),
            best_trial=p.data.tags.get("auxray.best_trial"),
        )
        for p in parents
    ], children


def trial_outcomes(result: dict[str, Any]) -> list[TrialOutcome]:
    """Tune's trials from a sweep's --json result (its per_trial rows)."""
    return [
        TrialOutcome(trial_id=str(t["trial_id"]), epochs=int(t["epochs"]), error=bool(t["error"]))
        for t in result.get("per_trial", [])
    ]
