"""README benchmark sections are rendered from the committed JSON results, and the plot of the reproduction
table is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from auxray.bench.report import RENDERERS, update_readme
from auxray.bench.reproduce_plot import plot_reproduce
from tests.conftest import REPO

ROW = {"method": "stl", "mean": 0.5123, "std": 0.0047, "accuracies": [0.51, 0.5146], "seconds": 61.0,
       "relative_time": 1.0, "paper": {"mean": 0.508, "std": 0.008}}


def test_marked_section_is_replaced_from_json(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / RENDERERS["reproduce"][0]).write_text(json.dumps([ROW, {**ROW, "method": "jtds", "paper": None,
                                                                       "relative_time": 2.5}]))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:reproduce -->\nold numbers\n<!-- /bench:reproduce -->\noutro\n")
    assert update_readme(readme, results) == ["reproduce"]
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert "| stl | 50.8 ± 0.8 | 51.2 ± 0.5 | 51.0, 51.5 | 61 | 1 |" in text
    assert "| jtds | – | 51.2 ± 0.5 | 51.0, 51.5 | 61 | 2.5 |" in text


def test_committed_readme_matches_committed_results(tmp_path: Path) -> None:
    """Re-rendering the README from benchmarks/results changes nothing: its figures are the JSON's."""
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    updated = update_readme(readme, REPO / "benchmarks" / "results")
    marked = {name for name in RENDERERS if f"<!-- bench:{name} -->" in readme.read_text()}
    assert marked and set(updated) == marked
    assert readme.read_text() == (REPO / "README.md").read_text()


def test_reproduce_plot_written(tmp_path: Path) -> None:
    out = plot_reproduce([ROW, {**ROW, "method": "maxl", "relative_time": None}], tmp_path / "t.png", "title")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_reproduce([], tmp_path / "empty.png", "title") is None
    assert not (tmp_path / "empty.png").exists()
