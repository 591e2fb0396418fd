"""The benchmark sections of the README and docs/*.md are rendered from the committed JSON results (a stale one
fails), and the plot of the reproduction table is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from auxray.bench.report import MARKER, RENDERERS, pages, stale_sections, update_page
from auxray.bench.reproduce_plot import plot_reproduce
from tests.conftest import REPO

ROW = {
    "method": "stl",
    "mean": 0.5123,
    "std": 0.0047,
    "accuracies": [0.51, 0.5146],
    "final_mean": 0.5301,
    "final_std": 0.0012,
    "seconds": 61.0,
    "relative_time": 1.0,
    "paper": {"mean": 0.508, "std": 0.008},
}


def test_marked_section_is_replaced_from_json(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / RENDERERS["reproduce"][0]).write_text(
        json.dumps([ROW, {**ROW, "method": "jtds", "paper": None, "relative_time": 2.5}])
    )
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:reproduce -->\nold numbers\n<!-- /bench:reproduce -->\noutro\n")
    assert update_page(readme, results) == ["reproduce"]
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert "| stl | 50.8 ± 0.8 | 51.2 ± 0.5 | 51.0, 51.5 | 53.0 ± 0.1 | 61 | 1 |" in text
    assert "| jtds | – | 51.2 ± 0.5 | 51.0, 51.5 | 53.0 ± 0.1 | 61 | 2.5 |" in text


def test_committed_pages_match_committed_results(tmp_path: Path) -> None:
    """Re-rendering README.md and docs/*.md from benchmarks/results changes nothing: their figures are the JSON's, and
    every section has a page."""
    results = REPO / "benchmarks" / "results"
    assert stale_sections(REPO, results) == []
    marked = {name for page in pages(REPO) for name in MARKER.findall(page.read_text())}
    assert marked == set(RENDERERS)
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    for page in pages(tmp_path):
        update_page(page, results)
        assert page.read_text() == (REPO / page.relative_to(tmp_path)).read_text()


def test_a_stale_section_is_listed_until_rendered_again(tmp_path: Path) -> None:
    """A changed JSON row makes every page that shows its section stale; so does a marker without JSON, renderer or
    end marker. Rendering again fixes the stale ones."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "benchmarks" / "results", results, ignore=shutil.ignore_patterns("*.runs.jsonl", "*.png"))
    filename = RENDERERS["semisup"][0]
    rows = json.loads((results / filename).read_text())
    rows[0]["mean"] += 0.01
    (results / filename).write_text(json.dumps(rows))
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    showing = sorted(str(p.relative_to(tmp_path)) for p in pages(tmp_path) if "<!-- bench:semisup -->" in p.read_text())
    assert "README.md" in showing and len(showing) > 1
    assert stale_sections(tmp_path, results) == [f"{page}: semisup" for page in showing]

    extra = tmp_path / "docs" / "extra.md"
    extra.write_text("<!-- bench:nosuch -->\nx\n<!-- /bench:nosuch -->\n<!-- bench:sweep -->\nno end marker\n")
    stale = stale_sections(tmp_path, results)
    assert [s for s in stale if s.startswith("docs/extra.md")] == ["docs/extra.md: nosuch", "docs/extra.md: sweep"]
    extra.unlink()
    for page in pages(tmp_path):
        update_page(page, results)
    assert stale_sections(tmp_path, results) == []
    assert "| stl | none | 59.9 ± 1.4 |" in (tmp_path / "README.md").read_text()


def test_reproduce_plot_written(tmp_path: Path) -> None:
    out = plot_reproduce([ROW, {**ROW, "method": "maxl", "relative_time": None}], tmp_path / "t.png", "title")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_reproduce([], tmp_path / "empty.png", "title") is None
    assert not (tmp_path / "empty.png").exists()


def test_table_task_weight_plot_keeps_one_colour_per_task_across_panels(tmp_path: Path, monkeypatch) -> None:
    """Panels of different task sets (a helpful and a harmful set) draw a task in the same colour, and the legend
    names every task once."""
    from auxray.bench import reproduce_plot

    figures = []
    monkeypatch.setattr(reproduce_plot, "save_figure", lambda fig, path: figures.append(fig) or path)
    runs = [
        {"method": "a (helpful)", "diagnostics": {"task_weight_history": {"x": [1.0, 2.0], "y": [1.0, 1.0]}}},
        {"method": "a (harmful)", "diagnostics": {"task_weight_history": {"y": [1.0, 0.5], "z": [1.0, 0.1]}}},
    ]
    reproduce_plot.plot_task_weights(runs, tmp_path / "w.png", "weights")
    (fig,) = figures
    colours = [{line.get_label(): line.get_color() for line in ax.get_lines()} for ax in fig.axes]
    assert colours[0]["y"] == colours[1]["y"] and len({colours[0]["x"], colours[0]["y"], colours[1]["z"]}) == 3
    assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == ["x", "y", "z"]


def test_table_task_weight_plot_wraps_many_methods_into_rows(tmp_path: Path, monkeypatch) -> None:
    """Six methods: two rows of at most four panels (the spare two hidden), the rows labelled, one legend."""
    from auxray.bench import reproduce_plot

    figures = []
    monkeypatch.setattr(reproduce_plot, "save_figure", lambda fig, path: figures.append(fig) or path)
    runs = [{"method": f"m{i}", "diagnostics": {"task_weight_history": {"x": [1.0, 0.5]}}} for i in range(6)]
    reproduce_plot.plot_task_weights(runs, tmp_path / "w.png", "weights")
    (fig,) = figures
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.axes) == 8 and [ax.get_title() for ax in shown] == [f"m{i}" for i in range(6)]
    assert [ax.get_ylabel() != "" for ax in shown] == [True, False, False, False, True, False]
    assert [ax.get_legend() is not None for ax in shown] == [False] * 5 + [True]
