"""Every guest the VM stage boots skips the kernel's boot-time timer check, which a TCG
guest on a loaded host fails (tests/vm/harness.py): the whole of `make test` runs two
guests at once beside the other tests."""

from __future__ import annotations

import pytest

from tests.vm import harness
from tests.vm.test_e2e import KHO_APPEND
from tests.vm.test_systemd_guest import APPEND, CLOUD_APPEND


@pytest.mark.parametrize("append", [harness.BASE_APPEND, KHO_APPEND, APPEND, CLOUD_APPEND])
def test_every_guest_command_line_skips_the_timer_check(append: str) -> None:
    assert "no_timer_check" in append.split(), append
