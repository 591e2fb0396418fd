"""`auxray bench sweep-faults`: a sweep run through the real CLI against a real MLflow server, with faults injected,
then checked from MLflow's and Ray Tune's own records (auxray.bench.fault_check): nothing lost or duplicated.

Each scenario gets its own `mlflow server` (SQLite backend, 127.0.0.1, a free port), Tune storage and sweep copy
under the bench's folder, and runs `python -m auxray.cli sweep FILE --tracking-uri URL --json` in its own process
group:

- ``clean``: no fault;
- ``driver_killed``: SIGKILL the driver once a third of the trials finished, then ``auxray sweep FILE --resume``;
- ``server_killed``: SIGKILL the server's process group once a quarter of the trials finished, keep it down for the
  outage, start it again on the same port over the same database and artifacts (trials spool meanwhile).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from auxray.bench.machine import log
from auxray.errors import UserError
from auxray.tune.config import CONFIG_AXIS, SweepConfig, load_sweep

SCENARIOS = ("clean", "driver_killed", "server_killed")
KILL_DRIVER_AT = 1 / 3  # share of the trials finished when the driver is killed
KILL_SERVER_AT = 1 / 4  # ... when the server is killed
OUTAGE_S = 30.0
POLL_S = 1.0
SWEEP_LIMIT_S = 4 * 3600.0  # one driver run; past it the scenario is stopped and reported
RAY_GONE_S = 60.0  # how long a killed driver's Ray processes get to exit by themselves


@dataclass(frozen=True)
class FaultPlan:
    """A checked request: the sweep, its trial count, the scenarios, and the bench's folder (not created yet)."""

    sweep_file: Path
    sweep: SweepConfig
    trials: int
    scenarios: tuple[str, ...]
    root: Path
    outage: float

    @property
    def experiment(self) -> str:
        """The MLflow experiment the sweep's runs go to."""
        return self.sweep.tracking.experiment or self.sweep.base_config().tracking.experiment


def plan_faults(
    sweep_file: str | Path,
    *,
    trials: int | None = None,
    scenarios: str | Sequence[str] = SCENARIOS,
    storage: str | Path | None = None,
    outage: float = OUTAGE_S,
) -> FaultPlan:
    """Check the request before anything starts (UserError on bad input)."""
    path = Path(sweep_file).expanduser()
    if not path.is_file():
        raise UserError(f"sweep file not found: {path}")
    names = tuple(s.strip() for s in scenarios.split(",")) if isinstance(scenarios, str) else tuple(scenarios)
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown or not names:
        raise UserError(f"unknown scenario {', '.join(unknown) or '(none given)'}; choose from {', '.join(SCENARIOS)}")
    if trials is not None and trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    if outage < 0:
        raise UserError(f"--outage must be at least 0 seconds, got {outage}")
    sweep = load_sweep(path)
    if trials is not None and sweep.search == "grid":
        raise UserError("--trials does not apply to a grid sweep (its trials are the grid's combinations)")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(storage or f"runs/bench-sweep-faults/{stamp}").expanduser().resolve()
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} is not empty; give --storage a new folder")
    return FaultPlan(path.resolve(), sweep, trials or sweep.trials, tuple(dict.fromkeys(names)), root, outage)


def scenario_sweep(plan: FaultPlan, folder: Path) -> Path:
    """A copy of the sweep file in `folder`: the same run, with its own Tune storage there, the plan's trial count,
    and its run config paths absolute (they were relative to the original file)."""
    raw = yaml.safe_load(plan.sweep_file.read_text()) or {}
    raw.setdefault("name", plan.sweep_file.stem)
    if raw.get("base") is not None:
        raw["base"] = str(plan.sweep.base_path)
    if CONFIG_AXIS in (raw.get("grid") or {}):
        raw["grid"][CONFIG_AXIS] = [str(plan.sweep.config_path(c)) for c in raw["grid"][CONFIG_AXIS]]
    if plan.sweep.search != "grid":
        raw["trials"] = plan.trials
    raw["storage"] = str(folder / "tune")
    (raw.get("tracking") or {}).pop("uri", None)
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def ray_session_processes(driver_pid: int) -> list[int]:
    """PIDs of the Ray instance a driver started (their command lines name the session ``session_…_<pid>``)."""
    pattern = re.compile(rf"session_[\d_-]+_{driver_pid}\b")
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if pattern.search((proc / "cmdline").read_bytes().decode(errors="replace")):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def trial_errors(storage: Path) -> list[dict[str, str]]:
    """Each error Tune recorded for a trial (its folder's error.txt): the folder and the error's last line."""
    found = []
    for path in sorted(storage.glob("*/*/error.txt")):
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        found.append({"trial": path.parent.name, "error": (lines[-1] if lines else "")[:300]})
    return found


class Scenario:
    """One scenario's server, driver runs and records, all under its own folder."""

    def __init__(self, plan: FaultPlan, name: str) -> None:
        from auxray.bench.mlflow_server import free_port

        self.plan, self.name = plan, name
        self.folder = plan.root / name
        self.folder.mkdir(parents=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.sweep_path = scenario_sweep(plan, self.folder)
        self.server: subprocess.Popen | None = None
        self.driver: subprocess.Popen | None = None
        self.runs = 0
        self.exit_codes: list[int | None] = []
        self.faults: list[str] = []
        self.injected = 0
        self.t0 = time.monotonic()

    def say(self, message: str) -> None:
        log(f"bench sweep-faults: {self.name}: {message}")

    def start_server(self) -> None:
        from auxray.bench.mlflow_server import start_server

        self.server = start_server(
            self.folder / "mlflow.db", self.folder / "mlartifacts", self.port, self.folder / "mlflow.log"
        )

    def kill_server(self) -> None:
        from auxray.bench.mlflow_server import kill_group

        if self.server is not None:
            kill_group(self.server)
            self.server = None

    def start_driver(self, *, resume: bool = False) -> None:
        self.runs += 1
        cmd = [sys.executable, "-m", "auxray.cli", "sweep", str(self.sweep_path), "--tracking-uri", self.uri, "--json"]
        with (
            open(self.folder / f"driver{self.runs}.out", "w") as out,
            open(self.folder / f"driver{self.runs}.err", "w") as err,
        ):
            self.driver = subprocess.Popen(
                cmd + (["--resume"] if resume else []), stdout=out, stderr=err, start_new_session=True
            )

    def finished_trials(self) -> int | None:
        """Child runs FINISHED so far (None while the server does not answer)."""
        from mlflow import MlflowClient

        from auxray.tracking.uri import http_limits

        try:
            with http_limits(5.0):
                client = MlflowClient(tracking_uri=self.uri)
                exp = client.get_experiment_by_name(self.plan.experiment)
                if exp is None:
                    return 0
                query = "tags.`auxray.kind` = 'trial' and attributes.status = 'FINISHED'"
                return len(client.search_runs([exp.experiment_id], query, max_results=5000))
        except Exception:
            return None

    def wait_finished(self, share: float) -> int | None:
        """Poll until `share` of the trials finished (their count), or the driver ended (None)."""
        target = max(1, math.ceil(share * self.plan.trials))
        assert self.driver is not None
        while self.driver.poll() is None:
            done = self.finished_trials()
            if done is not None and done >= target:
                return done
            if time.monotonic() - self.t0 > SWEEP_LIMIT_S:
                return None
            time.sleep(POLL_S)
        return None

    def wait_driver(self) -> dict[str, Any] | None:
        """Wait for the driver; its --json result, or None when it failed (the reason is in faults)."""
        assert self.driver is not None
        try:
            code = self.driver.wait(timeout=max(1.0, SWEEP_LIMIT_S - (time.monotonic() - self.t0)))
        except subprocess.TimeoutExpired:
            self.kill_driver_group()
            code = None
        self.exit_codes.append(code)
        out = (self.folder / f"driver{self.runs}.out").read_text()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if code != 0 or not lines:
            err = [line for line in (self.folder / f"driver{self.runs}.err").read_text().splitlines() if line.strip()]
            self.faults.append(f"driver run {self.runs} exited {code}: {err[-1] if err else 'no output'}")
            return None
        return json.loads(lines[-1])

    def kill_driver(self) -> int:
        """SIGKILL the driver process alone (a crash), let its Ray instance go, then clear its group; returns the
        Ray processes that outlived it by RAY_GONE_S."""
        assert self.driver is not None
        pid = self.driver.pid
        os.kill(pid, signal.SIGKILL)
        self.driver.wait(timeout=60)
        self.exit_codes.append(self.driver.returncode)
        deadline = time.monotonic() + RAY_GONE_S
        while ray_session_processes(pid) and time.monotonic() < deadline:
            time.sleep(1)
        left = len(ray_session_processes(pid))
        self.kill_driver_group()
        return left

    def kill_driver_group(self) -> None:
        if self.driver is not None:
            try:
                os.killpg(self.driver.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.driver.wait(timeout=60)

    def close(self) -> None:
        """Nothing this scenario started outlives it (an ended driver may leave Ray workers in its group)."""
        self.kill_driver_group()
        self.kill_server()


def _run_clean(sc: Scenario) -> dict[str, Any] | None:
    sc.start_driver()
    return sc.wait_driver()


def _start_until(sc: Scenario, fraction: float) -> int | None:
    """Start the driver and wait until `fraction` of the trials finished: how many did, or None (noted in the
    scenario's faults) when the sweep ended first."""
    sc.start_driver()
    done = sc.wait_finished(fraction)
    if done is None:
        sc.faults.append("the driver ended before the kill point: no fault injected")
    return done


def _run_driver_killed(sc: Scenario) -> dict[str, Any] | None:
    done = _start_until(sc, KILL_DRIVER_AT)
    if done is None:
        return sc.wait_driver()
    left = sc.kill_driver()
    sc.injected += 1
    fault = f"driver SIGKILLed at {done}/{sc.plan.trials} trials finished ({time.monotonic() - sc.t0:.0f}s)"
    sc.faults.append(fault + (f"; {left} Ray processes outlived it by {RAY_GONE_S:.0f}s" if left else ""))
    sc.say(sc.faults[-1] + "; resuming")
    sc.start_driver(resume=True)
    return sc.wait_driver()


def _run_server_killed(sc: Scenario) -> dict[str, Any] | None:
    done = _start_until(sc, KILL_SERVER_AT)
    if done is None:
        return sc.wait_driver()
    sc.kill_server()
    sc.injected += 1
    at = time.monotonic() - sc.t0
    sc.say(f"server SIGKILLed at {done}/{sc.plan.trials} trials finished ({at:.0f}s); down {sc.plan.outage:.0f}s")
    time.sleep(sc.plan.outage)
    ended = sc.driver is not None and sc.driver.poll() is not None
    sc.start_server()
    sc.faults.append(
        f"server SIGKILLed at {done}/{sc.plan.trials} trials finished ({at:.0f}s), restarted "
        f"{time.monotonic() - sc.t0 - at:.0f}s later" + ("; the sweep had ended meanwhile" if ended else "")
    )
    return sc.wait_driver()


RUNNERS = {"clean": _run_clean, "driver_killed": _run_driver_killed, "server_killed": _run_server_killed}


def run_scenario(plan: FaultPlan, name: str) -> dict[str, Any]:
    """One scenario from a fresh server to its checked row."""
    from auxray.bench.fault_check import check_sweep, read_runs, trial_outcomes

    sc = Scenario(plan, name)
    try:
        sc.start_server()
        sc.say(f"server {sc.uri}; sweep of {plan.trials} trials in {sc.folder}")
        result = RUNNERS[name](sc)
        seconds = time.monotonic() - sc.t0
        if sc.server is None:
            sc.start_server()
        parents, children = read_runs(sc.uri, plan.experiment, plan.sweep.name)
    finally:
        sc.close()
    trials = trial_outcomes(result) if result else []
    check = check_sweep(parents, children, trials, plan.sweep.epochs)
    row: dict[str, Any] = {
        "scenario": name,
        "trials": result["trials"] if result else None,
        "faults_injected": sc.injected,
        "completed": result["completed"] if result else None,
        "stopped_early": result["stopped_early"] if result else None,
        "errored": result["errored"] if result else None,
        **check.row(),
        "seconds": round(seconds, 1),
        "faults": sc.faults,
        "exit_codes": sc.exit_codes,
        "stale_runs_failed": result.get("stale_runs_failed") if result else None,
        "orphaned_runs_tagged": result.get("orphaned_runs") if result else None,
        "spools_replayed": result.get("spools_replayed") if result else None,
        "trial_errors": trial_errors(sc.folder / "tune"),
        "folder": str(sc.folder),
    }
    if result is None:
        row["runs_lost"] = None  # without Tune's result there is nothing to count against
    sc.say(json.dumps({k: row[k] for k in ROW_KEYS}))
    return row


ROW_KEYS = (
    "scenario",
    "trials",
    "faults_injected",
    "completed",
    "stopped_early",
    "errored",
    "child_runs",
    "finished",
    "running_left",
    "duplicated",
    "missing_metrics",
    "runs_lost",
    "parent_summary_ok",
    "seconds",
)


def run_sweep_faults(plan: FaultPlan) -> dict[str, Any]:
    """Every scenario of the plan, one after the other; the JSON record."""
    from auxray.bench.machine import machine_info

    plan.root.mkdir(parents=True, exist_ok=True)
    rows = [run_scenario(plan, name) for name in plan.scenarios]
    return {
        "sweep": str(plan.sweep_file),
        "sweep_name": plan.sweep.name,
        "trials": plan.trials,
        "epochs": plan.sweep.epochs,
        "concurrency": plan.sweep.concurrency,
        "search": plan.sweep.search,
        "scheduler": plan.sweep.scheduler.type,
        "kill_driver_at": round(KILL_DRIVER_AT, 4),
        "kill_server_at": KILL_SERVER_AT,
        "outage_seconds": plan.outage,
        "storage": str(plan.root),
        "scenarios": rows,
        "all_ok": all(
            r["runs_lost"] == 0 and r["duplicated"] == 0 and r["running_left"] == 0 and r["parent_summary_ok"]
            for r in rows
        ),
        "machine": machine_info(None),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def bench_sweep_faults_command(
    sweep_file: str,
    *,
    trials: int | None,
    scenarios: str,
    storage: str | None,
    outage: float,
    out: str | None,
) -> int:
    """`auxray bench sweep-faults`: check the request, run the scenarios, print the JSON (and write it to `out`)."""
    from auxray.jsonout import print_json

    plan = plan_faults(sweep_file, trials=trials, scenarios=scenarios, storage=storage, outage=outage)
    print_json(run_sweep_faults(plan), out)
    return 0
