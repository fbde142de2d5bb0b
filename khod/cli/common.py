"""What khod and khoctl share: root/db options and argparse types (``khod.cli.options``),
JSON out; the one-line error contract and terminal-safe text (``khod.oneline``) under
the names the commands use."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TypeAlias

from khod.cli.options import (
    INT64_MAX,
    add_common,
    add_config,
    fraction,
    host_paths,
    whole_number,
)
from khod.oneline import escape_json_controls, print_text, run_main

__all__ = [
    "INT64_MAX",
    "Cmd",
    "Handler",
    "add_common",
    "add_config",
    "fraction",
    "host_paths",
    "print_json",
    "print_text",
    "run_main",
    "whole_number",
]

Handler: TypeAlias = Callable[[argparse.Namespace], int]
# how a module adds its subcommands to khoctl: cmd(name, help, handler) returns the
# subcommand's parser (khod.cli.khoctl.COMMAND_MODULES lists the modules)
Cmd: TypeAlias = Callable[[str, str, Handler], argparse.ArgumentParser]


# the tests set this: each --json document is checked against its schema
# (khod/schemas/NAME.v1.json, shipped in the package) as it is printed
JSON_CHECK: Callable[[str, Any], None] | None = None


def print_json(obj: Any, schema: str) -> None:
    """JSON as it is meant to be read (UTF-8, not \\u-escaped) but for the controls a
    terminal would obey (C1, DEL): escaped always, on a terminal or not. ``schema``:
    the name of the JSON Schema the document follows (khod/schemas/)."""
    text = json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False)
    if JSON_CHECK is not None:
        JSON_CHECK(schema, json.loads(text))
    sys.stdout.write(escape_json_controls(text) + "\n")
