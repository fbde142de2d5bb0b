"""The JSON Schemas of every --json output ship in the package (khod/schemas/), each
a valid schema, each named by the command that prints it; conftest.py validates every
--json document the tests print against its schema."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from khod.cli import common

CLI = Path(common.__file__).parent


def test_every_printed_document_names_a_shipped_schema() -> None:
    shipped = resources.files("khod") / "schemas"
    names = set()
    for src in CLI.glob("*.py"):
        for call in src.read_text().split("print_json(")[1:]:
            m = re.search(r',\s*"([a-z]+)",?\s*\)\n', call)
            if m:
                names.add(m.group(1))
    assert names >= {"status", "history", "chain", "show", "dmesg", "check", "report"}
    for name in names:
        schema = json.loads((shipped / f"{name}.v1.json").read_text())
        jsonschema.validators.validator_for(schema).check_schema(schema)
        assert schema["$id"].endswith(f"{name}.v1.json")


def test_a_document_off_its_schema_is_caught() -> None:
    assert common.JSON_CHECK is not None  # set for every test by conftest.py
    common.JSON_CHECK("history", [])
    with pytest.raises(AssertionError, match="history does not follow its schema"):
        common.JSON_CHECK("history", [{"boot_id": "x", "booted_at": 1700000000}])
