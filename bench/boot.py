"""What khod costs a boot: the systemd-booted Debian 13 guest of the VM stage, first boots
of the same image on the same kernel, with khod and with khod.service masked, in turns.

    python bench/boot.py [--pairs N] [--image TAR]

Prints, per boot, when sysinit.target and multi-user.target were reached (seconds after
PID 1 started, systemd's own monotonic timestamps) and, over the pairs, the median
of each with khod over the median with khod masked. Goal: sysinit.target <= 1.10x.
QEMU TCG (KHOD_E2E_ACCEL=kvm where there is one); the kernels, the deb and the image are
built or taken from the caches the VM stage uses (tests/vm/kernel.py, guestimage.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.debian import build_deb  # noqa: E402
from tests.vm import guestimage, harness, kernelcache  # noqa: E402

MASKED = {"etc/systemd/system/khod.service": "@/dev/null"}
TARGETS = ("sysinit.target", "multi-user.target")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--image", type=Path, help="an image tarball (default: build this checkout's)")
    args = ap.parse_args()
    kernels = kernelcache.kernels()
    tar = args.image
    if tar is None:
        with tempfile.TemporaryDirectory() as tmp:
            deb, _ = build_deb(Path(tmp))
            tar, _ = guestimage.image(deb)
    append = f"{harness.BASE_APPEND} kho=on"
    seen: dict[str, dict[str, list[float]]] = {"khod": {}, "masked": {}}
    for i in range(args.pairs):
        for name, files in (("khod", {}), ("masked", MASKED)):
            r = guestimage.run(
                f"bench-{name}", tar, kernels, [{"analyze": True}], append=append, files=files
            )
            if r.rc != 0 or not r.boots:
                print(f"{name} boot {i}: qemu rc {r.rc}, see {r.dir}", file=sys.stderr)
                return 1
            b = r.boots[0]
            at = {t: b.reached(t) for t in TARGETS}
            for t, s in at.items():
                seen[name].setdefault(t, []).append(s)
            print(
                f"{name:<7} boot {i}: "
                + ", ".join(f"{t} {s:.2f}s" for t, s in at.items())
                + f" (khod.service active at {b.reached('khod.service'):.2f}s)",
                flush=True,
            )
    for t in TARGETS:
        k, m = statistics.median(seen["khod"][t]), statistics.median(seen["masked"][t])
        goal = " (goal <= 1.10x)" if t == "sysinit.target" else ""
        print(f"{t}: median {k:.2f}s with khod, {m:.2f}s masked: {k / m:.2f}x{goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
