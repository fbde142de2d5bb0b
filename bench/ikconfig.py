"""The IKCONFIG search on a hostile vmlinux vs a normal one of the same size, same run.

    python bench/ikconfig.py [--runs N] [--mib M]

normal   M MiB of zeros with one real IKCONFIG block (IKCFG_ST, gzip'd config, IKCFG_ED)
hostile  M MiB of ``IKCFG_ST`` markers, then partial markers and gzip magics with bad
         streams behind them: the shapes that made the old regex scan 8 MiB per marker

Prints each median and the ratio hostile / normal; a linear search keeps it small
(target <= 10x), the old regex did not finish.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import time

from khod.parse.kimage import ikconfig_in

CONFIG = "".join(f"CONFIG_OPTION_{i}=y\n" for i in range(8000)).encode()


def images(mib: int) -> tuple[bytes, bytes]:
    size = mib << 20
    block = b"IKCFG_ST" + gzip.compress(CONFIG) + b"IKCFG_ED"
    normal = bytes(size // 2) + block
    normal += bytes(size - len(normal))
    third = size // 3
    hostile = (
        b"IKCFG_ST" * (third // 8)
        + b"IKCFG_S" * (third // 7)
        + (b"IKCFG_ST\x1f\x8b\x08\0IKCFG_E") * (third // 19)
    )
    return normal, hostile


def timed(data: bytes, runs: int) -> tuple[float, str | None]:
    out: list[float] = []
    result = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = ikconfig_in(data)
        out.append(time.perf_counter() - t0)
    return statistics.median(out), result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--mib", type=int, default=8)
    a = ap.parse_args()
    normal, hostile = images(a.mib)
    t_normal, found = timed(normal, a.runs)
    t_hostile, none = timed(hostile, a.runs)
    assert found is not None and none is None
    print(
        f"ikconfig: hostile {len(hostile) >> 20} MiB {t_hostile * 1000:.1f} ms, "
        f"normal {len(normal) >> 20} MiB {t_normal * 1000:.1f} ms, "
        f"ratio {t_hostile / t_normal:.2f}x (target <= 10x)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
