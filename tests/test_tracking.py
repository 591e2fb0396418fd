"""MLflow tracking: local SQLite store end to end, FAILED on errors, fast failure for an unreachable server,
the offline spool and its replay, parent/child runs, plots, and (marked cluster) a real server killed
mid-run and brought back."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import torch
from mlflow import MlflowClient
from PIL import Image
from torch import nn

from auxray.bench.mlflow_server import free_port, kill_group, start_server, wait_healthy
from auxray.cli import run as cli_run
from auxray.config import RunConfig, TrackingConfig
from auxray.errors import UserError
from auxray.tracking import (
    RunTracker,
    check_reachable,
    end_parent,
    find_parent,
    plot_hypergrad_norms,
    plot_label_assignment,
    plot_task_weights,
    replay_spool,
    resolve_uri,
    sanitize_key,
    serve_ui,
    start_parent,
    tracked_run,
)
from auxray.tracking.ui import ui_command
from auxray.train.diagnostics import LabelAssignment, label_assignment
from auxray.train.session import RunView
from tests.conftest import chromium

CLASSES = ["cat", "dog", "ship"]


def make_cfg() -> RunConfig:
    return RunConfig.model_validate(
        {
            "method": {"name": "auxilearn_combine", "aux_task": "rotation"},
            "hypergrad": {"steps": 2},
            "trainer": {"epochs": 5},
        }
    )


def fake_trainer(label_generator: nn.Module | None = None) -> SimpleNamespace:
    """What label_assignment reads from a BilevelTrainer, plus the record a RunView is made of."""
    return SimpleNamespace(
        history=[],
        hypergrad_norms=[],
        cfg=make_cfg(),
        epoch=0,
        auxnet=label_generator,
        objective=SimpleNamespace(label_classes=tuple(label_generator.psi) if label_generator else None),
        collective=SimpleNamespace(rank=0),
        data=SimpleNamespace(classes=CLASSES),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def view(trainer: SimpleNamespace) -> RunView:
    """The fake trainer's RunView, as the training session builds it."""
    psi = trainer.objective.label_classes

    def labels():
        return label_assignment(trainer, trainer.data.train) if psi else None

    return RunView(
        method=trainer.cfg.method.name,
        epochs=trainer.cfg.trainer.epochs,
        epoch=trainer.epoch,
        step=trainer.epoch * 30,
        rank=0,
        history=list(trainer.history),
        hypergrad_norms=list(trainer.hypergrad_norms),
        best_score=0.3,
        best_epoch=trainer.epoch,
        classes=CLASSES,
        sizes={"train": 0, "outer": 0, "val": 0, "test": 0},
        device="cpu",
        state=dict,
        best=dict,
        labels=labels,
    )


def epoch_metrics(trainer: SimpleNamespace, epoch: int) -> dict:
    """Advance the fake trainer by one epoch, as BilevelTrainer.fit does, and return that epoch's metrics."""
    trainer.epoch = epoch
    trainer.hypergrad_norms += [(epoch * 10 + k, 1.0 / (epoch + k)) for k in range(3)]
    m = {
        "train_loss": 2.0 / epoch,
        "val_accuracy": 0.1 * epoch,
        "task_weight/rotation": 0.5 + 0.05 * epoch,
        "hypergrad_norm": 1.0 / epoch,
        "bad key (x)": 1.0,
        "note": "text is skipped",
        "epoch": epoch,
        "step": epoch * 30,
    }
    trainer.history.append(m)
    return m


def run_dir_with_files(tmp_path: Path) -> Path:
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    torch.save({"model": {}}, run_dir / "best.pt")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    return run_dir


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def steps_of(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# ---- URIs --------------------------------------------------------------------------------------------
def test_resolve_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000/")
    assert resolve_uri() == "http://env:5000"
    assert resolve_uri(cfg=TrackingConfig(uri="sqlite:///cfg.db")) == f"sqlite:///{tmp_path.resolve()}/cfg.db"
    assert resolve_uri("http://arg:1", cfg=TrackingConfig(uri="http://cfg:2")) == "http://arg:1"
    assert resolve_uri("store/x.db") == f"sqlite:///{tmp_path.resolve()}/store/x.db"
    with pytest.raises(UserError, match="file store"):
        resolve_uri("file:///tmp/mlruns")
    with pytest.raises(UserError, match="file store"):
        resolve_uri("./mlruns")


def test_unreachable_server_is_a_quick_user_error() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(UserError, match=f"MLflow tracking server at {uri} is unreachable"):
        check_reachable(uri, timeout=2)
    assert time.monotonic() - t0 < 10


def test_sanitize_key() -> None:
    assert sanitize_key("task_weight/rotation") == "task_weight/rotation"
    assert sanitize_key("bad key (x)") == "bad key _x_"
    assert sanitize_key("/a//b/../c/") == "a/b/c"
    assert sanitize_key("..") == "_"
    assert len(sanitize_key("k" * 400)) == 250


# ---- one run on the local store -----------------------------------------------------------------------
def test_sqlite_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path}/m.db"
    run_dir = run_dir_with_files(tmp_path)
    trainer = fake_trainer()
    with tracked_run(uri, "e2e", "tiny", cfg=trainer.cfg, spool_dir=tmp_path / "spool") as tracker:
        for epoch in (1, 2, 3):
            tracker.epoch(view(trainer), epoch_metrics(trainer, epoch), None)
        tracker.finish(
            view(trainer), {"test_accuracy": 0.42, "best_val_accuracy": 0.3, "epochs": 3, "run_dir": str(run_dir)}
        )
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny"
    assert run.data.params["method.name"] == "auxilearn_combine"
    assert run.data.params["hypergrad.steps"] == "2"
    assert run.data.params["method.combiner_hidden"] == "[10]"
    assert run.data.metrics["test_accuracy"] == pytest.approx(0.42)
    assert "note" not in run.data.metrics and "epoch" not in run.data.metrics
    assert steps_of(client, tracker.run_id, "task_weight/rotation") == [1, 2, 3]
    assert steps_of(client, tracker.run_id, "bad key _x_") == [1, 2, 3]
    assert [
        m.value for m in sorted(client.get_metric_history(tracker.run_id, "val_accuracy"), key=lambda m: m.step)
    ] == pytest.approx([0.1, 0.2, 0.3])
    assert artifact_paths(client, tracker.run_id) == {
        "config.yaml",
        "metrics.jsonl",
        "checkpoints/best.pt",
        "plots/task_weights.png",
        "plots/hypergrad_norms.png",
    }
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert not (tmp_path / "spool").exists()
    assert "unreachable" not in capsys.readouterr().err


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt("stopped by the user")])
def test_exception_inside_tracked_run_marks_failed(tmp_path: Path, error: BaseException) -> None:
    uri = f"sqlite:///{tmp_path}/m.db"
    trainer = fake_trainer()
    with pytest.raises(type(error), match=f"^{error}$") as raised:
        with tracked_run(uri, "fails", spool_dir=tmp_path / "spool") as tracker:
            tracker.epoch(view(trainer), epoch_metrics(trainer, 1), None)
            raise error
    assert raised.value is error  # re-raised as it was
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["auxray.error"] == f"{type(error).__name__}: {error}"
    assert run.data.metrics["train_loss"] == pytest.approx(2.0)


def test_parent_and_child_runs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/m.db"
    parent = start_parent(uri, "sweeps", "sweep-a", {"search": "optuna"})
    assert find_parent(uri, "sweeps", "sweep-a") == parent
    assert find_parent(uri, "sweeps", "other") is None
    with tracked_run(uri, "sweeps", "trial-0", parent_run_id=parent, tags={"trial": 0}) as child:
        child.log_metrics({"val_accuracy": 0.5}, step=1)
    end_parent(uri, parent)
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(parent).data.tags["search"] == "optuna"


# ---- offline spool ------------------------------------------------------------------------------------
def test_offline_run_spools_and_replays_to_a_new_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    trainer = fake_trainer()
    t0 = time.monotonic()
    with tracked_run(dead, "offline", "lost", cfg=trainer.cfg, spool_dir=tmp_path / "spool") as tracker:
        for epoch in (1, 2):
            tracker.epoch(view(trainer), epoch_metrics(trainer, epoch), None)
        tracker.finish(view(trainer), {"test_accuracy": 0.5, "run_dir": str(run_dir_with_files(tmp_path))})
    assert time.monotonic() - t0 < 20
    err = capsys.readouterr().err
    assert err.count("MLflow server unreachable") == 1
    assert f"auxray tracking replay {tracker.spool_path}" in err
    assert tracker.run_id.startswith("offline-")
    records = [json.loads(line) for line in tracker.spool_path.read_text().splitlines()]
    assert records[0]["op"] == "run" and records[-1] == {**records[-1], "op": "status", "status": "FINISHED"}
    assert sorted({m["step"] for r in records if r["op"] == "metrics" for m in r["metrics"]}) == [1, 2]

    # `auxray tracking replay` (the command the warning names) sends it, once.
    store = f"sqlite:///{tmp_path}/m.db"
    replay = [
        sys.executable,
        "-m",
        "auxray.cli",
        "tracking",
        "replay",
        str(tracker.spool_path),
        "--tracking-uri",
        store,
    ]
    proc = subprocess.run([*replay, "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    assert done["sent"] == len(records) - 1 and done["skipped"] == 0
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(done["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "lost"
    assert run.data.tags["auxray.replayed_from"] == tracker.run_id
    assert steps_of(client, done["run_id"], "val_accuracy") == [1, 2]
    assert {"config.yaml", "checkpoints/best.pt", "plots/task_weights.png"} <= artifact_paths(client, done["run_id"])
    capsys.readouterr()  # again, in this process (MLflow is imported already): nothing is sent twice
    assert cli_run(replay[3:]) == 0 and f"0 records sent to run {done['run_id']}" in capsys.readouterr().out
    assert steps_of(client, done["run_id"], "val_accuracy") == [1, 2]
    assert cli_run(["tracking", "replay", str(tmp_path / "nope.jsonl")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_run_resumed_while_the_store_is_down_replays_into_its_earlier_run(tmp_path: Path) -> None:
    """`--resume` looks up the earlier run by its folder's tag; with the store down it cannot, so the spool keeps
    the tag and the replay goes on in that run: one run with every epoch, not a duplicate."""
    from auxray.tracking.spool import replay_spool

    store, key = f"sqlite:///{tmp_path}/m.db", ("auxray.run_dir", "runs/r/20261203")
    with tracked_run(store, "resumed", "r", reopen=key) as first:
        first.log_metrics({"val_accuracy": 0.4}, step=1)
    dead = f"http://127.0.0.1:{free_port()}"
    with tracked_run(dead, "resumed", "r", reopen=key, spool_dir=tmp_path / "spool") as again:
        again.log_metrics({"val_accuracy": 0.6}, step=2)
    assert again.run_id.startswith("offline-") and again.find == {key[0]: key[1]}
    assert replay_spool(again.spool_path, store)["run_id"] == first.run_id
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id]
    assert steps_of(client, first.run_id, "val_accuracy") == [1, 2]
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["auxray.restored"] == "true"


def test_a_trial_restored_while_the_store_is_down_replays_into_its_child_run(tmp_path: Path) -> None:
    """A restored Tune trial looks up its child run under the sweep's parent; with the store down the spool keeps
    (parent, trial), and the replay continues that child (the resume had marked it FAILED) instead of a second."""
    from auxray.tracking.spool import replay_spool
    from auxray.tune.runs import children, open_child

    store = f"sqlite:///{tmp_path}/m.db"
    parent = start_parent(store, "sweeps", "s", {})
    child = open_child(store, "sweeps", sweep_name="s", parent_id=parent, trial_id="t1", spool_dir=str(tmp_path))
    child.log_metrics({"val_accuracy": 0.5}, step=1)
    child.end("FAILED")  # the driver died; the resumed sweep marked it
    dead = f"http://127.0.0.1:{free_port()}"
    restored = open_child(dead, "sweeps", sweep_name="s", parent_id=parent, trial_id="t1", spool_dir=str(tmp_path))
    assert restored.offline and restored.run_id is not None and restored.run_id.startswith("offline-")
    restored.log_metrics({"val_accuracy": 0.7}, step=2)
    restored.end("FINISHED")
    assert replay_spool(restored.spool_path, store)["run_id"] == child.run_id
    assert [r.info.run_id for r in children(store, parent)] == [child.run_id]
    client = MlflowClient(tracking_uri=store)
    assert steps_of(client, child.run_id, "val_accuracy") == [1, 2]
    assert client.get_run(child.run_id).info.status == "FINISHED"


def test_a_sweeps_spool_folder_is_replayed_whole_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """replay_folder (a sweep's end) sends every spool of a folder that has unsent records, once; a spool it cannot
    send is one warning line and counted, never an exception."""
    from auxray.tracking.spool import replay_folder

    dead = f"http://127.0.0.1:{free_port()}"
    spools = tmp_path / "spool"
    ids = []
    for name in ("a", "b"):
        with tracked_run(dead, "sweep", name, spool_dir=spools) as tracker:
            tracker.log_metrics({"val_accuracy": 0.5}, step=1)
        ids.append(tracker.run_id)
    (spools / "broken.jsonl").write_text("not a spool\n")
    store = f"sqlite:///{tmp_path}/m.db"
    assert replay_folder(spools, store) == {"spools": 3, "sent": 4, "failed": 1}
    assert "could not replay" in capsys.readouterr().err
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert sorted(r.data.tags["auxray.replayed_from"] for r in runs) == sorted(ids)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert replay_folder(spools, store) == {"spools": 3, "sent": 0, "failed": 1}
    assert len(client.search_runs([runs[0].info.experiment_id])) == 2
    assert replay_folder(tmp_path / "none", store) == {"spools": 0, "sent": 0, "failed": 0}


# ---- plots --------------------------------------------------------------------------------------------
class Flat(nn.Module):
    """A trunk whose single feature is the image's mean intensity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3)).unsqueeze(1)


def test_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Label counts match a hand count; each plot draws the run's own numbers (read off its figure) into its PNG."""
    import auxray.tracking.plots as plots
    from auxray.auxnets.label_generator import LabelGenerator
    from auxray.data import TensorData

    gen = LabelGenerator(Flat(), 1, [2, 3, 2])
    with torch.no_grad():
        gen.head.weight.copy_(torch.tensor([[1.0], [-1.0], [1.0], [0.0], [-1.0], [1.0], [-1.0]]))
        gen.head.bias.zero_()
    n = 240
    x = torch.cat([torch.zeros(n // 2, 3, 4, 4), torch.full((n // 2, 3, 4, 4), 255.0)]).to(torch.uint8)
    y = torch.arange(n) % 3
    trainer = fake_trainer(gen)
    trainer.data.train = TensorData(x, y)
    for epoch in (1, 2, 3):
        epoch_metrics(trainer, epoch)

    def by_hand(images: list[int]) -> torch.Tensor:
        """Bright images (normalised mean > 0) take their block's sub-class of weight +1, dark ones that of -1."""
        out = torch.zeros(3, 7, dtype=torch.long)
        for i in images:
            out[int(y[i]), {0: (0, 1), 1: (2, 4), 2: (5, 6)}[int(y[i])][0 if i >= n // 2 else 1]] += 1
        return out

    # At most 120 images: spread evenly over the 240.
    sampled = label_assignment(trainer, trainer.data.train, max_images=120).counts()
    assert torch.equal(sampled, by_hand(torch.linspace(0, n - 1, 120).round().long().tolist()))
    counts = by_hand(list(range(n)))  # what the plot counts: every image

    figures = {}
    real_save = plots.save_figure

    def keep(fig, path: Path) -> Path:
        figures[path.name] = fig
        return real_save(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    paths = [
        plot_task_weights(view(trainer), tmp_path),
        plot_hypergrad_norms(view(trainer), tmp_path),
        plot_label_assignment(view(trainer), tmp_path),
    ]
    names = ["task_weights.png", "hypergrad_norms.png", "label_assignment.png"]
    assert paths == [tmp_path / name for name in names] and sorted(figures) == sorted(names)
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG"
            im.verify()
    (weights,) = figures["task_weights.png"].axes[0].get_lines()
    assert list(weights.get_xdata()) == [1, 2, 3] and weights.get_label() == "rotation"
    assert list(weights.get_ydata()) == pytest.approx([0.55, 0.6, 0.65])
    (norms,) = figures["hypergrad_norms.png"].axes[0].get_lines()
    assert list(zip(norms.get_xdata(), norms.get_ydata())) == trainer.hypergrad_norms
    heat = figures["label_assignment.png"].axes[0]
    share = counts.float() / counts.sum(dim=1, keepdim=True)
    torch.testing.assert_close(torch.as_tensor(heat.get_images()[0].get_array()).float(), share)
    blocks = [(c, j) for c, (start, stop) in enumerate([(0, 2), (2, 5), (5, 7)]) for j in range(start, stop)]
    assert {t.get_position(): int(t.get_text()) for t in heat.texts} == {(j, c): int(counts[c, j]) for c, j in blocks}

    stl = fake_trainer()
    assert plot_task_weights(view(stl), tmp_path / "stl") is None
    assert plot_hypergrad_norms(view(stl), tmp_path / "stl") is None
    assert plot_label_assignment(view(stl), tmp_path / "stl") is None
    assert not (tmp_path / "stl").exists()


def test_ui_command(capsys: pytest.CaptureFixture) -> None:
    cmd = ui_command("sqlite:////data/m.db", port=5123)
    assert cmd[1:4] == ["-m", "mlflow", "ui"] and cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--default-artifact-root") + 1] == "file:///data/mlartifacts"
    assert serve_ui("http://tracking.example:5000") == 0
    assert "http://tracking.example:5000" in capsys.readouterr().out


# ---- a real server, killed mid-run ---------------------------------------------------------------------
@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_server_killed_mid_run_spools_then_resends_when_it_is_back(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    db, artifacts, log = tmp_path / "m.db", tmp_path / "art", tmp_path / "server.log"
    server = start_server(db, artifacts, port, log)
    try:
        check_reachable(uri)
        trainer = fake_trainer()
        tracker = RunTracker(uri, "killed", "mid-run", spool_dir=tmp_path / "spool", probe_interval=1.0)
        run_id = tracker.start()
        tracker.log_config(trainer.cfg)
        for epoch in (1, 2):
            tracker.epoch(view(trainer), epoch_metrics(trainer, epoch), None)
        client = MlflowClient(tracking_uri=uri)
        assert steps_of(client, run_id, "val_accuracy") == [1, 2]

        kill_group(server)
        with pytest.raises(UserError, match=f"MLflow tracking server at {uri} is unreachable"):
            check_reachable(uri, timeout=2)
        for epoch in (3, 4):
            t0 = time.monotonic()
            tracker.epoch(view(trainer), epoch_metrics(trainer, epoch), None)
            assert time.monotonic() - t0 < 5, f"epoch {epoch} callback blocked on the dead server"
            time.sleep(1.1)  # past the probe interval: the probe runs, finds the server still down
        assert tracker.offline
        records = [json.loads(line) for line in tracker.spool_path.read_text().splitlines()]
        assert sorted({m["step"] for r in records if r["op"] == "metrics" for m in r["metrics"]}) == [3, 4]

        # The server comes back: the next call past the probe interval finds it and resends the spool by itself.
        server = start_server(db, artifacts, port, log)
        time.sleep(1.1)
        tracker.epoch(view(trainer), epoch_metrics(trainer, 5), None)
        assert not tracker.offline
        tracker.finish(
            view(trainer), {"test_accuracy": 0.61, "epochs": 5, "run_dir": str(run_dir_with_files(tmp_path))}
        )
        err = capsys.readouterr().err
        assert err.count("MLflow server unreachable") == 1 and "reachable again; resent" in err, err
        assert tracker.run_id == run_id
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert steps_of(client, run_id, "val_accuracy") == [1, 2, 3, 4, 5]
        assert steps_of(client, run_id, "task_weight/rotation") == [1, 2, 3, 4, 5]
        assert run.data.metrics["test_accuracy"] == pytest.approx(0.61)
        assert {
            "config.yaml",
            "checkpoints/best.pt",
            "metrics.jsonl",
            "plots/task_weights.png",
            "plots/hypergrad_norms.png",
        } <= artifact_paths(client, run_id)
        assert replay_spool(tracker.spool_path)["sent"] == 0  # nothing was left to replay by hand
        assert steps_of(client, run_id, "val_accuracy") == [1, 2, 3, 4, 5]
    finally:
        kill_group(server)


def test_tracker_resends_the_spool_when_the_store_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import auxray.tracking.tracker as tracker_module

    down = {"now": False}
    real_apply = tracker_module.apply_record

    def flaky_apply(client: MlflowClient, run_id: str, record: dict) -> None:
        if down["now"]:
            raise requests.ConnectionError("connection refused")
        real_apply(client, run_id, record)

    monkeypatch.setattr(tracker_module, "apply_record", flaky_apply)
    uri = f"sqlite:///{tmp_path}/m.db"
    trainer = fake_trainer()
    with tracked_run(uri, "flaky", spool_dir=tmp_path / "spool", probe_interval=0) as tracker:
        tracker.epoch(view(trainer), epoch_metrics(trainer, 1), None)
        down["now"] = True
        tracker.epoch(view(trainer), epoch_metrics(trainer, 2), None)
        assert tracker.offline and tracker.spool_path.is_file()
        down["now"] = False
        tracker.epoch(view(trainer), epoch_metrics(trainer, 3), None)
        assert not tracker.offline
    err = capsys.readouterr().err
    assert err.count("MLflow server unreachable") == 1 and "reachable again; resent 1 buffered" in err
    client = MlflowClient(tracking_uri=uri)
    assert steps_of(client, tracker.run_id, "val_accuracy") == [1, 2, 3]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    assert replay_spool(tracker.spool_path)["sent"] == 0


def listening_hosts(port: int) -> set[str]:
    """The local addresses a TCP socket listens on at `port` (from /proc/net/tcp and tcp6)."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                hosts.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return hosts


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_auxray_ui_serves_the_local_store_on_loopback_shows_the_run_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """`auxray ui --tracking-uri sqlite:///...` (the README's command): listens on 127.0.0.1 only, headless
    Chromium shows the run in the MLflow UI, and Ctrl-C stops it and its workers."""
    from playwright.sync_api import sync_playwright

    browser_path = chromium()
    uri = f"sqlite:///{tmp_path}/m.db"
    with tracked_run(uri, "ui", "shown-in-the-browser") as tracker:
        tracker.log_metrics({"val_accuracy": 0.5}, step=1)
    port, log = free_port(), tmp_path / "ui.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "auxray.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_healthy(port, proc, log)
        assert listening_hosts(port) == {"127.0.0.1"}
        resp = requests.post(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", json={"experiment_ids": ["1"]}, timeout=10
        )
        assert [r["info"]["run_id"] for r in resp.json()["runs"]] == [tracker.run_id]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=browser_path,
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(f"http://127.0.0.1:{port}/#/experiments/1/runs", wait_until="load", timeout=120_000)
                page.get_by_text("shown-in-the-browser", exact=True).first.wait_for(timeout=90_000)
            finally:
                browser.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        with pytest.raises(requests.ConnectionError, match=f"port={port}.*Connection refused"):
            requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
        leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, str(tmp_path))]
        assert leftovers == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _cmdline_has(proc_dir: Path, text: str) -> bool:
    try:
        return text in (proc_dir / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_label_counts_and_spread_come_from_one_assignment() -> None:
    """The plot's counts and the diagnostics' spread statistics read the same probabilities: one-hot labels have
    entropy 0; a class whose images split over two of its three sub-classes has usage entropy log 2 / log 3."""
    y = torch.tensor([0, 0, 1, 1])
    probs = torch.zeros(4, 5, dtype=torch.float64)  # class 0 owns sub-classes 0-1, class 1 owns 2-4
    probs[0, 0] = probs[1, 0] = probs[2, 2] = probs[3, 4] = 1.0
    one_hot = LabelAssignment(probs, y, [2, 3])
    assert torch.equal(one_hot.counts(), torch.tensor([[2, 0, 0, 0, 0], [0, 0, 1, 0, 1]]))
    stats = one_hot.stats()
    assert stats["sample_entropy"] == pytest.approx(0.0, abs=1e-9) and stats["images"] == 4
    assert stats["usage_entropy"] == pytest.approx((0.0 + math.log(2) / math.log(3)) / 2)
    assert stats["subclasses_used"] == pytest.approx(3 / 5)
    uniform = torch.zeros(4, 5, dtype=torch.float64)
    uniform[:2, :2], uniform[2:, 2:] = 1 / 2, 1 / 3
    assert LabelAssignment(uniform, y, [2, 3]).stats()["sample_entropy"] == pytest.approx(1.0)
