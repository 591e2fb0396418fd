"""The Ray layer: data-parallel hypergradients equal the single-process ones, a 2-worker CIFAR run
trains and reports, and a run survives the death of a worker or of the coordinator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from auxray.config import RunConfig, config_from_dict
from auxray.data import build_data
from auxray.train.checkpoint import LATEST, load_checkpoint
from auxray.train.hyperstep import compute_hypergrad
from auxray.train.loop import BilevelTrainer
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


def test_two_worker_cli_run_records_in_mlflow_what_a_single_process_run_records(cifar_zip, tmp_path):
    """`auxray train --workers 2` with tracking on (the default user path): the summary has the same keys as a
    single-process run's, and its MLflow run the same artifacts and (besides traffic counters) the same metric
    keys, logged per epoch."""
    from mlflow import MlflowClient

    cfg = tiny_distributed_cfg(cifar_zip, tmp_path, epochs=2)
    cfg.tracking.enabled = True
    path = tmp_path / "dist.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    results = {}
    for workers in ("1", "2"):
        proc = subprocess.run([sys.executable, "-m", "auxray.cli", "train", str(path), "--workers", workers, "--json",
                               "--tracking-uri", uri, "--no-progress"],
                              cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[workers] = json.loads(proc.stdout.strip().splitlines()[-1])
    single, dist = results["1"], results["2"]
    assert dist["workers"] == 2 and dist["allreduce_bytes"] > 0
    assert [h["epoch"] for h in dist["history"]] == [1, 2]
    assert set(single) - {"history"} <= set(dist), "a distributed summary misses keys a single-process one has"
    assert {"test_accuracy", "final_test_accuracy", "best_val_accuracy", "run_dir", "mlflow_run_id"} <= set(dist)
    client = MlflowClient(tracking_uri=uri)

    def record(result):
        run = client.get_run(result["mlflow_run_id"])
        artifacts = set()
        for f in client.list_artifacts(run.info.run_id):
            artifacts |= {g.path for g in client.list_artifacts(run.info.run_id, f.path)} if f.is_dir else {f.path}
        return run, artifacts

    (run_1, art_1), (run_2, art_2) = record(single), record(dist)
    assert run_1.info.status == run_2.info.status == "FINISHED"
    assert art_1 == art_2 and {"checkpoints/best.pt", "metrics.jsonl", "config.yaml",
                               "plots/task_weights.png", "plots/hypergrad_norms.png"} <= art_2
    traffic = {"allreduce_bytes", "phi_bytes_sent", "outer_step_allreduce_bytes"}
    assert set(run_1.data.metrics) - traffic == set(run_2.data.metrics) - traffic
    assert [m.step for m in client.get_metric_history(run_2.info.run_id, "val_accuracy")] == [1, 2]
    assert run_2.data.metrics["test_accuracy"] == pytest.approx(dist["test_accuracy"])


def fixed_batches(trainer: BilevelTrainer, start: int, size: int):
    """Deterministic train and aux batches: rows [start, start+size) of each split."""
    def rows(data):
        return trainer.prepare(data.x[start:start + size], data.y[start:start + size], None)

    return rows(trainer.data.train), rows(trainer.data.aux)


def _equivalence_worker(config: dict) -> None:
    """Ray Train worker: one outer step on this rank's rows, all-reduced, written to disk."""
    import ray.train

    from auxray.train.ray_collective import TorchDistributedCollective

    out = {}
    for dtype in ("float64", "float32"):
        cfg = RunConfig.model_validate(config["cfg"])
        cfg.trainer.dtype = dtype
        collective = TorchDistributedCollective(torch.device("cpu"))
        trainer = BilevelTrainer(cfg, build_data(cfg.data), collective=collective, progress=False)
        batch, aux = fixed_batches(trainer, collective.rank * PER_WORKER, PER_WORKER)
        for mode in ("global", "local"):
            cfg.hypergrad.mode = mode
            grads = compute_hypergrad(trainer.objective, trainer.model, trainer.auxnet, batch, aux, cfg.hypergrad,
                                      inner_lr=cfg.trainer.lr, reduce=collective.all_reduce_mean)
            out[f"{dtype}/{mode}"] = [g.detach().cpu() for g in grads]
    torch.save(out, Path(config["out"]) / f"rank{collective.rank}.pt")
    ray.train.report({"done": 1})


def relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    fa = torch.cat([t.reshape(-1).double() for t in a])
    fb = torch.cat([t.reshape(-1).double() for t in b])
    return float((fa - fb).norm() / fb.norm())


def test_two_worker_outer_step_equals_single_process(ray_local, tmp_path):
    from ray.train import RunConfig as TrainRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    raw = synthetic_raw(hypergrad={"method": "neumann", "steps": 5, "alpha": 0.01},
                        trainer={"dtype": "float64", "threads": 1})
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
        single = BilevelTrainer(cfg, build_data(cfg.data), progress=False)
        batch, aux = fixed_batches(single, 0, 2 * PER_WORKER)
        expected = compute_hypergrad(single.objective, single.model, single.auxnet, batch, aux, cfg.hypergrad,
                                     inner_lr=cfg.trainer.lr)
        got = ranks[0][f"{dtype}/global"]
        assert relative_difference(got, list(expected)) < tol, dtype
        assert relative_difference(ranks[1][f"{dtype}/global"], got) == 0.0  # every worker holds the same result
    # "local" mode skips the all-reduce inside the Neumann series: it is a different (biased) estimate.
    assert relative_difference(ranks[0]["float64/local"], ranks[0]["float64/global"]) > 1e-9


def tiny_distributed_cfg(cifar_zip: Path, tmp_path: Path, epochs: int = 3) -> RunConfig:
    raw = tiny_cifar_raw(cifar_zip, tmp_path, name="auxilearn_combine", aux_task="rotation")
    raw["trainer"].update(epochs=epochs, threads=1)
    raw["scaling"] = {"workers": 2, "max_failures": 2}
    return config_from_dict(raw)


def assert_consistent_finish(result: dict, epochs: int) -> None:
    assert [h["epoch"] for h in result["history"]] == list(range(1, epochs + 1))
    assert 0.0 <= result["test_accuracy"] <= 1.0
    state = load_checkpoint(Path(result["checkpoint"]) / LATEST)
    assert state["epoch"] == epochs
    # W and phi are one consistent pair: the aux net in the checkpoint is the coordinator's phi.
    phi_params = [v for k, v in state["auxnet"].items()]
    for a, b in zip(phi_params, state["phi"]["phi"]):
        assert torch.equal(a, b)
    assert state["phi"]["optimizer"]["last_step"] <= state["step"]


def test_run_recovers_from_a_dead_worker_and_a_dead_coordinator(ray_local, cifar_zip, tmp_path):
    """Both faults in one run (bounded retries): a worker process dies after epoch 1, the coordinator actor after
    epoch 2; the run restarts from its checkpoints each time and finishes with W and phi consistent."""
    from auxray.train.ray_run import run_distributed

    cfg = tiny_distributed_cfg(cifar_zip, tmp_path)
    markers = {target: tmp_path / f"{target}-fault-fired" for target in ("worker", "coordinator")}
    faults = [{"target": "worker", "after_epoch": 1, "rank": 1, "marker": str(markers["worker"])},
              {"target": "coordinator", "after_epoch": 2, "rank": 0, "marker": str(markers["coordinator"])}]
    result = run_distributed(cfg, name="faults", faults=faults)
    assert {t: m.read_text() for t, m in markers.items()} == {"worker": "fired", "coordinator": "fired"}
    assert_consistent_finish(result, 3)
