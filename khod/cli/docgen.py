"""Man pages and shell completions from the argument parsers, so that they cannot
drift from them; run at package build time:

    python3 -m khod.cli.docgen man OUTDIR [INCLUDE_DIR]   khod.8, khoctl.8, khod.toml.5
    python3 -m khod.cli.docgen completion OUTDIR          bash, zsh (and fish) scripts

The pages come from argparse-manpage; what a parser does not know (the description,
JSON OUTPUT, EXIT STATUS, ENVIRONMENT, FILES, SEE ALSO) from the hand-written
INCLUDE_DIR/PROG.8.inc. khod.toml(5) is made from the commented default configuration
(INCLUDE_DIR/../khod.toml), which shows every key with its default."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from khod import __version__

REPO = Path(__file__).resolve().parents[2]
INCLUDES = REPO / "packaging" / "man"
NAMES = {
    "khod": "record kexec handover (KHO) state and pstore records at boot, serve metrics",
    "khoctl": "inspect kexec handover history, check and run kexecs, fleet reports",
}
DATE = "December 5, 2026"  # reproducible builds: the release's date, not the build's


def parsers() -> dict[str, argparse.ArgumentParser]:
    from khod.cli import khoctl, khod_main  # noqa: PLC0415

    return {"khod": khod_main.parser(), "khoctl": khoctl.parser()}


def man_page(prog: str, p: argparse.ArgumentParser, includes: Path = INCLUDES) -> str:
    from argparse_manpage.manpage import Manpage  # noqa: PLC0415

    data = {
        "project_name": "khod",
        "version": __version__,
        "manual_title": "System Administration",
        "manual_section": 8,
        "description": NAMES[prog],
        "date": DATE,
        "include": str(includes / f"{prog}.8.inc"),
    }
    return _text_lines(str(Manpage(p, _data=data, format="single-commands-section")))


def _text_lines(page: str) -> str:
    """A text line that starts with ' or . (a help text wrapped there) is text, not a
    request: roff's zero-width \\& in front."""
    return (
        "\n".join(
            "\\&" + line if line[:1] == "'" or re.match(r"^\.[^A-Za-z]", line) else line
            for line in page.splitlines()
        )
        + "\n"
    )


def _roff(text: str) -> str:
    return text.replace("\\", "\\e").replace("-", "\\-")


def toml_page(conf: Path) -> str:
    """khod.toml(5) from the commented default file: a section per [table], a tagged
    paragraph per key with its default and its comment."""
    out = [
        f'.TH KHOD.TOML 5 "{DATE}" "khod {__version__}" "File Formats"',
        ".SH NAME",
        "khod.toml \\- khod's configuration",
        ".SH SYNOPSIS",
        "/etc/khod/khod.toml, /etc/khod/khod.toml.d/*.toml",
        ".SH DESCRIPTION",
        "khod(8) and khoctl(8) read /etc/khod/khod.toml (or \\fB\\-\\-config\\fR), then the "
        "drop-ins in khod.toml.d/ in the order of their names: a key a drop-in sets "
        "overrides the file's. The format is TOML. khod re-reads them on SIGHUP "
        "(\\fBsystemctl reload khod\\fR). Durations take s, m, h, d or w; sizes KiB, MiB, "
        "GiB. Each key below is shown with its default.",
    ]
    key = re.compile(r"^#(\w+) = (\S+(?: \S+)*?)\s+# (.*)$")
    for line in conf.read_text().splitlines():
        if line.startswith("["):
            table, _, note = line.partition("#")
            out.append(f".SH {table.strip().upper()}")
            if note.strip():
                out.append(_roff(note.strip()))
        elif m := key.match(line):
            out += [".TP", f"\\fB{m.group(1)}\\fR = {_roff(m.group(2))}", _roff(m.group(3))]
        elif line.startswith(" ") and line.strip().startswith("#") and out[-1] != ".PP":
            out[-1] += " " + _roff(line.strip().lstrip("#").strip())
    out += [".SH FILES", ".I /etc/khod/khod.toml", ".SH SEE ALSO", "khod(8), khoctl(8)"]
    return _text_lines("\n".join(out))


def write_man(outdir: Path, includes: Path = INCLUDES) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for prog, p in parsers().items():
        path = outdir / f"{prog}.8"
        path.write_text(man_page(prog, p, includes))
        written.append(path)
    path = outdir / "khod.toml.5"
    path.write_text(toml_page(includes.parent / "khod.toml"))
    return [*written, path]


# where each shell looks for a command's completion, and the file name it wants
COMPLETION_FILES: dict[str, Callable[[str], str]] = {
    "bash": lambda prog: prog,
    "zsh": lambda prog: f"_{prog}",
    "fish": lambda prog: f"{prog}.fish",
}


def write_completions(outdir: Path) -> list[Path]:
    import shtab  # noqa: PLC0415

    written = []
    for shell, name in COMPLETION_FILES.items():
        if shell not in shtab.SUPPORTED_SHELLS:  # fish: shtab 1.7.2 and later
            continue
        for prog, p in parsers().items():
            path = outdir / shell / name(prog)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(shtab.complete(p, shell=shell))
            written.append(path)
    return written


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("man", "completion"):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    if argv[0] == "man":
        paths = write_man(out, Path(argv[2]) if len(argv) > 2 else INCLUDES)
    else:
        paths = write_completions(out)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
