"""The Ray layer: data-parallel hypergradients equal the single-process ones, a 2-worker CIFAR run
trains and reports, and a run survives the death of a worker or of the coordinator."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from auxray.cli import run as cli_run
from auxray.config import RunConfig, config_from_dict
from auxray.data import build_data
from auxray.train.checkpoint import LATEST, load_checkpoint
from auxray.train.hypergradient import build_hypergradient
from auxray.train.hyperstep import compute_hypergrad
from auxray.train.loop import BilevelTrainer
from auxray.train.run_plan import RunPlan
from tests.conftest import REPO, tiny_cifar_raw
from tests.test_train import synthetic_raw

pytestmark = pytest.mark.cluster
PER_WORKER = 16


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from auxray.train.ray_cluster import ensure_ray

    ensure_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def user_env() -> dict[str, str]:
    """The environment of a user who never heard of Ray's settings: no auth mode, no uv-run switch, no cluster."""
    unset = ("RAY_AUTH_MODE", "RAY_ENABLE_UV_RUN_RUNTIME_ENV", "RAY_ADDRESS")
    return {k: v for k, v in os.environ.items() if k not in unset}


def untimed(history: list[dict]) -> list[dict]:
    """A history without timings, nor the traffic this process sent (a resumed process counts from its start)."""
    skip = ("epoch_seconds", "steps_per_second", "outer_step_seconds", "allreduce_bytes")
    return [{k: v for k, v in h.items() if k not in skip} for h in history]


def test_two_worker_cli_runs_as_a_user_runs_them_record_and_resume(ray_local, cifar_zip, tmp_path, capsys, monkeypatch):
    """`auxray train --workers 2` with tracking on in the default store ./mlflow.db: the summary has a
    single-process run's keys and its MLflow run the same artifacts and metric keys, logged per epoch. Run as a
    user runs it (`uv run` in a user's environment: no RAY_AUTH_MODE, Ray's uv-run hook not switched off), killed
    (SIGKILL to the driver's process group) mid-training and resumed with --resume, it ends with the uninterrupted
    run's weights and history, in the same MLflow run, every epoch logged once. The uninterrupted references run
    through the same CLI entry in this process, the 2-worker one on the module's Ray instance (one Ray start fewer:
    the user's path is the killed and resumed runs')."""
    from mlflow import MlflowClient

    from tests.test_sweep import ray_session_processes

    cfg = tiny_distributed_cfg(cifar_zip, tmp_path, epochs=3)
    cfg.tracking.enabled, cfg.tracking.experiment = True, "dist"
    path = tmp_path / "dist.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    work = tmp_path / "work"
    work.mkdir()

    def cmd(workers: str, folder: str, *extra: str) -> list[str]:
        return [
            "uv",
            "run",
            "--frozen",
            "--project",
            str(REPO),
            "auxray",
            "train",
            str(path),
            "--workers",
            workers,
            "--json",
            "--no-progress",
            "--set",
            f"trainer.checkpoint_dir={tmp_path / folder}",
            *extra,
        ]

    def train(*args: str) -> dict:
        proc = subprocess.run(cmd(*args), cwd=work, capture_output=True, text=True, timeout=900, env=user_env())
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def train_here(*args: str) -> dict:
        capsys.readouterr()
        assert cli_run(cmd(*args)[6:]) == 0, capsys.readouterr().err[-3000:]
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    monkeypatch.chdir(work)
    dist, single = train_here("2", "dist"), train_here("1", "single")
    assert dist["workers"] == 2 and dist["allreduce_bytes"] > 0 and dist["resumed_from"] == []
    assert [h["epoch"] for h in dist["history"]] == [1, 2, 3]
    assert set(single) - {"history"} <= set(dist), "a distributed summary misses keys a single-process one has"
    assert {"test_accuracy", "final_test_accuracy", "best_val_accuracy", "run_dir", "mlflow_run_id"} <= set(dist)
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")

    def record(result):
        run = client.get_run(result["mlflow_run_id"])
        artifacts = set()
        for f in client.list_artifacts(run.info.run_id):
            artifacts |= {g.path for g in client.list_artifacts(run.info.run_id, f.path)} if f.is_dir else {f.path}
        return run, artifacts

    (run_1, art_1), (run_2, art_2) = record(single), record(dist)
    assert run_1.info.status == run_2.info.status == "FINISHED"
    assert (
        art_1 == art_2
        and {
            "checkpoints/best.pt",
            "metrics.jsonl",
            "config.yaml",
            "plots/task_weights.png",
            "plots/hypergrad_norms.png",
        }
        <= art_2
    )
    traffic = {"allreduce_bytes", "phi_bytes_sent", "outer_step_allreduce_bytes"}
    assert set(run_1.data.metrics) - traffic == set(run_2.data.metrics) - traffic
    assert [m.step for m in client.get_metric_history(run_2.info.run_id, "val_accuracy")] == [1, 2, 3]
    assert run_2.data.metrics["test_accuracy"] == pytest.approx(dist["test_accuracy"])

    killed = tmp_path / "killed"
    driver = subprocess.Popen(
        cmd("2", "killed"),
        cwd=work,
        env=user_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    # Kill once Ray Train has registered a checkpoint (its snapshot lists it), not when its folder appears: Ray
    # restores only from registered checkpoints, and registers one when it next polls the workers.
    while not registered(killed) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    # uv runs the driver as its child; the local Ray instance is named after the driver's pid.
    drivers = [int(pid) for pid in Path(f"/proc/{driver.pid}/task/{driver.pid}/children").read_text().split()]
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    deadline = time.monotonic() + 60
    while any(ray_session_processes(pid) for pid in drivers) and time.monotonic() < deadline:
        time.sleep(1)
    # Read once Ray's processes are gone: a worker may persist the checkpoint it was writing as the driver died.
    at_kill = max(registered(killed))
    assert driver.returncode == -signal.SIGKILL and at_kill < 3, "the run ended before it was killed"

    resumed = train("2", "killed", "--resume")
    # Restored once, from the checkpoint registered at the kill or a later one whose report was in flight then
    # (Ray registers a report when it next polls the workers); a run that started afresh would say [].
    (restored,) = resumed["resumed_from"]
    assert at_kill <= restored < 3 and untimed(resumed["history"]) == untimed(dist["history"])
    for key in ("test_accuracy", "final_test_accuracy", "best_val_accuracy", "steps"):
        assert resumed[key] == dist[key], key
    ends = [load_checkpoint(Path(r["checkpoint"]) / LATEST) for r in (resumed, dist)]
    for key in ("model", "auxnet"):
        for name, tensor in ends[0][key].items():
            assert torch.equal(tensor, ends[1][key][name]), (key, name)
    logged = client.get_metric_history(resumed["mlflow_run_id"], "val_accuracy")
    assert [(m.step, m.value) for m in logged] == [(h["epoch"], h["val_accuracy"]) for h in dist["history"]]
    run_3, art_3 = record(resumed)
    assert run_3.info.status == "FINISHED" and art_3 == art_2
    assert set(run_3.data.metrics) - traffic == set(run_2.data.metrics) - traffic
    assert len(client.search_runs([run_2.info.experiment_id])) == 3


def fixed_batches(trainer: BilevelTrainer, start: int, size: int):
    """Deterministic train and outer batches: rows [start, start+size) of each split."""

    def rows(data):
        return trainer.prepare(data.x[start : start + size], data.y[start : start + size], None)

    return rows(trainer.data.train), rows(trainer.data.outer)


def _equivalence_worker(config: dict) -> None:
    """Ray Train worker: one outer step on this rank's rows, all-reduced, written to disk."""
    import ray.train

    from auxray.train.ray_collective import TorchDistributedCollective

    out = {}
    for dtype in ("float64", "float32"):
        cfg = RunConfig.model_validate(config["cfg"])
        cfg.trainer.dtype = dtype
        collective = TorchDistributedCollective(torch.device("cpu"))
        trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), collective=collective, progress=False)
        batch, aux = fixed_batches(trainer, collective.rank * PER_WORKER, PER_WORKER)
        for mode in ("global", "local"):
            cfg.hypergrad.mode = mode
            hg = build_hypergradient(cfg.hypergrad)  # built after the mode is set: it decides the HVP's all-reduce
            grads = compute_hypergrad(
                trainer.objective,
                trainer.model,
                trainer.auxnet,
                batch,
                aux,
                hg,
                inner_lr=cfg.trainer.lr,
                reduce=collective.all_reduce_mean,
            )
            out[f"{dtype}/{mode}"] = [g.detach().cpu() for g in grads]
    torch.save(out, Path(config["out"]) / f"rank{collective.rank}.pt")
    ray.train.report({"done": 1})


def relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    fa = torch.cat([t.reshape(-1).double() for t in a])
    fb = torch.cat([t.reshape(-1).double() for t in b])
    return float((fa - fb).norm() / fb.norm())


def test_two_worker_outer_step_equals_single_process(ray_local, tmp_path):
    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    raw = synthetic_raw(
        hypergrad={"method": "neumann", "steps": 5, "alpha": 0.01}, trainer={"dtype": "float64", "threads": 1}
    )
    TorchTrainer(
        _equivalence_worker,
        train_loop_config={"cfg": raw, "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=TrainRunConfig(name="equivalence", storage_path=str(tmp_path / "ray")),
    ).fit()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for dtype, tol in (("float64", 1e-5), ("float32", 1e-3)):
        cfg = config_from_dict(raw)
        cfg.trainer.dtype = dtype
        single = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
        batch, aux = fixed_batches(single, 0, 2 * PER_WORKER)
        expected = compute_hypergrad(
            single.objective, single.model, single.auxnet, batch, aux, single.hypergradient, inner_lr=cfg.trainer.lr
        )
        got = ranks[0][f"{dtype}/global"]
        assert relative_difference(got, list(expected)) < tol, dtype
        assert relative_difference(ranks[1][f"{dtype}/global"], got) == 0.0  # every worker holds the same result
    # "local" mode skips the all-reduce inside the Neumann series: it is a different (biased) estimate.
    assert relative_difference(ranks[0]["float64/local"], ranks[0]["float64/global"]) > 1e-9


def registered(run_folder: Path) -> list[int]:
    """The epochs of the checkpoints Ray Train has registered for a run (from its checkpoint manager snapshot)."""
    snapshots = list(run_folder.glob("ray/*/checkpoint_manager_snapshot.json"))
    text = "".join(p.read_text(errors="replace") for p in snapshots)
    return sorted({int(n) for n in re.findall(r"epoch_(\d{5})", text)})


def tiny_distributed_cfg(cifar_zip: Path, tmp_path: Path, epochs: int = 3) -> RunConfig:
    raw = tiny_cifar_raw(cifar_zip, tmp_path, name="auxilearn_combine", aux_task="rotation")
    raw["trainer"].update(epochs=epochs, threads=1)
    raw["scaling"] = {"workers": 2, "max_failures": 2}
    return config_from_dict(raw)


def assert_consistent_finish(result: dict, epochs: int, every: int) -> dict:
    """The run trained every epoch once and W and phi end as one consistent pair; returns the final state."""
    assert [h["epoch"] for h in result["history"]] == list(range(1, epochs + 1))
    state = load_checkpoint(Path(result["checkpoint"]) / LATEST)
    assert state["epoch"] == epochs and state["step"] == result["steps"]
    # The aux net in the checkpoint is the coordinator's phi, and the coordinator applied each outer step once:
    # one optimizer version per outer step the workers took, the last at the last step divisible by `every`.
    phi_params = [v for k, v in state["auxnet"].items()]
    assert len(phi_params) == len(state["phi"]["phi"]) > 0
    for a, b in zip(phi_params, state["phi"]["phi"], strict=True):
        assert torch.equal(a, b)
    outer_steps = [step for step, _ in state["hypergrad_norms"]]
    assert outer_steps == list(range(every, state["step"] + 1, every))
    assert state["phi"]["optimizer"]["version"] == len(outer_steps)
    assert state["phi"]["optimizer"]["last_step"] == outer_steps[-1]
    return state


def test_run_recovers_from_a_dead_worker_and_a_dead_coordinator(ray_local, cifar_zip, tmp_path):
    """Both faults in one run (bounded retries): a worker process dies after epoch 1, the coordinator actor after
    epoch 2; the run restarts from its checkpoints each time and finishes with W and phi consistent."""
    from auxray.train.ray_run import run_distributed

    cfg = tiny_distributed_cfg(cifar_zip, tmp_path)
    markers = {target: tmp_path / f"{target}-fault-fired" for target in ("worker", "coordinator")}
    faults = [
        {"target": "worker", "after_epoch": 1, "rank": 1, "marker": str(markers["worker"])},
        {"target": "coordinator", "after_epoch": 2, "rank": 0, "marker": str(markers["coordinator"])},
    ]
    result = run_distributed(RunPlan(cfg, "faults", Path(cfg.trainer.checkpoint_dir), "faults/0"), faults=faults)
    assert {t: m.read_text() for t, m in markers.items()} == {"worker": "fired", "coordinator": "fired"}
    # Restored twice, from the checkpoints of epochs 1 and 2 (a run that started afresh would say []).
    assert result["resumed_from"] == [1, 2]
    assert_consistent_finish(result, 3, cfg.hypergrad.every)


def test_retries_exhausted_is_one_line(ray_local, cifar_zip, tmp_path):
    """A run whose worker dies with no retries left (scaling.max_failures: 0) ends with one UserError line that
    names the run and the retry budget, not Ray's traceback."""
    from auxray.errors import UserError
    from auxray.train.ray_run import run_distributed

    cfg = tiny_distributed_cfg(cifar_zip, tmp_path, epochs=2)
    cfg.scaling.max_failures = 0
    fault = {"target": "worker", "after_epoch": 1, "rank": 1, "marker": str(tmp_path / "fired")}
    with pytest.raises(UserError, match=r"\Adistributed run doomed-0 failed after 0 retries: [^\n]*\Z"):
        run_distributed(RunPlan(cfg, "doomed", Path(cfg.trainer.checkpoint_dir), "doomed/0"), faults=[fault])


@pytest.mark.parametrize(("gpus_per_worker", "backend"), [(0, "gloo"), (0.5, "gloo"), (1, "nccl"), (2, "nccl")])
def test_workers_sharing_a_gpu_all_reduce_with_gloo(gpus_per_worker, backend):
    """NCCL takes one rank per device, so workers with fractional GPUs (several on one device) and CPU workers use
    gloo; workers with whole GPUs use NCCL (tests/test_gpu.py runs two workers on one GPU where there is one)."""
    from auxray.train.ray_run import collective_backend

    assert collective_backend(gpus_per_worker) == backend
