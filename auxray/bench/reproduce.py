"""`auxray bench reproduce`: the AuxiLearn paper's CIFAR-10 (5% labels) table, re-run with auxray.

Every method in ``configs/cifar10_5pct/`` is trained for the same epoch budget, with the same data split,
backbone and inner-optimiser settings, over a few seeds, in this process (``run_training``). Each finished
run is appended to ``<out_dir>/reproduce_<tag>.runs.jsonl`` at once, so an interrupted job keeps what it
finished and a re-run skips those runs (a run is reused only when its resolved config is the same: a changed
budget, backbone or config file re-runs it). The table is then written as ``reproduce_<tag>.json`` (a list of
rows) and ``reproduce_<tag>.md`` (the table beside the paper's numbers, the settings each method used, the
command, machine and data).

    python jobs/reproduce.py --quick                 # 1 seed, 1 epoch, 400 images: the CI-time check
    python jobs/reproduce.py                         # 3 seeds x 8 methods, the configs' epoch budget

Standard deviations are population standard deviations over seeds (``ddof=0``, numpy's default), so one
seed gives 0 rather than an undefined value.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "cifar10_5pct"
DEFAULT_METHODS = ("stl", "maxl", "maxl_fo", "auxilearn_labels", "auxilearn_combine", "jtds", "gcs", "uncertainty")
DEFAULT_SEEDS = (0, 1, 2)
STD_DDOF = 0

# AuxiLearn (Navon et al., ICLR 2021), "learning auxiliary labels" table, CIFAR-10 with 5% of the labels:
# test accuracy in percent, mean +- std over seeds. Its "AuxiLearn" row is the learned-label generator.
PAPER = {
    "stl": (50.8, 0.8),
    "maxl": (58.2, 0.3),
    "maxl_fo": (56.1, 0.1),
    "auxilearn_labels": (60.7, 1.3),
}
PAPER_NAMES = {"stl": "STL", "maxl": "MAXL", "maxl_fo": "MAXL-F", "auxilearn_labels": "AuxiLearn"}

QUICK_PER_CLASS = 40
QUICK_TEST_LIMIT = 1000

# The settings of method.* / hypergrad.* that matter to each method (the rest are unused defaults).
_LABEL_KEYS = ("psi", "entropy_weight", "focal_gamma", "aux_lr", "aux_weight_decay", "aux_optimizer", "aux_grad_clip")
_METHOD_KEYS = {
    "stl": (),
    "equal": ("aux_task",),
    "uncertainty": ("aux_task",),
    "gcs": ("aux_task",),
    "auxilearn_combine": ("aux_task", "combiner", "combiner_hidden", "monotone", "aux_lr", "aux_weight_decay",
                          "aux_optimizer", "aux_grad_clip"),
    "auxilearn_labels": _LABEL_KEYS,
    "maxl": _LABEL_KEYS,
    "maxl_fo": _LABEL_KEYS,
    "jtds": ("aux_task", "aux_lr", "aux_weight_decay", "aux_optimizer", "aux_grad_clip"),
}
_HYPERGRAD_KEYS = {
    "neumann": ("method", "steps", "alpha", "every", "hvp", "mode"),
    "cg": ("method", "steps", "tol", "damping", "every", "hvp", "mode"),
    "exact": ("method", "every"),
    "unroll": ("method", "unroll_lr", "every"),
    "fd": ("method", "unroll_lr", "fd_eps", "every"),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_tag(backbone: str, quick: bool) -> str:
    return f"quick_{backbone}" if quick else f"cifar10_5pct_{backbone}"


def fmt_seconds(s: float) -> str:
    """A duration for a progress line: seconds, minutes or hours."""
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"


# ---- configs --------------------------------------------------------------------------------------------
def method_overrides(seed: int, epochs: int | None, backbone: str, width: int | None, quick: bool, tracking: bool,
                     checkpoint_dir: str | Path, extra_overrides: Sequence[str] = ()) -> list[str]:
    """The ``--set`` overrides shared by every method's config for one seed."""
    out = [f"data.seed={seed}", f"trainer.seed={seed}", f"model.backbone={backbone}",
           f"tracking.enabled={'true' if tracking else 'false'}", f"trainer.checkpoint_dir={checkpoint_dir}"]
    if epochs is not None:
        out.append(f"trainer.epochs={epochs}")
    if width is not None:
        out.append(f"model.width={width}")
    if quick:
        out += [f"data.labeled_per_class={QUICK_PER_CLASS}", "data.labeled_fraction=null",
                f"data.test_limit={QUICK_TEST_LIMIT}"]
    return out + list(extra_overrides)


def shared_settings(cfg: Any) -> dict[str, Any]:
    """Everything that must be identical across methods for a fair table: data (bar the seed), model, trainer
    (bar the seed and where checkpoints go)."""
    d = cfg.model_dump()
    data = {k: v for k, v in d["data"].items() if k != "seed"}
    trainer = {k: v for k, v in d["trainer"].items() if k not in ("seed", "checkpoint_dir")}
    return {"data": data, "model": d["model"], "trainer": trainer}


def method_settings(cfg: Any) -> dict[str, Any]:
    """The method.* and hypergrad.* settings this method actually uses, from its resolved config."""
    m = cfg.method.model_dump()
    out: dict[str, Any] = {k: m[k] for k in _METHOD_KEYS.get(cfg.method.name, tuple(m)) if k in m}
    from auxray.config import LEARNED_METHODS

    if cfg.method.name in LEARNED_METHODS:
        h = cfg.hypergrad.model_dump()
        for k in _HYPERGRAD_KEYS.get(cfg.hypergrad.method, tuple(h)):
            out[f"hypergrad.{k}"] = h[k]
    return out


def fingerprint(cfg: Any) -> str:
    """A hash of the resolved config, bar where checkpoints go and tracking: equal fingerprints, same run."""
    d = cfg.model_dump()
    d["trainer"].pop("checkpoint_dir", None)
    d.pop("tracking", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- diagnostics ----------------------------------------------------------------------------------------
class Diagnostics:
    """Epoch callback that, after the last epoch, records what can show a learned method doing nothing:
    hypergradient norms, learned task weights, and for label generators how spread the generated labels are."""

    def __init__(self, max_images: int = 1000) -> None:
        self.max_images = max_images
        self.out: dict[str, Any] = {}

    def __call__(self, trainer: Any, metrics: dict[str, Any]) -> None:
        if trainer.epoch != trainer.cfg.trainer.epochs:
            return
        try:
            self.out = self.collect(trainer, metrics)
        except Exception as exc:  # a diagnostic must never fail a finished run
            self.out = {"error": f"{type(exc).__name__}: {exc}"}

    def collect(self, trainer: Any, metrics: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sizes": {s: len(getattr(trainer.data, s)) for s in ("train", "aux", "val", "test")},
            "device": str(trainer.device),
            "steps": trainer.step,
            "train_seconds": sum(h.get("epoch_seconds", 0.0) for h in trainer.history),
            "inner_steps": trainer.step,
            "outer_steps": len(trainer.hypergrad_norms),
        }
        norms = [n for _, n in trainer.hypergrad_norms]
        if norms:
            out["hypergrad_norm"] = {"count": len(norms), "first": norms[0], "last": norms[-1],
                                     "mean": sum(norms) / len(norms), "min": min(norms), "max": max(norms)}
        for k, v in metrics.items():
            if k.startswith(("task_weight/", "grad_cosine/")):
                out[k] = v
        from auxray.config import LABEL_METHODS

        if trainer.cfg.method.name in LABEL_METHODS and trainer.auxnet is not None:
            out["labels"] = self.label_stats(trainer)
        return out

    def label_stats(self, trainer: Any) -> dict[str, float]:
        """Generated labels on (up to max_images) training images, without augmentation:
        sample_entropy  mean per-image entropy / log(psi[y]): 0 = one-hot labels, 1 = uniform over the block;
        usage_entropy   per class, entropy of the class's mean label / log(psi[y]), averaged over classes:
                        0 = every image of a class gets the same sub-class (collapse), 1 = all used equally;
        subclasses_used fraction of the sum(psi) sub-classes that are some image's argmax."""
        import torch

        from auxray.data import BatchIterator

        gen = trainer.auxnet
        psi = list(gen.psi)
        was_training = gen.training
        gen.eval()
        it = BatchIterator(trainer.data.train, trainer.cfg.trainer.eval_batch_size, shuffle=False, seed=0,
                           drop_last=False, augment=False, device=trainer.device)
        probs, ys, seen = [], [], 0
        with torch.no_grad():
            for x, y in it:
                p = gen(x.to(trainer.device, trainer.dtype), y.to(trainer.device))
                probs.append(p.double().cpu())
                ys.append(y.cpu())
                seen += len(y)
                if seen >= self.max_images:
                    break
        gen.train(was_training)
        p = torch.cat(probs)[: self.max_images]
        y = torch.cat(ys)[: self.max_images]
        logpsi = torch.tensor([math.log(psi[int(c)]) if psi[int(c)] > 1 else 1.0 for c in y], dtype=torch.float64)
        ent = -(p * p.clamp_min(1e-12).log()).sum(1) / logpsi
        usage = []
        for c in y.unique():
            mask = y == c
            if psi[int(c)] < 2:
                continue
            pbar = p[mask].mean(0)
            usage.append(float(-(pbar * pbar.clamp_min(1e-12).log()).sum() / math.log(psi[int(c)])))
        used = p.argmax(1).unique().numel() / sum(psi)
        return {"sample_entropy": float(ent.mean()), "usage_entropy": sum(usage) / max(len(usage), 1),
                "subclasses_used": used, "images": len(y)}


# ---- the progress file ----------------------------------------------------------------------------------
def read_runs(path: Path) -> list[dict[str, Any]]:
    """Finished runs from the JSON-lines progress file (a torn last line from a killed job is ignored)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_run(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---- the table ------------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - STD_DDOF, 1)
    return mean, math.sqrt(var)


def build_table(runs: Iterable[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method with at least one finished run: accuracies (fractions), mean/std over seeds,
    mean wall seconds per run and that time relative to STL's."""
    by_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for r in runs:
        if r["method"] in by_method:
            by_method[r["method"]].append(r)
    table = []
    for m in methods:
        rs = sorted(by_method[m], key=lambda r: r["seed"])
        if not rs:
            continue
        accs = [float(r["test_accuracy"]) for r in rs]
        mean, std = _mean_std(accs)
        table.append({"method": m, "mean": mean, "std": std, "accuracies": accs, "seeds": [r["seed"] for r in rs],
                      "seconds": sum(float(r["seconds"]) for r in rs) / len(rs), "relative_time": None,
                      "std_ddof": STD_DDOF, "paper": ({"mean": PAPER[m][0] / 100, "std": PAPER[m][1] / 100}
                                                      if m in PAPER else None)})
    stl = next((row for row in table if row["method"] == "stl"), None)
    for row in table:
        row["relative_time"] = row["seconds"] / stl["seconds"] if stl and stl["seconds"] > 0 else None
    return table


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info(device: str | None) -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "usable_cpus": usable_cpus(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": device or ("cuda" if torch.cuda.is_available() else "cpu")}
    if info["device"].startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _settings_text(settings: dict[str, Any]) -> str:
    if not settings:
        return "main loss only"
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, (list, bool)) or v is None else v}"
                     for k, v in settings.items())


def _diag_text(method: str, diags: list[dict[str, Any]]) -> str:
    """One cell summarising the per-run diagnostics of a method (means over its runs)."""
    diags = [d for d in diags if d]
    if not diags:
        return "–"

    def avg(values: list[float]) -> float:
        return sum(values) / len(values)

    parts = []
    hg = [d["hypergrad_norm"] for d in diags if "hypergrad_norm" in d]
    if hg:
        first, last = avg([h["first"] for h in hg]), avg([h["last"] for h in hg])
        parts.append(f"hypergrad norm first {first:.3g} → last {last:.3g} (min {min(h['min'] for h in hg):.3g}, "
                     f"{avg([h['count'] for h in hg]):.0f} outer steps/run)")
    weights = sorted({k for d in diags for k in d if k.startswith("task_weight/")})
    for k in weights:
        parts.append(f"{k.split('/', 1)[1]} weight {avg([d[k] for d in diags if k in d]):.3g}")
    cos = sorted({k for d in diags for k in d if k.startswith("grad_cosine/")})
    for k in cos:
        parts.append(f"cos(main, {k.split('/', 1)[1]}) {avg([d[k] for d in diags if k in d]):.2f}")
    lab = [d["labels"] for d in diags if "labels" in d]
    if lab:
        parts.append(f"labels: sample entropy {avg([x['sample_entropy'] for x in lab]):.2f}, usage entropy "
                     f"{avg([x['usage_entropy'] for x in lab]):.2f}, sub-classes used "
                     f"{100 * avg([x['subclasses_used'] for x in lab]):.0f}%")
    return "; ".join(parts) or "–"


def render_markdown(table: list[dict[str, Any]], runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The table beside the paper's numbers, then settings, diagnostics, command, machine and data."""
    lines = [f"# Reproduction: CIFAR-10 with 5% labels ({meta['tag']})", ""]
    if meta["quick"]:
        lines += ["**Quick mode**: 1 seed, 1 epoch, a 400-image labelled slice and 1,000 test images. It checks that "
                  "every method runs end to end; its accuracies say nothing about the methods.", ""]
    paper_line = ", ".join(f"{PAPER_NAMES[m]} {PAPER[m][0]:.1f} ± {PAPER[m][1]:.1f}" for m in PAPER)
    lines += ["Test accuracy (%) of the best-on-validation weights, mean ± std over seeds "
              f"(std: population, ddof={STD_DDOF}).",
              "",
              f"Paper (AuxiLearn, Navon et al., ICLR 2021, CIFAR-10 with 5% labels): {paper_line}; the other methods "
              "have no number there (–). The paper used its own backbone and schedule, so compare the ordering and "
              "the gaps, not the absolute level.",
              "",
              "| method | paper | auxray | per seed | seconds / run | × STL time |",
              "|---|---|---|---|---|---|"]
    for row in table:
        p = PAPER.get(row["method"])
        paper = f"{p[0]:.1f} ± {p[1]:.1f}" if p else "–"
        name = row["method"] + (f" ({PAPER_NAMES[row['method']]})" if row["method"] in PAPER_NAMES else "")
        per_seed = ", ".join(f"{100 * a:.1f}" for a in row["accuracies"])
        rel = f"{row['relative_time']:.2f}" if row["relative_time"] is not None else "–"
        lines.append(f"| {name} | {paper} | {_pct(row['mean'])} ± {_pct(row['std'])} | {per_seed} | "
                     f"{row['seconds']:.1f} | {rel} |")
    if meta.get("picture"):
        lines += ["", f"![test accuracy and relative wall time per method]({meta['picture']})"]
    lines += ["", "## Settings", "",
              f"- Command: `{meta['command']}`",
              f"- Backbone: {meta['backbone']} (width {meta['width']}); epochs: {meta['epochs']} for every method; "
              f"seeds: {', '.join(str(s) for s in meta['seeds'])}",
              f"- Shared by every method (data bar the seed, model, trainer bar the seed): "
              f"`{json.dumps(meta['shared']['trainer'], default=str)}`",
              f"- Data: {meta['data_note']}",
              f"- Machine: {meta['machine']['platform']}, {meta['machine']['cpu_count']} CPUs "
              f"({meta['machine']['usable_cpus']} usable, torch threads per run "
              f"{meta.get('threads_per_job') or meta['machine']['torch_threads']}), "
              f"Python {meta['machine']['python']}, torch {meta['machine']['torch']}, device "
              f"{meta['machine']['device']}{' (' + meta['machine']['gpu'] + ')' if meta['machine'].get('gpu') else ''}",
              f"- Wall time of this invocation: {meta['wall_seconds']:.1f} s ({meta['ran']} runs trained, "
              f"{meta['skipped']} reused from `{meta['runs_file']}`)"
              + (f"; rows of {', '.join(meta['carried'])} come from earlier invocations with the same settings "
                 "(same file)" if meta.get("carried") else ""),
              (f"- Runs trained {meta['jobs']} at a time, each in its own process with {meta['threads_per_job']} "
               "torch thread(s), so a run's seconds are those of a machine shared with the other run(s)"
               if meta.get("jobs", 1) > 1 else "- Runs trained one at a time in one process"),
              "", "Per-method settings (from each resolved config, method.* and hypergrad.*):", "",
              "| method | settings |", "|---|---|"]
    for row in table:
        lines.append(f"| {row['method']} | {_settings_text(meta['settings'].get(row['method'], {}))} |")
    lines += ["", "## Diagnostics (after the last epoch, mean over seeds)", "",
              "Hypergradient norms of learned methods; learned task weights (mean over the last epoch); the cosine "
              "between main and auxiliary gradients on the trunk; for label generators, how spread the generated "
              "labels are (entropies normalised by log psi: 0 = one sub-class, 1 = uniform; usage entropy near 0 "
              "means the labels collapsed).", "",
              "| method | diagnostics |", "|---|---|"]
    for row in table:
        diags = [r.get("diagnostics", {}) for r in runs if r["method"] == row["method"]]
        lines.append(f"| {row['method']} | {_diag_text(row['method'], diags)} |")
    return "\n".join(lines) + "\n"


def data_note(cfg: Any, sizes: dict[str, int] | None) -> str:
    d = cfg.data
    source = Path(d.root).name
    official = source.startswith("cifar-10-batches")
    kind = ("CIFAR-10 re-encoded as a JPEG ImageFolder tree" if d.dataset == "cifar10" and not official
            else f"{d.dataset} from {source}")
    if d.labeled_fraction is not None:
        labelled = f"{d.labeled_fraction:.0%} of the training labels"
    else:
        labelled = f"{d.labeled_per_class} labelled images per class"
    note = (f"{kind} (`{d.root}`); {labelled}, of which {d.aux_fraction:.0%} are held out as the auxiliary (outer) "
            f"set and {d.val_fraction:.0%} for validation / model selection, stratified and seeded by data.seed; "
            f"augmentation {'on' if d.augment else 'off'}")
    if sizes:
        labelled_n = sizes["train"] + sizes["aux"] + sizes["val"]
        note += (f". Sizes: {labelled_n:,} labelled = {sizes['train']:,} train + {sizes['aux']:,} aux + "
                 f"{sizes['val']:,} val; test {sizes['test']:,} images")
        note += " (the full CIFAR-10 test set)" if sizes["test"] == 10000 else f" (data.test_limit={d.test_limit})"
    return note


def canonical_command(methods: Sequence[str], seeds: Sequence[int] | None, epochs: int | None, backbone: str,
                      width: int | None, out_dir: str | Path, tag: str | None, quick: bool,
                      extra_overrides: Sequence[str], runs_dir: str | Path | None, tracking: bool,
                      jobs: int = 1) -> str:
    """The `python jobs/reproduce.py ...` line that repeats this invocation."""
    parts = ["python", "jobs/reproduce.py"]
    if quick:
        parts.append("--quick")
    if tuple(methods) != DEFAULT_METHODS:
        parts += ["--methods", ",".join(methods)]
    if seeds is not None:  # None: the default seeds
        parts += ["--seeds", ",".join(str(s) for s in seeds)]
    if epochs is not None:
        parts += ["--epochs", str(epochs)]
    if backbone != "convnet4":
        parts += ["--backbone", backbone]
    if width is not None:
        parts += ["--width", str(width)]
    if str(out_dir) != "benchmarks/results":
        parts += ["--out-dir", str(out_dir)]
    if runs_dir is not None:
        parts += ["--runs-dir", str(runs_dir)]
    if tag is not None:
        parts += ["--tag", tag]
    if tracking:
        parts.append("--track")
    if jobs != 1:
        parts += ["--jobs", str(jobs)]
    for o in extra_overrides:
        parts += ["--set", o]
    return shlex.join(parts)


# ---- the driver -----------------------------------------------------------------------------------------
def resumable_run(cfg: Any, name: str) -> tuple[bool, int, float]:
    """Whether the newest checkpoint of this run (an earlier job killed mid-run) has the very same config,
    and if so the epoch it reached and the seconds its epochs took."""
    from auxray.train.checkpoint import LATEST, load_checkpoint
    from auxray.train.run import newest_run_dir

    run_dir = newest_run_dir(cfg.trainer.checkpoint_dir, name)
    if run_dir is None or not (run_dir / "config.json").is_file():
        return False, 0, 0.0
    try:
        if json.loads((run_dir / "config.json").read_text()) != json.loads(cfg.model_dump_json()):
            return False, 0, 0.0
        state = load_checkpoint(run_dir / LATEST)
    except Exception:  # a torn checkpoint: start the run over
        return False, 0, 0.0
    history = state.get("history", [])
    return True, int(state.get("epoch", 0)), float(sum(h.get("epoch_seconds", 0.0) for h in history))


def _train_one(cfg: Any, name: str, tracking: bool, verbose: bool,
               resume: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    from auxray.train.run import run_training

    diag = Diagnostics()
    quiet = log if verbose else (lambda message: None)
    resumed, from_epoch, earlier_seconds = resumable_run(cfg, name) if resume else (False, 0, 0.0)
    if resumed:
        log(f"[reproduce] {name}: resuming its interrupted run at epoch {from_epoch}/{cfg.trainer.epochs}")
    if tracking:
        from auxray.tracking import check_reachable, resolve_uri, tracked_run

        uri = resolve_uri(None, cfg.tracking)
        check_reachable(uri)
        with tracked_run(uri, cfg.tracking.experiment, cfg.tracking.run_name or name, cfg=cfg) as tracker:
            summary = run_training(cfg, name=name, resume=resumed, progress=False, log=quiet,
                                   callbacks=[diag, tracker])
            tracker.finish(result=summary)
    else:
        summary = run_training(cfg, name=name, resume=resumed, progress=False, log=quiet, callbacks=[diag])
    if resumed:  # count the interrupted part's epochs too (not its start-up)
        summary["seconds"] += earlier_seconds
        summary["resumed_from_epoch"] = from_epoch
    return summary, diag.out


def threads_per_job(jobs: int) -> int:
    """Torch threads for each of `jobs` concurrent runs: the usable CPUs split evenly, at least one."""
    return max(1, usable_cpus() // jobs)


def _init_job(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def train_all(pending: Sequence[tuple[str, int]], cfgs: dict[tuple[str, int], Any], tracking: bool, verbose: bool,
              resume: bool, jobs: int, threads: int | None):
    """Yield (method, seed, summary, diagnostics) as runs finish: in this process one after another (jobs=1), or
    up to `jobs` at a time in spawned processes with `threads` torch threads each. Small networks use two cores
    poorly within one process, so two single-threaded runs at a time finish a table sooner on a 2-core machine.
    When a run fails, the runs not started are dropped, the ones under way still finish and are yielded, and
    then the first error is raised."""
    if jobs <= 1:
        for m, s in pending:
            summary, diag = _train_one(cfgs[m, s], f"{m}_s{s}", tracking, verbose, resume=resume)
            yield m, s, summary, diag
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    error: BaseException | None = None
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_job, initargs=(threads,)) as pool:
        futures = {pool.submit(_train_one, cfgs[m, s], f"{m}_s{s}", tracking, verbose, resume=resume): (m, s)
                   for m, s in pending}
        while futures:
            finished, _ = wait(futures, return_when=FIRST_COMPLETED)
            for f in finished:
                m, s = futures.pop(f)
                if f.cancelled():
                    continue
                if f.exception() is not None:
                    error = error or f.exception()
                    for other in futures:
                        other.cancel()
                    continue
                summary, diag = f.result()
                yield m, s, summary, diag
    if error is not None:
        raise error


def run_reproduce(
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    epochs: int | None = None,
    backbone: str = "convnet4",
    width: int | None = None,
    out_dir: str | Path = "benchmarks/results",
    tag: str | None = None,
    quick: bool = False,
    extra_overrides: Sequence[str] = (),
    *,
    fresh: bool = False,
    runs_dir: str | Path | None = None,
    tracking: bool = False,
    verbose: bool = False,
    config_dir: str | Path = CONFIG_DIR,
    command: str | None = None,
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Train every (method, seed) not yet in the progress file, then write the JSON and Markdown tables.

    quick: 1 seed (unless `seeds` is given), 1 epoch (unless `epochs`), 40 labelled images
    per class and 1,000 test images. jobs: runs trained at once (each in its own process, the CPUs split
    between them). Returns the JSON table (one dict per method)."""
    from auxray.config import METHODS, load_config
    from auxray.errors import UserError

    t_start = time.perf_counter()
    methods = tuple(methods)
    command = command or canonical_command(methods, None if seeds is DEFAULT_SEEDS else seeds, epochs, backbone,
                                           width, out_dir, tag, quick, extra_overrides, runs_dir, tracking, jobs)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UserError(f"unknown method(s) {unknown or '(none given)'}; choose from {', '.join(METHODS)}")
    if quick and seeds is DEFAULT_SEEDS:  # the default, not seeds asked for explicitly
        seeds = (0,)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise UserError("no seeds given")
    if quick and epochs is None:
        epochs = 1
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    tag = tag or default_tag(backbone, quick)
    out = Path(out_dir)
    runs_file = out / f"reproduce_{tag}.runs.jsonl"
    ckpt_root = Path(runs_dir) if runs_dir is not None else Path("runs") / "reproduce" / tag

    # Resolve every config first: a bad option fails before any training, and the shared settings are checked.
    cfgs: dict[tuple[str, int], Any] = {}
    for m in methods:
        path = Path(config_dir) / f"{m}.yaml"
        for s in seeds:
            cfgs[m, s] = load_config(path, method_overrides(s, epochs, backbone, width, quick, tracking,
                                                            ckpt_root.resolve(), extra_overrides))
    reference = shared_settings(cfgs[methods[0], seeds[0]])
    for (m, s), cfg in cfgs.items():
        mine = shared_settings(cfg)
        if mine != reference:
            diff = [f"{sec}.{k}: {reference[sec].get(k)!r} ({methods[0]}) vs {mine[sec].get(k)!r} ({m})"
                    for sec in reference for k in set(reference[sec]) | set(mine[sec])
                    if reference[sec].get(k) != mine[sec].get(k)]
            raise UserError("methods must share data/model/trainer settings for a fair table; " + "; ".join(diff))
    epochs = cfgs[methods[0], seeds[0]].trainer.epochs

    if fresh and runs_file.exists():
        runs_file.unlink()
    previous = read_runs(runs_file)
    done = {(r["method"], r["seed"], r.get("fingerprint")): r for r in previous}

    todo = [(m, s) for s in seeds for m in methods]
    fps = {key: fingerprint(cfg) for key, cfg in cfgs.items()}
    results: dict[tuple[str, int], dict[str, Any]] = {}
    skipped = 0
    pending: list[tuple[str, int]] = []
    for i, (m, s) in enumerate(todo, 1):
        row = done.get((m, s, fps[m, s]))
        if row is None:
            pending.append((m, s))
            continue
        results[m, s] = row
        skipped += 1
        log(f"[reproduce {i}/{len(todo)}] {m} seed {s}: done before, test acc {row['test_accuracy']:.4f} (skipped)")
    threads = threads_per_job(jobs) if jobs > 1 else None
    spent: dict[str, list[float]] = {}
    for m, s, summary, diag in train_all(pending, cfgs, tracking, verbose, not fresh, jobs, threads):
        row = {"method": m, "seed": s, "test_accuracy": summary["test_accuracy"], "seconds": summary["seconds"],
               "best_val_accuracy": summary["best_val_accuracy"], "epochs": summary["epochs"],
               "final_test_accuracy": summary.get("final_test_accuracy"), "best_epoch": summary.get("best_epoch"),
               "backbone": cfgs[m, s].model.backbone, "run_dir": summary.get("run_dir"),
               "fingerprint": fps[m, s], "settings": method_settings(cfgs[m, s]), "diagnostics": diag,
               "resumed_from_epoch": summary.get("resumed_from_epoch"), "jobs": jobs, "threads": threads,
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        append_run(runs_file, row)
        results[m, s] = row
        spent.setdefault(m, []).append(row["seconds"])
        left = [p for p in pending if p not in results]
        overall = [x for v in spent.values() for x in v]
        eta = sum(sum(spent[mm]) / len(spent[mm]) if mm in spent else sum(overall) / len(overall)
                  for mm, _ in left) / jobs
        log(f"[reproduce {len(results)}/{len(todo)}] {m} seed {s}: test acc {row['test_accuracy']:.4f} in "
            f"{row['seconds']:.1f}s (ETA {fmt_seconds(eta)} for {len(left)} more)")
    ran = len(results) - skipped

    # Methods not asked for this time but finished earlier with the same settings stay in the table, so a partial
    # re-run (say --methods jtds after a fix) adds to the table rather than replacing it.
    carried: list[str] = []
    for m in METHODS:
        if m in methods:
            continue
        for s in seeds:
            try:
                c = load_config(Path(config_dir) / f"{m}.yaml", method_overrides(
                    s, epochs, backbone, width, quick, tracking, ckpt_root.resolve(), extra_overrides))
            except Exception:  # no config for it, or an override it does not take
                break
            row = done.get((m, s, fingerprint(c)))
            if row is not None and shared_settings(c) == reference:
                results[m, s], cfgs[m, s] = row, c
                if m not in carried:
                    carried.append(m)
    table_methods = methods
    if carried:  # the usual order, not "asked for first"
        order = [*DEFAULT_METHODS, *(m for m in METHODS if m not in DEFAULT_METHODS)]
        table_methods = tuple(sorted(methods + tuple(carried), key=order.index))
    finished = [results[m, s] for s in seeds for m in table_methods if (m, s) in results]
    table = build_table(finished, table_methods)
    sizes = next((r["diagnostics"].get("sizes") for r in finished if r.get("diagnostics", {}).get("sizes")), None)
    device = next((r["diagnostics"].get("device") for r in finished if r.get("diagnostics", {}).get("device")), None)
    first = cfgs[methods[0], seeds[0]]
    meta = {
        "tag": tag, "quick": quick, "command": command, "backbone": backbone, "width": first.model.width,
        "epochs": epochs, "seeds": list(seeds), "shared": reference,
        "settings": {m: method_settings(next(cfgs[m, x] for x in seeds if (m, x) in cfgs)) for m in table_methods},
        "carried": carried,
        "data_note": data_note(first, sizes), "machine": machine_info(device),
        "wall_seconds": time.perf_counter() - t_start, "ran": ran, "skipped": skipped, "runs_file": str(runs_file),
        "jobs": jobs, "threads_per_job": threads,
    }
    out.mkdir(parents=True, exist_ok=True)
    for row in table:
        row["settings"] = meta["settings"][row["method"]]
    (out / f"reproduce_{tag}.json").write_text(json.dumps(table, indent=2, default=float) + "\n")
    from auxray.bench.reproduce_plot import plot_reproduce

    picture = plot_reproduce(table, out / f"reproduce_{tag}.png",
                             f"CIFAR-10, 5% labels: {backbone}, {epochs} epochs, seeds {', '.join(map(str, seeds))}")
    meta["picture"] = picture.name if picture else None
    (out / f"reproduce_{tag}.md").write_text(render_markdown(table, finished, meta))
    log(f"[reproduce] {ran} runs trained, {skipped} reused, {meta['wall_seconds']:.1f}s; wrote "
        f"{out / f'reproduce_{tag}.json'} and {out / f'reproduce_{tag}.md'}")
    return table


def parse_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def add_arguments(p: Any) -> None:
    """The options shared by `python jobs/reproduce.py` and `auxray bench reproduce`."""
    p.add_argument("--quick", action="store_true",
                   help="1 seed, 1 epoch, 40 labelled images per class, 1,000 test images (a few minutes on CPU)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated methods")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; --quick: 0)")
    p.add_argument("--epochs", type=int, default=None, help="epoch budget for every method (default: the configs')")
    p.add_argument("--backbone", default="convnet4", choices=["convnet4", "vgg16", "resnet18"])
    p.add_argument("--width", type=int, default=None, help="ConvNet-4 base width (default: the configs')")
    p.add_argument("--out-dir", default="benchmarks/results", help="where the tables and the progress file go")
    p.add_argument("--runs-dir", default=None, help="checkpoint folder (default runs/reproduce/<tag>)")
    p.add_argument("--tag", default=None, help="file tag (default cifar10_5pct_<backbone>, --quick: quick_<backbone>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override applied to every method (repeatable)")
    p.add_argument("--fresh", action="store_true", help="forget finished runs and start over")
    p.add_argument("--track", action="store_true", help="log each run to MLflow (off by default)")
    p.add_argument("--verbose", action="store_true", help="also print each run's per-epoch lines")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each in its own process with the CPUs split between them (default 1)")


def run_from_args(args: Any) -> list[dict[str, Any]]:
    """run_reproduce from parsed add_arguments options."""
    from auxray.errors import UserError

    try:
        seeds = tuple(int(s) for s in parse_list(args.seeds)) if args.seeds else DEFAULT_SEEDS
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
    return run_reproduce(methods=tuple(parse_list(args.methods)), seeds=seeds, epochs=args.epochs,
                         backbone=args.backbone, width=args.width, out_dir=args.out_dir, tag=args.tag,
                         quick=args.quick, extra_overrides=tuple(args.overrides), fresh=args.fresh,
                         runs_dir=args.runs_dir, tracking=args.track, verbose=args.verbose, jobs=args.jobs)
