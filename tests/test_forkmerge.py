"""Fork, train, merge (method.name: forkmerge): the branches' weight vectors, the convex merge and its greedy
search, a harmful auxiliary dropped on a small problem, exact resume, and bad settings as one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from auxray.config import config_from_dict
from auxray.data import build_data
from auxray.errors import UserError
from auxray.train.forkmerge import branch_weights, combine, greedy_merge, outer_score, ranking_verdict, ranking_weights
from auxray.train.loop import BilevelTrainer
from tests.conftest import tiny_cifar_raw
from tests.test_cli import (
    assert_one_line_error,
    in_process,
    kill_once_checkpointed,
    last_json,
    leaves,
    untimed,
    write_config,
)
from tests.test_train import assert_resume_matches, synthetic_raw


def forkmerge_raw(**method: object) -> dict:
    """The synthetic problem (9 inner steps an epoch) under forkmerge: one period an epoch by default."""
    return synthetic_raw(method={"name": "forkmerge", "merge_every": 9, **method}, trainer={"epochs": 6, "lr": 0.05})


def test_branches_are_the_given_weights_then_main_only_then_each_task_dropped_or_raised() -> None:
    given = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    got = branch_weights(given, ("a", "b", "c"), ["main_only", "drop_each", "raise_each"], 3.0)
    assert [label for label, _ in got] == [
        "given",
        "main_only",
        "drop_a",
        "drop_b",  # drop_c is the given vector again: left out
        "raise_a",
        "raise_b",
        "raise_c",
    ]
    vectors = dict(got)
    assert vectors["drop_b"].tolist() == [1.0, 0.0, 0.0]
    assert vectors["raise_b"].tolist() == [1.0, 1.5, 0.0]
    assert vectors["raise_c"].tolist() == [1.0, 0.5, 1.0]  # a task at 0 is raised to 1
    assert vectors["main_only"].tolist() == [0.0, 0.0, 0.0]


def test_combine_mixes_floats_convexly_and_keeps_counters() -> None:
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        net.train()
        net(torch.randn(8, 3))  # running statistics differ per net; num_batches_tracked is 1 in each
        nets.append(net.state_dict())
    coeffs = torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64)
    mixed = combine(nets, coeffs)
    for key in ("0.weight", "0.bias", "1.running_mean", "1.running_var"):
        assert torch.allclose(mixed[key], 0.5 * nets[0][key] + 0.5 * nets[2][key])
    assert mixed["1.num_batches_tracked"].dtype == torch.long and int(mixed["1.num_batches_tracked"]) == 1
    one_hot = combine(nets, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    assert all(torch.equal(one_hot[k], nets[1][k]) for k in nets[1])


def test_greedy_merge_ranks_branches_and_keeps_a_share_only_when_it_scores_better() -> None:
    target = torch.tensor([0.2, 0.6, 0.2], dtype=torch.float64)
    calls: list[torch.Tensor] = []

    def score(c: torch.Tensor) -> tuple[float]:
        calls.append(c)
        return (-float((c - target).pow(2).sum()),)

    coeffs, best, single = greedy_merge(3, score, [0.25, 0.5, 0.75])
    # Branch 1 scores best alone; branch 0 then takes the share 0.25, branch 2 a share of 0.25 of that mix.
    assert coeffs.tolist() == pytest.approx([0.1875, 0.5625, 0.25])
    assert best == score(coeffs) and len(calls) == 3 + 2 * 3 + 1
    assert single == [score(torch.eye(3, dtype=torch.float64)[b]) for b in range(3)]
    assert float(coeffs.sum()) == pytest.approx(1.0) and bool((coeffs >= 0).all())


def test_the_ranking_pass_pairs_each_task_alone_with_main_only_and_drops_those_below_it() -> None:
    """Ranking branches: given, main-only, then each task alone at its given weight (none for a task at 0); a task
    is dropped when its branch scores below main-only's, ties kept, the lead read from the first component."""
    given = torch.tensor([1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    branches = ranking_weights(given, ("a", "b", "c", "d"))
    assert [label for label, _ in branches] == ["given", "main_only", "only_a", "only_b", "only_d"]
    assert torch.equal(dict(branches)["only_b"], torch.tensor([0.0, 0.5, 0.0, 0.0], dtype=torch.float64))
    single = [(0.9, -1.0), (0.5, -2.0), (0.6, -1.5), (0.5, -2.0), (0.5, -2.5)]
    dropped, leads = ranking_verdict(branches, single)
    assert dropped == [3] and leads == pytest.approx({0: 0.1, 1: 0.0, 3: 0.0})
    # One task: its branch alone is the given one (kept once), still ranked against main-only.
    one = ranking_weights(torch.ones(1, dtype=torch.float64), ("a",))
    assert [label for label, _ in one] == ["given", "main_only"]
    assert ranking_verdict(one, [(-3.0,), (-2.0,)]) == ([0], {0: -1.0})


def test_a_ranking_pass_drops_the_harmful_task_and_the_run_trains_without_it() -> None:
    """prune_steps 27 with no fork_branches: the first three epochs are the ranking pass (three branches beside the
    run's own), it drops the misleading task and keeps the helper, no period follows, and every later epoch trains
    at (1, 0): the run beats its fixed twin (equal weights, the same start). (Shorter passes rank this problem's
    two tasks by noise on some seeds, as a short look-ahead does.)"""
    raw = forkmerge_raw(aux_task="tests.helpers_user_models:helpful_and_misleading", prune_steps=27, fork_branches=[])
    cfg = config_from_dict(raw)
    data = build_data(cfg.data, cfg.method.aux_tasks)
    trainer = BilevelTrainer(cfg, data, progress=False)
    trained_at, step = [], trainer.inner_step

    def spy_step(batch):
        trained_at.append(tuple(trainer.objective.current_weights().tolist()))
        return step(batch)

    trainer.inner_step = spy_step
    trainer.fit()
    fork = trainer.fork
    assert fork is not None and fork.keep.tolist() == [1.0, 0.0]
    # 27 steps of the run's own at (1, 1), the three branches' 27 each, then every later step at (1, 0)
    assert trained_at[:27] == [(1.0, 1.0)] * 27 and trained_at[4 * 27 :] == [(1.0, 0.0)] * (54 - 27)
    assert fork.rank_leads["misleading"] < 0 <= fork.rank_leads["helper"], fork.rank_leads
    assert [h["fork_merges"] for h in trainer.history] == [0, 0, 1, 0, 0, 0]
    assert fork.branch_steps == 3 * 27 and not fork.pending  # main_only, only_helper, only_misleading
    later = trainer.history[3:]
    assert {(h["task_weight/helper"], h["task_weight/misleading"]) for h in later} == {(1.0, 0.0)}
    assert all(h["fork_kept/misleading"] == 0.0 and h["fork_kept/helper"] == 1.0 for h in later)
    raw["method"] = {"name": "equal", "aux_task": raw["method"]["aux_task"]}
    twin = BilevelTrainer(config_from_dict(raw), data, progress=False)
    twin.fit()
    assert trainer.evaluate(data.val)["mse"] < twin.evaluate(data.val)["mse"]


def test_after_a_ranking_pass_no_branch_trains_a_dropped_task_and_resume_inside_the_pass_is_exact() -> None:
    """A ranking pass of 12 steps (across the first epoch's end), then a merge every 9: every later branch, and
    so every later merge's weights, keeps the dropped task at 0; a run stopped inside the pass resumes exactly."""
    raw = forkmerge_raw(aux_task="tests.helpers_user_models:helpful_and_misleading", prune_steps=12)
    resumed = assert_resume_matches(config_from_dict(raw), stop_after=1)
    fork = resumed.fork
    assert fork is not None and fork.keep.tolist() == [1.0, 0.0] and fork.merges == 1 + 5
    assert all(float(w[1]) == 0.0 for _, w in fork.branches)
    assert [h["task_weight/misleading"] for h in resumed.history[2:]] == [0.0] * 4


def test_a_branch_that_diverged_is_left_out_of_the_merge() -> None:
    """Branch 2's parameters are NaN (its outer loss is NaN) though its argmax accuracy looks best: any mix with it
    scores below every finite candidate, so the merge gives it no share and the merged net stays a number."""

    def result(c: torch.Tensor) -> dict[str, float]:
        loss = math.nan if float(c[2]) > 0 else 1.0 - 0.5 * float(c[1])
        return {"accuracy": 0.5 + 0.4 * float(c[2]) + 0.1 * float(c[1]), "loss": loss}

    for metric in ("accuracy", "loss"):
        coeffs, best, _ = greedy_merge(3, lambda c, m=metric: outer_score(result(c), m), [0.25, 0.5, 0.75])
        assert float(coeffs[2]) == 0.0 and float(coeffs[1]) > 0, (metric, coeffs)
        assert all(math.isfinite(v) for v in best)
    assert outer_score({"accuracy": 0.9, "loss": math.inf}, "accuracy") < outer_score(
        {"accuracy": 0.1, "loss": 9.0}, "loss"
    )


def test_the_merge_drops_a_harmful_auxiliary_within_a_few_periods() -> None:
    """A helpful task and one that pulls the main head towards noise: after the first period every merge gives the
    harmful one less weight than the helpful one, little on average (a share of the branch that keeps both tasks
    survives: averaging it in scores better), and the run beats its fixed twin (equal weights, the same start)."""
    raw = forkmerge_raw(aux_task="tests.helpers_user_models:helpful_and_misleading")
    cfg = config_from_dict(raw)
    data = build_data(cfg.data, cfg.method.aux_tasks)
    trainer = BilevelTrainer(cfg, data, progress=False)
    trainer.fit()
    late = trainer.history[1:]
    harmful = [h["task_weight/misleading"] for h in late]
    helpful = [h["task_weight/helper"] for h in late]
    assert all(a < b for a, b in zip(harmful, helpful, strict=True)), (helpful, harmful)
    assert sum(harmful) / len(harmful) <= 0.25 and sum(helpful) / len(helpful) >= 0.6, (helpful, harmful)
    assert trainer.fork is not None and trainer.fork.merges == sum(h["fork_merges"] for h in trainer.history)
    # main_only, drop_helper, drop_misleading: three branches beside the run's own, on every recorded batch.
    assert trainer.fork.branch_steps == 3 * trainer.step
    raw["method"] = {"name": "equal", "aux_task": raw["method"]["aux_task"]}
    twin = BilevelTrainer(config_from_dict(raw), data, progress=False)
    twin.fit()
    assert trainer.evaluate(data.val)["mse"] < twin.evaluate(data.val)["mse"]


def test_a_resumed_forkmerge_run_matches_the_uninterrupted_one() -> None:
    resumed = assert_resume_matches(config_from_dict(forkmerge_raw(merge_every=4)), stop_after=3)
    assert resumed.fork is not None and resumed.fork.merges == sum(h["fork_merges"] for h in resumed.history)


def test_a_period_longer_than_an_epoch_runs_across_epochs_and_resumes_inside_a_period() -> None:
    """merge_every 20 on 9 steps an epoch, 6 epochs: merges after steps 20 and 40 and the last period's 14 steps
    at the run's end; an epoch without a merge logs the last merge's weights, and a run stopped after epoch 3 (7
    steps into its second period) resumes to the uninterrupted parameters."""
    cfg = config_from_dict(forkmerge_raw(merge_every=20, aux_task="tests.helpers_user_models:helpful_and_misleading"))
    resumed = assert_resume_matches(cfg, stop_after=3)
    assert resumed.fork is not None and resumed.fork.merges == 3 and not resumed.fork.pending
    merges = [h["fork_merges"] for h in resumed.history]
    assert merges == [0, 0, 1, 0, 1, 1], merges
    # main_only, drop_helper, drop_misleading beside the run's own branch, on every step of every period
    assert resumed.fork.branch_steps == 3 * resumed.step == 3 * 54
    weights = [h["task_weight/misleading"] for h in resumed.history]
    assert weights[3] == weights[2] and weights[:2] == [1.0, 1.0], weights


def forkmerge_arml_raw(**method: object) -> dict:
    """The harmful-auxiliary problem under ARML forked once an epoch (9 inner steps), alpha moving every 2 steps."""
    raw = forkmerge_raw(name="forkmerge_arml", aux_task="tests.helpers_user_models:helpful_and_misleading", **method)
    raw["hypergrad"] = {"every": 2}
    return raw


def test_forkmerge_around_arml_forks_around_alpha_now_and_a_branch_leaves_alpha_as_it_was() -> None:
    """Wrapping a learned weighting: each period's branches are main-only and each task dropped from alpha at the
    period's start; training them moves neither alpha nor its step count; the merge's effective weights are its
    coefficients over (alpha at the period's end, those branches)."""
    cfg = config_from_dict(forkmerge_arml_raw())
    trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    fork, objective = trainer.fork, trainer.objective
    assert fork is not None
    starts, merges = [], []
    record, merge = fork.record, fork.merge

    def spy_record(host, batch):
        if not fork.pending:
            starts.append(objective.current_weights())
        record(host, batch)

    def spy_merge(host):
        alpha = objective.current_weights()
        steps = int(trainer.auxnet.steps)
        coeffs = merge(host)
        assert torch.equal(objective.current_weights(), alpha) and int(trainer.auxnet.steps) == steps
        merges.append((alpha, dict(fork.branches), coeffs, fork.weights.clone()))
        return coeffs

    fork.record, fork.merge = spy_record, spy_merge
    trainer.fit(until_epoch=3)
    assert len(starts) == len(merges) == 3
    for start, (end, branches, coeffs, effective) in zip(starts, merges, strict=True):
        assert not torch.equal(start, end)  # ARML moved alpha in the run's own branch during the period
        assert torch.equal(branches["drop_helper"], start * torch.tensor([0.0, 1.0], dtype=torch.float64))
        assert torch.equal(branches["drop_misleading"], start * torch.tensor([1.0, 0.0], dtype=torch.float64))
        assert torch.equal(branches["main_only"], torch.zeros(2, dtype=torch.float64))
        vectors = torch.stack([end, branches["main_only"], branches["drop_helper"], branches["drop_misleading"]])
        assert torch.allclose(effective, vectors.T @ coeffs)
    assert abs(float(starts[-1].sum()) - 2.0) < 1e-5  # alpha stays on ARML's simplex (sum K)


def test_a_resumed_forkmerge_arml_run_matches_the_uninterrupted_one() -> None:
    resumed = assert_resume_matches(config_from_dict(forkmerge_arml_raw(merge_every=4)), stop_after=3)
    assert resumed.fork is not None and resumed.fork.merges == sum(h["fork_merges"] for h in resumed.history)


@pytest.mark.parametrize(
    ("method", "scaling", "needle"),
    [
        ({"merge_every": 0}, {}, "method.merge_every: Input should be greater than or equal to 1"),
        ({"fork_branches": []}, {}, "a merge needs at least two branches"),
        ({"merge_grid": [0.5, 1.0]}, {}, "merge_grid takes distinct shares strictly between 0 and 1"),
        ({"prune_steps": -1}, {}, "method.prune_steps: Input should be greater than or equal to 0"),
        ({"name": "forkmerge_arml", "prune_steps": 5}, {}, "prune_steps drops tasks by pinning the weights"),
        ({"aux_task": "none"}, {}, "method 'forkmerge' needs an auxiliary task"),
        ({}, {"workers": 2}, "trains its branches in one process"),
    ],
)
def test_bad_forkmerge_settings_are_one_config_line(method: dict, scaling: dict, needle: str) -> None:
    raw = forkmerge_raw(**method)
    raw["scaling"] = scaling
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(raw)


def test_bad_forkmerge_setting_through_the_cli_is_one_line_exit_2(tmp_path, capsys) -> None:
    path = write_config(tmp_path, forkmerge_raw(merge_grid=[0.0, 0.5]))
    assert_one_line_error(in_process(capsys, "train", str(path)), "merge_grid takes distinct shares")


def test_equal_weighs_each_task_by_method_task_weights() -> None:
    """equal's inner loss is the main loss plus each task's mean loss times its weight (1 when not named)."""
    cfg = config_from_dict(synthetic_raw(method={"name": "equal", "task_weights": {"harmful": 0.25}}))
    data = build_data(cfg.data, cfg.method.aux_tasks)
    trainer = BilevelTrainer(cfg, data, progress=False)
    batch = trainer.prepare(data.train.x[:16], data.train.y[:16], torch.Generator())
    result = trainer.objective.inner(trainer.model, None, batch)
    out = trainer.model(batch["x"])
    per_task = [
        (out[name].squeeze(-1) - batch["y"][:, col]).pow(2).mean() for col, name in ((1, "helpful"), (2, "harmful"))
    ]
    main = (out["main"].squeeze(-1) - batch["y"][:, 0]).pow(2).mean()
    assert float(result.loss.detach()) == pytest.approx(
        float((main + per_task[0] + 0.25 * per_task[1]).detach()), rel=1e-6
    )


def test_task_weights_naming_no_task_of_the_run_or_negative_are_one_line(tmp_path, capsys) -> None:
    """One line and exit 2, and no run folder made for the run that never started."""
    raw = synthetic_raw(method={"name": "equal", "task_weights": {"rotation": 0.5}})
    raw["trainer"]["checkpoint_dir"] = str(tmp_path / "runs")
    path = write_config(tmp_path, raw)
    assert_one_line_error(in_process(capsys, "train", str(path)), "method.task_weights names rotation", "helpful")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(UserError, match="task_weights must be non-negative numbers; harmful is not"):
        config_from_dict(synthetic_raw(method={"name": "equal", "task_weights": {"harmful": -1}}))


def test_a_sweep_searches_one_task_weight_by_its_dotted_key(tmp_path) -> None:
    from auxray.tune.config import load_sweep

    base = write_config(tmp_path, synthetic_raw(method={"name": "equal"}))
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"base: {base}\nspace:\n  method.task_weights.harmful: {{type: loguniform, low: 0.01, high: 4.0}}\n"
    )
    cfg = load_sweep(sweep).trial_config({"method.task_weights.harmful": 0.5})
    assert cfg.method.task_weights == {"harmful": 0.5}
    sweep.write_text(f"base: {base}\nspace:\n  method.task_weights.harmful.x: {{type: choice, values: [1]}}\n")
    with pytest.raises(UserError, match="space key 'method.task_weights.harmful.x' is not a run config key"):
        load_sweep(sweep)


@pytest.mark.slow
def test_a_killed_forkmerge_run_resumes_to_the_uninterrupted_result(tmp_path, cifar_zip, capsys, monkeypatch) -> None:
    """SIGKILL `auxray train` of a forkmerge run once a checkpoint exists, then `--resume`: the same net, inner
    optimizer, schedule, effective weights and history as an uninterrupted run (periods of 4 steps run across
    epochs, so a checkpoint may fall inside one: its start and batches are in the checkpoint)."""
    raw = tiny_cifar_raw(cifar_zip, tmp_path, name="forkmerge", aux_task="rotation", merge_every=4)
    raw["trainer"].update(epochs=6, checkpoint_every=2)
    path = write_config(tmp_path, raw)
    args = ("train", str(path), "--json", "--no-progress")
    monkeypatch.chdir(tmp_path)
    full = last_json(in_process(capsys, *args, "--set", f"trainer.checkpoint_dir={tmp_path / 'full'}"))

    killed_at = tmp_path / "killed"
    run_dir, epoch_at_kill = kill_once_checkpointed(args, killed_at, tmp_path)
    assert epoch_at_kill < 6, "the run ended before it was killed"

    resumed = last_json(in_process(capsys, *args, "--resume", "--set", f"trainer.checkpoint_dir={killed_at}"))
    assert resumed["resumed_from"] == [epoch_at_kill] and resumed["test_accuracy"] == full["test_accuracy"]
    a = torch.load(run_dir / "latest.pt", weights_only=True)
    b = torch.load(Path(full["run_dir"]) / "latest.pt", weights_only=True)
    for key in ("model", "opt_w", "sched_w", "fork"):
        flat_a, flat_b = leaves(a[key]), leaves(b[key])
        assert len(flat_a) == len(flat_b) > 0, key
        for x, y in zip(flat_a, flat_b, strict=True):
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, key
    assert a["fork"]["merges"] == math.ceil(a["step"] / 4) and untimed(a["history"]) == untimed(b["history"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["forkmerge", "forkmerge_arml"])
def test_branches_on_ray_actors_give_the_in_process_parameters(name: str) -> None:
    """scaling.branch_actors: 2 trains the branches on two Ray actors at once; the run ends bit for bit where the
    in-process one does (one torch thread each), merges and effective weights included, also when the branches fork
    around a learned weighting (each actor's objective pinned at its branch's weights); forkmerge's run starts with
    a 6-step ranking pass, whose branches the actors train too."""
    import ray

    from auxray.train.ray_branches import RayBranches
    from auxray.train.ray_cluster import ensure_ray

    if name == "forkmerge":
        raw = forkmerge_raw(aux_task="tests.helpers_user_models:helpful_and_misleading", merge_every=4, prune_steps=6)
    else:
        raw = forkmerge_arml_raw(merge_every=4)
    raw["trainer"]["epochs"] = 3
    local_cfg = config_from_dict(raw)
    raw["scaling"] = {"branch_actors": 2}
    actors_cfg = config_from_dict(raw)
    data = build_data(local_cfg.data, local_cfg.method.aux_tasks)
    local = BilevelTrainer(local_cfg, data, progress=False)
    local.fit()
    ensure_ray(None, num_cpus=2)
    try:
        remote = BilevelTrainer(actors_cfg, data, progress=False, branches=RayBranches)
        assert isinstance(remote.fork.runner, RayBranches) and len(remote.fork.runner.actors) == 2
        remote.fit()
    finally:
        ray.shutdown()
    for a, b in zip(local.model.state_dict().values(), remote.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    ranking = local_cfg.method.prune_steps
    # every 4 steps across epochs after the ranking pass (if any), and the run's last, shorter period
    merges = (ranking > 0) + math.ceil((local.step - ranking) / 4)
    assert local.fork.merges == remote.fork.merges == merges and torch.equal(local.fork.weights, remote.fork.weights)
    assert torch.equal(local.fork.keep, remote.fork.keep) and local.fork.rank_leads == remote.fork.rank_leads
    assert [h["task_weight/misleading"] for h in local.history] == [h["task_weight/misleading"] for h in remote.history]


def test_branch_actors_for_a_method_that_forks_none_is_one_line() -> None:
    with pytest.raises(UserError, match="scaling.branch_actors trains a forking method's branches; method 'equal'"):
        config_from_dict(synthetic_raw(method={"name": "equal"}) | {"scaling": {"branch_actors": 2}})
