"""The documentation holds together: every relative link and anchor in README.md, CONTRIBUTING.md and
docs/*.md resolves, and every `python ...` and `make ...` command in the README names a file or a
Makefile target that exists."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT))
from scripts.plot_results import main as plot_results  # noqa: E402

PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
COMMAND = re.compile(r"(?:^|`|\$ |&& )((?:python|make) [^`\n]*)", re.MULTILINE)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert page.is_file()
    for target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link to {target}: no such file"
        if anchor:
            assert anchor in anchors(resolved), f"{page.name}: link to {target}: no such heading"


def test_the_readme_commands_name_files_and_targets_that_exist():
    readme = (ROOT / "README.md").read_text()
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))
    commands = [shlex.split(command.split("#")[0].rstrip("\\ ")) for command in COMMAND.findall(readme)]
    assert len(commands) >= 8
    for words in commands:
        if words[0] == "make":
            assert words[1] in targets, f"README: make {words[1]}: no such Makefile target"
        else:
            script = next(word for word in words[1:] if not word.startswith("-"))
            assert (ROOT / script).is_file(), f"README: python {script}: no such file"


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 220


def test_the_plots_redraw_from_the_committed_results(tmp_path):
    """scripts/plot_results.py turns docs/results/*.json into the three PNGs the docs show."""
    assert plot_results(["--out", str(tmp_path)]) == 0
    for name in ("quality.png", "quality_vs_steps.png", "speed.png"):
        with Image.open(tmp_path / name) as image:
            assert image.width > 400 and image.height > 300, name
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is not committed"
