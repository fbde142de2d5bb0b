"""The man pages and shell completions come from the argument parsers (khod.cli.docgen):
every page renders without a warning from man(1) or mandoc's lint, names every
subcommand and option of its parser, and bash itself completes a subcommand and an
option from the generated script."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from khod.cli import docgen


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("man")
    return {p.name: p for p in docgen.write_man(out)}


def rendered(page: Path) -> str:
    r = subprocess.run(
        ["man", "--warnings", "-l", str(page)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "200", "MAN_KEEP_FORMATTING": "", "LC_ALL": "C.UTF-8"},
        check=False,
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return r.stdout


def options_of(p: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Each (sub)command's option strings, but -h and the help-hidden ones."""
    out: dict[str, list[str]] = {p.prog: []}
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                out.update(options_of(sub))
        elif a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction):
            out[p.prog] += a.option_strings
    return out


def test_pages_lint_clean(pages: dict[str, Path]) -> None:
    assert set(pages) == {"khod.8", "khoctl.8", "khod.toml.5"}
    for page in pages.values():
        rendered(page)
        r = subprocess.run(
            ["mandoc", "-T", "lint", "-W", "warning", str(page)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert (r.returncode, r.stdout + r.stderr) == (0, ""), page.name
        if shutil.which("lexgrog"):  # what mandb reads for whatis(1)
            r = subprocess.run(["lexgrog", str(page)], capture_output=True, text=True, check=False)
            assert r.returncode == 0 and " - " in r.stdout, r.stdout


def test_every_command_and_option_is_in_its_page(pages: dict[str, Path]) -> None:
    for prog, p in docgen.parsers().items():
        text = rendered(pages[f"{prog}.8"])
        for sections in ("SYNOPSIS", "EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"):
            assert f"\n{sections}\n" in text, (prog, sections)
        for command, options in options_of(p).items():
            assert command in text
            for option in options:
                assert option in text, (command, option)
    assert "JSON OUTPUT" in rendered(pages["khoctl.8"])


def test_khod_toml_page_has_every_key(pages: dict[str, Path]) -> None:
    from khod.conffiles import merged

    text = rendered(pages["khod.toml.5"])
    conf = docgen.INCLUDES.parent / "khod.toml"
    keys = [line[1:].split(" = ")[0] for line in conf.read_text().splitlines() if " = " in line]
    assert keys
    for key in keys:
        assert f"\n       {key} = " in text, key
    merged(str(conf))  # the page's source is the shipped file, which parses


def complete(script: Path, prog: str, *words: str) -> list[str]:
    """What bash's programmable completion offers for ``prog words...`` (the last word
    the one being completed), from the generated script."""
    driver = r"""
source "$1"; shift
fn=$(complete -p "$1" | sed -E 's/.*-F ([^ ]+) .*/\1/')
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
COMPREPLY=()
"$fn" "$1" "${COMP_WORDS[-1]}" "${COMP_WORDS[-2]}"
printf '%s\n' "${COMPREPLY[@]}"
"""
    r = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", driver, "bash", str(script), prog, *words],
        capture_output=True,
        text=True,
        check=True,
    )
    return r.stdout.split()


def test_bash_completes_a_command_and_an_option(tmp_path: Path) -> None:
    written = docgen.write_completions(tmp_path)
    assert {p.relative_to(tmp_path).as_posix() for p in written} >= {
        "bash/khoctl",
        "bash/khod",
        "zsh/_khoctl",
        "zsh/_khod",
    }
    script = tmp_path / "bash" / "khoctl"
    assert complete(script, "khoctl", "sh") == ["show"]
    assert complete(script, "khoctl", "history", "--si") == ["--since"]
    assert "--no-pager" in complete(script, "khoctl", "chain", "--no")
    assert complete(tmp_path / "bash" / "khod", "khod", "--on") == ["--once"]
