"""The README and docs/ say what is true: their examples print what they show, the
modules and files they name exist, and the README fits on a screen.

An example is a ```console block: ``$ `` starts a command (``> `` continues it), the
lines after it are its standard output. Each runs with bash in a scratch directory
holding a copy of ``tests/data`` and this checkout's ``.venv``; the one substitution is
``/tmp/khod-demo``, the examples' scratch directory (docs/testing.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DEMO = "/tmp/khod-demo"


@dataclass(frozen=True)
class Example:
    page: str
    line: int
    command: str
    output: str


def examples(page: Path) -> list[Example]:
    found: list[Example] = []
    in_console = False
    cmd: list[str] = []
    out: list[str] = []
    start = 0

    def close() -> None:
        if cmd:
            name = str(page.relative_to(REPO))
            found.append(Example(name, start, "\n".join(cmd), "".join(x + "\n" for x in out)))
        cmd.clear()
        out.clear()

    for n, line in enumerate(page.read_text().splitlines(), 1):
        if not in_console:
            in_console = line.strip() == "```console"
            continue
        if line.startswith("```"):
            close()
            in_console = False
        elif line.startswith("$ "):
            close()
            cmd.append(line[2:])
            start = n
        elif line.startswith("> ") and cmd and not out:
            cmd.append(line[2:])
        else:
            out.append(line)
    return found


def all_examples() -> list[Example]:
    return [e for page in PAGES for e in examples(page)]


def test_the_readme_fits_on_a_screen_and_points_at_every_page() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for page in (REPO / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in readme, page.name
    assert "make run" in readme and "make test" in readme
    assert (REPO / ".ci" / "run").read_text().rstrip().endswith("exec make test")


def test_the_examples_print_what_the_docs_show(tmp_path: Path) -> None:
    found = all_examples()
    assert {e.page for e in found} >= {"README.md"}
    work = tmp_path / "checkout"
    shutil.copytree(REPO / "tests" / "data", work / "tests" / "data")
    (work / ".venv").symlink_to(REPO / ".venv")
    demo = tmp_path / "demo"  # made by khod, as on a host
    for e in found:
        r = subprocess.run(
            ["bash", "-c", e.command.replace(DEMO, str(demo))],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        where = f"{e.page}:{e.line}: {e.command.splitlines()[0]}"
        assert r.returncode == 0, f"{where}\n{r.stderr}"
        assert r.stdout.replace(str(demo), DEMO) == e.output, where


PATH_RE = re.compile(r"(?<![\w./~-])(khod|tests|bench|systemd|packaging|migrations)/[\w./-]*\w")


def test_every_file_the_docs_name_exists() -> None:
    missing = []
    for page in PAGES:
        text = page.read_text()
        for m in PATH_RE.finditer(text):
            path = m.group(0)
            if text[m.end() : m.end() + 1] in ("*", "<", "{", "$"):
                continue  # a pattern (step*, host_<id>), not a file
            if not (REPO / path).exists():
                missing.append(f"{page.relative_to(REPO)}: {path}")
    assert missing == []


LINK_RE = re.compile(r"\]\(([^)#:]+)(#[^)]*)?\)")


def test_every_link_between_pages_resolves() -> None:
    broken = []
    for page in PAGES:
        text = page.read_text()
        for m in LINK_RE.finditer(text):
            target = (page.parent / m.group(1)).resolve()
            if not target.exists():
                broken.append(f"{page.relative_to(REPO)}: {m.group(0)}")
            anchor = m.group(2)
            if anchor and target.suffix == ".md" and target.exists():
                slugs = {slug(h) for h in re.findall(r"^#+ (.+)$", target.read_text(), re.M)}
                if anchor[1:] not in slugs:
                    broken.append(f"{page.relative_to(REPO)}: {m.group(0)}")
        for m in re.finditer(r"\]\((#[^)]*)\)", text):
            slugs = {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
            if m.group(1)[1:] not in slugs:
                broken.append(f"{page.relative_to(REPO)}: {m.group(0)}")
    assert broken == []


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_points_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    assert "../shared" not in text and "DESIGN.md" not in text
    assert "KERNEL-INTERFACES.md" not in text
