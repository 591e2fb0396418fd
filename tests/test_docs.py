"""The README and docs/*.md hold together: every relative link and #anchor resolves, and every documented command
parses with the parser that would run it and names files that exist. The long benchmark commands in docs/ are
documentation only (they made the committed figures, in minutes to hours): this is what checks them."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from auxray.bench.report import pages
from auxray.cli import build_parser
from tests.conftest import REPO

PAGES = pages(REPO)
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# A command is a fenced bash line or an inline code span that starts with one of these.
COMMAND_START = ("uv run ", "python jobs/", "bash ", "ray ", "kubectl ", "deploy/", "RAY_AUTH_MODE=", "pip install ")
# Tokens that name a file or folder of the repository when they start with one of these.
REPO_PATHS = ("configs/", "deploy/", "benchmarks/", "jobs/", "examples/", "tests/", "docs/", "auxray/")
# Stand-ins for a synopsis's placeholders (`auxray train CONFIG`, `tracking replay FILE`, `http://<head>:8265`).
PLACEHOLDERS = {"CONFIG": "configs/demo.yaml", "FILE": "spool.jsonl", "<head>": "head"}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The #anchors of a Markdown page's headings (fenced code skipped; repeats get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if m := re.match(r"#{1,6} (.+)", line):
            base = slug(m[1])
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


def broken_links(page: Path) -> list[str]:
    """The relative links of PAGE (outside fenced code) whose file or heading does not exist."""
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no such heading in {file.name})")
    return broken


def commands(page: Path) -> list[str]:
    """Every command PAGE shows: fenced bash lines (continuations joined, comments dropped) and inline code spans
    that start like one; each `&&`-joined part on its own."""
    text = page.read_text()
    found = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            found.append(re.sub(r"\s+#.*$", "", line).strip())
    for span in re.findall(r"`([^`\n]+)`", FENCE.sub("", text).replace("\n", " ")):
        found += [span] if span.startswith(COMMAND_START) else []
    return [part.strip() for cmd in found if cmd for part in cmd.split(" && ")]


def _reproduce_parser() -> argparse.ArgumentParser:
    """The parser jobs/reproduce.py builds, from the options that script itself imports."""
    spec = importlib.util.spec_from_file_location("jobs_reproduce", REPO / "jobs" / "reproduce.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = argparse.ArgumentParser(prog="jobs/reproduce.py")
    module.add_arguments(parser)
    return parser


def _parse(argv: list[str]) -> list[str]:
    """Parse one command line as its program would; returns the problems found (none when it would run)."""
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # environment assignments
        argv = argv[1:]
    if argv[:2] == ["uv", "run"]:
        argv = argv[2:]
    if argv[:3] == ["ray", "job", "submit"] and "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if argv[:1] == ["python"]:
        argv = argv[1:]
    program, args = argv[0], argv[1:]
    cli_prefix = {
        "auxray": [],
        "jobs/train.py": ["train"],
        "jobs/sweep.py": ["sweep"],
        "jobs/weighting.py": ["bench", "weighting"],
    }
    try:
        if program in cli_prefix:
            build_parser().parse_args([*cli_prefix[program], *args])
        elif program == "jobs/reproduce.py":
            ns = _reproduce_parser().parse_args(args)
            names = ns.methods.split(",") if ns.methods else []
            missing = [m for m in names if not (REPO / ns.config_dir / f"{m}.yaml").is_file()]
            if missing:
                return [f"no config for --methods {', '.join(missing)} in {ns.config_dir}"]
    except SystemExit as exit:
        return [] if exit.code == 0 else ["does not parse"]
    return []


def as_written(command: str) -> list[str]:
    """The command lines a synopsis stands for: placeholders filled, optional parts included, `...` dropped, and for
    `a | b | c` one `--help` line per alternative (each must be a subcommand). A plain command is itself; a mention
    such as `uv run auxray ...` stands for none."""
    if re.fullmatch(r"(uv run )?\S+ \.\.\.", command):
        return []
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    command = re.sub(r"[\[\]]|\s\.\.\.", "", command)
    first, *alternatives = command.split(" | ")
    if not alternatives:
        return [command]
    prefix = first.rsplit(" ", 1)[0]
    return [f"{prefix} {word} --help" for word in [first.rsplit(" ", 1)[1], *alternatives]]


def problems(command: str) -> list[str]:
    """Why COMMAND would not run as written: a parse error, or a repository file it names that does not exist."""
    found = []
    for line in as_written(command):
        argv = shlex.split(line)
        found += [
            f"{token} does not exist"
            for token in argv
            for path in [token.split("=", 1)[-1]]
            if path.startswith(REPO_PATHS) and "$" not in path and not (REPO / path).exists()
        ]
        found += _parse(argv)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_parses_and_names_existing_files(page: Path) -> None:
    assert {c: problems(c) for c in commands(page) if problems(c)} == {}


def test_the_checks_catch_a_renamed_flag_a_missing_file_and_a_broken_link(tmp_path: Path) -> None:
    assert problems("uv run auxray bench hypergrad --outfile x.json") == ["does not parse"]
    (missing_config,) = problems("python jobs/reproduce.py --methods maxl,nope --seeds 0")
    assert missing_config.startswith("no config for --methods nope in ") and missing_config.endswith("cifar10_5pct")
    assert problems("uv run auxray train configs/missing.yaml") == ["configs/missing.yaml does not exist"]
    assert as_written("uv run auxray train CONFIG [--json] [--set key=value ...]") == [
        "uv run auxray train configs/demo.yaml --json --set key=value"
    ]
    assert problems("uv run auxray bench hypergrad | distributed | nope") == ["does not parse"]
    assert problems("uv run auxray bench hypergrad | distributed") == []
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) [gone](missing.md) [nowhere](#bottom) [web](https://example.org)\n")
    assert broken_links(page) == ["missing.md (no such file)", "#bottom (no such heading in page.md)"]


def test_pages_are_the_readme_and_every_docs_page() -> None:
    assert PAGES[0] == REPO / "README.md" and {p.name for p in PAGES[1:]} == {p.name for p in REPO.glob("docs/*.md")}
    assert len(PAGES) > 1
    readme = commands(REPO / "README.md")
    assert "pip install uv" in readme and "uv run auxray train configs/demo.yaml" in readme
