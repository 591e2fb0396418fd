"""Surviving `kill -9` of the sweep driver.

Tune copies its experiment state (trial table, searcher pickle) from a staging folder to the experiment
folder without an atomic rename, so a driver killed mid-copy can leave a truncated file, and Tuner.restore
then silently restarts the whole experiment. Two defences:

* ``backup_state`` keeps a last-known-good copy of every state file (each validated, then renamed into
  place), and ``repair_state`` puts those copies back over truncated files before a restore;
* ``reconcile_search_state`` makes the search generator's state agree with the trial table it is restored
  with (the two files can come from different snapshots): its trial counter becomes the number of trials
  Tune knows, and the concurrency limiter's live set those still unfinished;
* ``DurableConcurrencyLimiter`` drops trials Tune has already finished from its live set (a restored
  limiter can hold a finished trial as live and then never suggest again);
* ``DurableOptunaSearch`` tags each Optuna trial with its Tune trial id and, when its pickle is unreadable
  or stale, rebuilds its trial map from the Optuna study in SQLite (transactional, so never torn).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)
TRIAL_ATTR = "tune_trial_id"
STATE_PREFIXES = ("experiment_state-", "searcher-state-", "search_gen_state-", "basic-variant-state-")


def _state_files(exp_dir: Path) -> list[Path]:
    return (
        [p for p in exp_dir.iterdir() if p.is_file() and p.name.startswith(STATE_PREFIXES)] if exp_dir.is_dir() else []
    )


def _readable(path: Path) -> bool:
    """Whether a state file parses completely (JSON, or a pickle: Tune names some pickles ``.json``)."""
    data = path.read_bytes()
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        pickle.loads(data)
        return True
    except Exception:
        return False


_FINISHED: set[str] = set()


def note_finished(trial_ids: set[str]) -> None:
    """Publish the ids of trials Tune has finished (the driver's callback calls this every step)."""
    _FINISHED.clear()
    _FINISHED.update(trial_ids)


class DurableConcurrencyLimiter(ConcurrencyLimiter):
    """ConcurrencyLimiter that never counts a finished trial as live."""

    def suggest(self, trial_id: str) -> dict | None:
        if not self.batch:
            done = set(getattr(self.searcher, "_completed_trials", ())) | _FINISHED
            for stale in self.live_trials & done:
                self.searcher.on_trial_complete(stale)
                self.live_trials.discard(stale)
                self.num_unfinished_live_trials -= 1
        return super().suggest(trial_id)


def backup_state(exp_dir: Path, backup_dir: Path) -> None:
    """Copy every complete state file of the experiment to `backup_dir` (atomically, newest wins)."""
    backup_dir.mkdir(parents=True, exist_ok=True)
    for path in _state_files(exp_dir):
        target = backup_dir / path.name
        if target.is_file() and target.stat().st_mtime >= path.stat().st_mtime:
            continue
        tmp = backup_dir / f".{path.name}.tmp"
        shutil.copy2(path, tmp)
        if _readable(tmp):
            os.replace(tmp, target)
        else:
            tmp.unlink(missing_ok=True)


def repair_state(exp_dir: Path, backup_dir: Path) -> list[str]:
    """Replace truncated or unreadable state files with their backups; returns the names replaced."""
    repaired = []
    for path in _state_files(exp_dir):
        backup = backup_dir / path.name
        if not _readable(path) and backup.is_file():
            shutil.copy2(backup, path)
            repaired.append(path.name)
    return repaired


UNFINISHED = ("PENDING", "RUNNING", "PAUSED")


def _newest(exp_dir: Path, prefix: str) -> Path | None:
    files = sorted(p for p in exp_dir.glob(f"{prefix}*.json") if p.is_file())
    return files[-1] if files else None


def reconcile_search_state(exp_dir: Path) -> bool:
    """Align the newest search-generator state with the newest trial table; True when it changed."""
    table, gen = _newest(exp_dir, "experiment_state-"), _newest(exp_dir, "search_gen_state-")
    if table is None or gen is None or not _readable(table) or not _readable(gen):
        return False
    trials = [json.loads(row[0]) for row in json.loads(table.read_text())["trial_data"]]
    unfinished = {t["trial_id"] for t in trials if t.get("status") in UNFINISHED}
    with open(gen, "rb") as f:
        state = pickle.load(f)
    before = (
        repr(state.get("counter")),
        {k: repr(v.get("live_trials")) for k, v in state.items() if k.startswith("name:") and isinstance(v, dict)},
    )
    state["counter"] = len(trials)
    for key, value in state.items():
        if key.startswith("name:") and isinstance(value, dict) and "live_trials" in value:
            value["live_trials"] = set(unfinished)
            value["num_unfinished_live_trials"] = len(unfinished)
            value["cached_results"] = {}
    after = (
        repr(state.get("counter")),
        {k: repr(v.get("live_trials")) for k, v in state.items() if k.startswith("name:") and isinstance(v, dict)},
    )
    if before == after:
        return False
    tmp = gen.with_name(f".{gen.name}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(state, f)
    os.replace(tmp, gen)
    return True


class DurableOptunaSearch(OptunaSearch):
    """OptunaSearch whose trial map can always be rebuilt from its (SQLite) Optuna study."""

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and ot_trial.user_attrs.get(TRIAL_ATTR) != trial_id:
            ot_trial.set_user_attr(TRIAL_ATTR, trial_id)
        return params

    def restore(self, checkpoint_path: str) -> None:
        try:
            super().restore(checkpoint_path)
        except Exception as exc:
            logger.warning(
                "searcher state %s unreadable (%s); rebuilding it from the Optuna study",
                checkpoint_path,
                type(exc).__name__,
            )
            # Ray annotates `mode` as non-optional, yet its own set_search_properties passes this Optional _mode
            self._setup_study(self._mode)  # type: ignore[arg-type]
        self._sync_from_storage()

    def _sync_from_storage(self) -> None:
        """Map every Optuna trial tagged with a Tune trial id (the pickle may predate some), and mark those
        the study already finished, so a restored trial that re-reports cannot update them."""
        import optuna

        if self._ot_study is None or self._storage is None:
            return
        for frozen in self._ot_study.get_trials(deepcopy=False):
            trial_id = frozen.user_attrs.get(TRIAL_ATTR)
            if not trial_id:
                continue
            if trial_id not in self._ot_trials:
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, frozen._trial_id)
            if frozen.state.is_finished():
                self._completed_trials.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id not in self._ot_trials or trial_id in self._completed_trials:
            return
        try:
            super().on_trial_result(trial_id, result)
        except Exception as exc:
            logger.warning("Optuna could not record a result of trial %s: %s", trial_id, exc)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._ot_trials:
            super().on_trial_complete(trial_id, result, error)
