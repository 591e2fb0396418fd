"""Render benchmark JSON under benchmarks/results/ into the marked sections of README.md and docs/*.md, so every
figure in them is copied from a run's output, next to the command that made it.

    python -m auxray.bench.report            # rewrite every <!-- bench:NAME --> section of README.md and docs/*.md
    python -m auxray.bench.report --check    # list the sections that differ from their JSON; exit 1 if any
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from auxray.bench.accuracy_page import render_reproduce, render_semisup
from auxray.bench.cost_page import (
    render_distributed,
    render_hypergrad,
    render_overhead,
    render_sweep_faults,
    render_trial_cost,
)
from auxray.bench.harmful_page import render_harmful
from auxray.bench.sweep_page import render_sweep
from auxray.bench.weighting_page import render_summary

RESULTS = Path("benchmarks/results")


RENDERERS: dict[str, tuple[str, Callable[..., str]]] = {
    "hypergrad": ("bench_hypergrad_cpu.json", render_hypergrad),
    "distributed": ("bench_distributed_cpu.json", render_distributed),
    "sweep": ("bench_sweep_scale_cpu.json", render_sweep),
    "trial_cost": ("bench_trial_cost_cpu.json", render_trial_cost),
    "sweep_faults": ("bench_sweep_faults_cpu.json", render_sweep_faults),
    "reproduce": ("reproduce_cifar10_5pct_convnet4.json", render_reproduce),
    "semisup": ("reproduce_cifar10_5pct_semisup_convnet4.json", render_semisup),
    "semisup_noise": ("reproduce_cifar10_5pct_semisup_noise_convnet4.json", render_semisup),
    "overhead": ("bench_overhead_cpu.json", render_overhead),
    "harmful": ("bench_harmful_cpu.json", render_harmful),
    "weighting": ("weighting_cifar10_5pct_semisup.json", render_summary),
}
# A second JSON a section's renderer takes when it exists (passed as its second argument).
COMPANIONS: dict[str, str] = {"overhead": "bench_overhead_cpu_breakdown.json"}


MARKER = re.compile(r"<!-- bench:(\w+) -->")


def pages(root: Path = Path(".")) -> list[Path]:
    """The pages that hold rendered sections: README.md and docs/*.md under the repository root."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _section(name: str) -> re.Pattern[str]:
    """Section NAME: its start marker, the rendered body, its end marker."""
    return re.compile(rf"(<!-- bench:{name} -->\n)(?:.*?\n)?(<!-- /bench:{name} -->)", re.S)


def render_section(name: str, results: Path = RESULTS) -> str | None:
    """Section NAME rendered from its JSON (and its companion's, when that exists); None without the JSON."""
    filename, render = RENDERERS[name]
    path = results / filename
    if not path.is_file():
        return None
    companion = results / COMPANIONS[name] if name in COMPANIONS else None
    extra = [json.loads(companion.read_text())] if companion is not None and companion.is_file() else []
    return render(json.loads(path.read_text()), *extra)


def render_text(text: str, results: Path = RESULTS) -> tuple[str, list[str]]:
    """TEXT with each marked section whose JSON exists re-rendered, and the names rendered."""
    done = []
    for name in RENDERERS:
        pattern = _section(name)
        body = render_section(name, results) if pattern.search(text) else None
        if body is not None:

            def fill(m: re.Match[str], body: str = body) -> str:
                return m.group(1) + body + "\n" + m.group(2)

            text = pattern.sub(fill, text)
            done.append(name)
    return text, done


def update_page(page: Path, results: Path = RESULTS) -> list[str]:
    """Replace each marked section of PAGE whose JSON exists; returns the names updated."""
    text, done = render_text(page.read_text(), results)
    page.write_text(text)
    return done


def stale_sections(root: Path = Path("."), results: Path = RESULTS) -> list[str]:
    """'page: name' for every marked section that differs from its JSON, or has no JSON, renderer or end marker."""
    stale = []
    for page in pages(root):
        text = page.read_text()
        for name in dict.fromkeys(MARKER.findall(text)):
            sections = list(_section(name).finditer(text)) if name in RENDERERS else []
            body = render_section(name, results) if sections else None
            if body is None or any(m[0] != f"{m[1]}{body}\n{m[2]}" for m in sections):
                stale.append(f"{page.relative_to(root)}: {name}")
    return stale


def main(argv: list[str] | None = None) -> int:
    """Re-render every page (or, with --check, list the stale sections and exit 1 if there are any)."""
    parser = argparse.ArgumentParser(prog="python -m auxray.bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; list the stale sections, exit 1 if any")
    if parser.parse_args(argv).check:
        stale = stale_sections()
        print("\n".join(stale) or "every section matches its JSON", file=sys.stderr)
        return 1 if stale else 0
    for page in pages():
        print(f"{page}: {', '.join(update_page(page)) or 'nothing'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
