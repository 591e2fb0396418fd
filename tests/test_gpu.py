"""The CUDA paths: device selection, a run on the GPU that checkpoints the CUDA RNG and resumes exactly, and
data-parallel workers on (fractional) GPUs. Marked `gpu`: skipped without CUDA, run where a GPU is present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from auxray.config import config_from_dict
from auxray.data import build_data
from auxray.errors import UserError
from auxray.train.checkpoint import LATEST, load_checkpoint, rng_state, set_rng_state
from auxray.train.launch import train
from auxray.train.loop import BilevelTrainer
from auxray.train.run_plan import RunPlan, plan_run
from auxray.train.setup import resolve_device
from tests.conftest import tiny_cifar_raw
from tests.test_train import synthetic_raw

pytestmark = pytest.mark.gpu
QUIET = {"progress": False, "log": lambda _: None}


def test_auto_picks_cuda_and_a_missing_gpu_index_is_one_line():
    """`trainer.device: auto` is the GPU where there is one; an index past the last GPU is a UserError line."""
    assert resolve_device("auto") == torch.device("cuda")
    count = torch.cuda.device_count()
    with pytest.raises(UserError, match=rf"cuda:{count} asks for a CUDA GPU, but this machine has {count}"):
        resolve_device(f"cuda:{count}")


def test_cuda_rng_state_is_captured_and_restored():
    """A checkpoint's RNG state holds every GPU's generator, and restoring it replays the same CUDA draws."""
    state = rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    first = torch.rand(8, device="cuda")
    set_rng_state(state)
    assert torch.equal(torch.rand(8, device="cuda"), first)


def test_a_cuda_run_keeps_its_tensors_on_the_gpu(cifar_zip, tmp_path):
    """A real-CIFAR run with `trainer.device: cuda` puts the primary and auxiliary networks and every batch on
    the GPU and trains (its weights move)."""
    raw = tiny_cifar_raw(cifar_zip, tmp_path, name="auxilearn_combine", aux_task="rotation")
    raw["trainer"].update(device="cuda", epochs=1)
    cfg = config_from_dict(raw)
    trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    assert trainer.auxnet is not None
    assert {p.device.type for p in [*trainer.model.parameters(), *trainer.auxnet.parameters()]} == {"cuda"}
    trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_a_cuda_run_resumed_from_disk_ends_where_the_uninterrupted_one_does(tmp_path):
    """Stopped after epoch 1 and resumed with --resume semantics, a float64 GPU run (no nondeterministic cuDNN
    kernels: an MLP) ends bit for bit where the uninterrupted run ends; its checkpoint holds the CUDA RNG state."""
    cfg = config_from_dict(
        synthetic_raw(
            trainer={
                "epochs": 2,
                "max_steps_per_epoch": 20,
                "device": "cuda",
                "dtype": "float64",
                "checkpoint_dir": str(tmp_path),
            }
        )
    )
    whole = Path(train(plan_run(cfg, name="whole"), **QUIET)["run_dir"])
    train(plan_run(cfg, name="split"), until_epoch=1, **QUIET)
    split = Path(train(plan_run(cfg, name="split", resume=True), **QUIET)["run_dir"])
    a, b = load_checkpoint(whole / LATEST), load_checkpoint(split / LATEST)
    assert "cuda" in a["rng"] and b["epoch"] == 2
    for key in ("model", "auxnet"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


@pytest.mark.cluster
def test_two_workers_on_fractional_gpus_train_on_cuda(cifar_zip, tmp_path):
    """`--workers 2 --gpus-per-worker 0.5`: both workers share one GPU (gloo all-reduces CUDA tensors; NCCL takes
    one rank per device), train on it and report one consistent run."""
    import ray

    from auxray.train.ray_cluster import ensure_ray
    from auxray.train.ray_run import run_distributed

    raw = tiny_cifar_raw(cifar_zip, tmp_path, name="auxilearn_combine", aux_task="rotation")
    raw["trainer"].update(epochs=2, threads=1, device="auto")
    raw["scaling"] = {"workers": 2, "gpus_per_worker": 0.5, "max_failures": 0}
    cfg = config_from_dict(raw)
    ensure_ray(None, num_cpus=2)
    try:
        result = run_distributed(RunPlan(cfg, "gpu", Path(cfg.trainer.checkpoint_dir), "gpu/0"), progress=False)
    finally:
        ray.shutdown()
    assert result["workers"] == 2 and [h["epoch"] for h in result["history"]] == [1, 2]
    state = load_checkpoint(Path(result["checkpoint"]) / LATEST)
    assert state["config"]["trainer"]["device"].startswith("cuda")
