"""The suite's guest kernels (tests/vm/kernel.py), built by one process at a time.

    python -m tests.vm.kernelcache   # what `make test` starts in the background

Every caller (the VM tests on each pytest-xdist worker, bench/boot.py, the background
build) goes through :func:`kernels`: it holds an flock on the kernel cache while it looks
for the kernels and builds what is missing (all of them share one source tree), so the
others wait and then find them cached. (kernel.py's own text is part of the kernels'
cache key, so the lock lives here.)
"""

from __future__ import annotations

from pathlib import Path

from tests.cachelock import locked
from tests.vm import kernel


def kernels() -> Path:
    """The directory holding bzImage-{a,b,v3abi,composite,nometa}, built if missing."""
    with locked(kernel.CACHE / "kernels.lock"):
        return kernel.kernels()


if __name__ == "__main__":
    d = kernels()
    for t in kernel.KERNELS:
        print(d / f"bzImage-{t}", (d / f"release-{t}").read_text().strip())
