"""The systemd guest's image, shared by its modules and by pytest-xdist's workers. The
per-boot tables of the runs reach pytest's summary through tests/conftest.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.cachelock import locked
from tests.debian import build_deb
from tests.vm import guestimage, kernelcache


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The systemd guest's image tarball (the deb built from this checkout, installed
    with apt) and the kernels' directory. Under pytest-xdist the first worker to get
    here builds the deb and the image, the others use them."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    record = shared / "khod-guest-image.json"
    with locked(shared / "khod-guest-image.lock"):
        if record.exists():
            tar = Path(json.loads(record.read_text())["tar"])
            guestimage.TABLES.append(f"image: {tar.name}, built by another worker")
        else:
            deb, _ = build_deb(tmp_path_factory.mktemp("deb"))
            tar, built = guestimage.image(deb)
            record.write_text(json.dumps({"tar": str(tar)}))
            guestimage.TABLES.append(
                f"image: {tar.name}, " + (f"built in {built:.0f}s" if built else "cached")
            )
    return tar, kernelcache.kernels()
