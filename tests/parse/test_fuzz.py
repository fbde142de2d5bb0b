"""Mutated real blobs into every parser: only ParseError may come out."""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from khod.collect.pstore import decode_record
from khod.errors import ParseError
from khod.observation import Event
from khod.parse import proc
from khod.parse.kho import parse_kho_fdt
from khod.parse.kmsg import count_warnings, parse_kho_log, parse_kmsg
from khod.parse.luo import parse_luo
from khod.parse.metadata import parse_kexec_metadata
from khod.parse.pstore import inflate, parse_dmesg_header, parse_pstore_name
from khod.parse.pstore_kho import parse_pstore_kho
from khod.records import PstoreLocation
from khod.sources.pstore import PstoreFile
from tests.conftest import FIXTURES
from tests.parse.test_parse_luo import luo_fdt, luo_ser

KHO = "sys/kernel/debug/kho"
SEEDS: dict[str, bytes] = {
    "in-fdt": (FIXTURES / "pstore-kho/step1" / KHO / "in/fdt").read_bytes(),
    "out-fdt": (FIXTURES / "pstore/step0" / KHO / "out/fdt").read_bytes(),
    "metadata": (FIXTURES / "kexec1/step1" / KHO / "in/sub_fdts/kexec-metadata").read_bytes(),
    "kmsg": b"".join((FIXTURES / "kexec1/step1/dev/kmsg").read_bytes().splitlines(True)[-40:])
    + b"4,900,1,-;WARNING: CPU: 0 PID: 1 at x.c:1\n3,901,2,-;INFO: task a:1 blocked for more "
    b"than 1 seconds.\n0,902,3,-;mce: [Hardware Error]: Machine check events logged\n",
    "scratch": (FIXTURES / "kexec1/step1" / KHO / "out/scratch_phys").read_bytes(),
    "stat": (FIXTURES / "kexec1/step1/proc/stat").read_bytes(),
    "pstore-kho": (FIXTURES / "pstore-kho/step1" / KHO / "in/sub_fdts/pstore-kho").read_bytes()[
        :2048
    ],
    "dmesg-record": (FIXTURES / "pstore/step0-boot2/sys/fs/pstore/dmesg-ramoops-0").read_bytes()[
        :2048
    ],
    "enc-z": zlib.compress(
        (FIXTURES / "pstore/step1/sys/fs/pstore/dmesg-ramoops-0").read_bytes()[:4096]
    ),
    "pstore-name": b"dmesg-efi_pstore-155741337601001.enc.z",
    "luo-v5": luo_ser("luo-v5", 3, 0x1000, 0x2000),
    "luo-v5-block": luo_ser("luo-v5;block-v1", 3, 0x1000, 0x2000),
    "luo-fdt": luo_fdt("luo-v2", 3),
}


def pstore_kho_parser(data: bytes, source: str) -> object:
    # the real blob is cut to 2 KiB, so its size field overruns: also patch it in range
    out = [parse_pstore_kho(data, source)]
    if len(data) >= 16:
        patched = data[:8] + struct.pack("<q", max(0, len(data) - 44)) + data[16:]
        out.append(parse_pstore_kho(patched, source))
    return out


def record_parser(data: bytes, source: str) -> object:
    """The whole decode path of one pstore file, as collection runs it."""
    events: list[Event] = []
    for name in ("dmesg-ramoops-0", "dmesg-ramoops-0.enc.z", "console-x-1"):
        decode_record(
            PstoreFile(PstoreLocation.PSTORE, None, source, name, data, 0), events, 1 << 16
        )
    return parse_dmesg_header(data)


def name_parser(data: bytes, source: str) -> object:
    return parse_pstore_name(data.decode("utf-8", errors="replace"))


def inflate_parser(data: bytes, _source: str) -> object:
    out, status = inflate(data, 1 << 16)
    assert out is None or len(out) <= 1 << 16
    return status


def kmsg_parser(data: bytes, _source: str) -> object:
    return parse_kho_log(parse_kmsg(data))


def warnings_parser(data: bytes, _source: str) -> object:
    records = parse_kmsg(data)
    n = count_warnings(records)
    assert 0 <= n <= len(records)
    return n


PARSERS: dict[str, list[Callable[[bytes, str], object]]] = {
    "in-fdt": [parse_kho_fdt],
    "out-fdt": [parse_kho_fdt],
    "metadata": [parse_kexec_metadata],
    "kmsg": [kmsg_parser, warnings_parser],
    "scratch": [proc.parse_scratch],
    "stat": [proc.parse_btime, proc.parse_boot_id, proc.parse_osrelease, proc.parse_cmdline],
    "pstore-kho": [pstore_kho_parser],
    "dmesg-record": [record_parser],
    "enc-z": [inflate_parser, record_parser],
    "pstore-name": [name_parser],
    "luo-v5": [parse_luo],
    "luo-v5-block": [parse_luo],
    "luo-fdt": [parse_luo],
}


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "u32"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:  # overwrite an aligned big-endian u32 (header fields, tokens, offsets)
            j = i & ~3
            data[j : j + 4] = draw(
                st.sampled_from([0, 1, 2, 3, 9, 0xFFFFFFFF, 0x7FFFFFFF, len(seed), len(seed) + 4])
            ).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize("name", sorted(SEEDS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutations_raise_only_parse_error(name: str, data: st.DataObject) -> None:
    blob = data.draw(mutated(SEEDS[name]))
    for parse in PARSERS[name]:
        with contextlib.suppress(ParseError):
            parse(blob, name)


@pytest.mark.parametrize("name", sorted(SEEDS))
@settings(max_examples=100, deadline=None)
@given(blob=st.binary(max_size=512))
def test_random_bytes_raise_only_parse_error(name: str, blob: bytes) -> None:
    for parse in PARSERS[name]:
        with contextlib.suppress(ParseError):
            parse(blob, name)
