"""Small procfs/etc/debugfs text files: boot identity, btime, KHO scratch lists."""

from __future__ import annotations

import re

from khod.errors import ParseError

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")
_HEX = re.compile(r"^0x[0-9a-fA-F]{1,16}$")


def _text(data: bytes, source: str, limit: int = 4096) -> str:
    if len(data) > limit:
        raise ParseError(source, limit, f"longer than {limit} bytes")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise ParseError(source, e.start, "not UTF-8 text") from e


def parse_boot_id(data: bytes, source: str) -> str:
    text = _text(data, source).lower()
    if not _UUID.match(text):
        raise ParseError(source, 0, f"not a boot id: {text[:40]!r}")
    return text


def parse_machine_id(data: bytes, source: str) -> str:
    text = _text(data, source).lower()
    if not _MACHINE_ID.match(text):
        raise ParseError(source, 0, f"not a machine id: {text[:40]!r}")
    return text


PROVISIONAL = "boot-"  # + boot_id: never 32 hex digits, so never a real machine id
# no usable /etc/machine-id (missing, garbage): no later ingest will bring one, so all the
# host's boots are this one machine, and a boot recorded so is adopted like a provisional
# one should the real id appear
UNKNOWN_MACHINE = "unknown"


def provisional_machine_id(boot_id: str) -> str:
    """The identity of a boot recorded before /etc/machine-id was initialized (first
    boot, an early unit): its own boot id, until a later ingest of the same boot reads
    the real machine id and re-keys the row (``khod.store.identity``)."""
    return PROVISIONAL + boot_id


def is_provisional(machine_id: str) -> bool:
    return machine_id.startswith(PROVISIONAL) or machine_id == UNKNOWN_MACHINE


def machine_id_pending(data: bytes) -> bool:
    """systemd's first-boot marker (``uninitialized``), or an empty file: no id yet."""
    return data.strip() in (b"", b"uninitialized")


def parse_osrelease(data: bytes, source: str) -> str:
    """The running release. Odd bytes (a hostile LOCALVERSION) are shown as \\xNN rather
    than refused: the boot must still be recorded."""
    if len(data) > 256:
        raise ParseError(source, 256, "longer than 256 bytes")
    from khod.parse.metadata import decode_release  # noqa: PLC0415  (the capture imports this module)

    text, _ = decode_release(data.strip())
    if not text:
        raise ParseError(source, 0, "empty kernel release")
    return text


def parse_cmdline(data: bytes, source: str) -> str:
    return _text(data.replace(b"\0", b" "), source, 1 << 16)


# the last second a datetime (and so every reader of booted_at) can show: 9999-12-31
MAX_BTIME = 253_402_300_799
_BTIME = re.compile(rb"^btime ([0-9]{1,20})$")


def parse_btime(data: bytes, source: str) -> int:
    """``btime`` from /proc/stat: boot time in seconds since the epoch, printed ``%llu``
    (``fs/proc/stat.c``). A clock set back below the uptime makes it the wrapped u64
    (``18446744073709551586``): that, a time no datetime holds and garbage are a
    ParseError, never a number that is not a time."""
    for line in data.split(b"\n"):
        if not line.startswith(b"btime"):
            continue
        m = _BTIME.match(line.strip())
        if m is None:
            raise ParseError(source, None, f"btime is not a number: {line[:40]!r}")
        value = int(m.group(1))
        if value >= 1 << 63:
            raise ParseError(
                source,
                None,
                f"btime {value} is a negative boot time wrapped to a u64: the clock was set "
                "back below the uptime; boot time unknown",
            )
        if value > MAX_BTIME:
            raise ParseError(
                source, None, f"btime {value} is after the year 9999: boot time unknown"
            )
        return value
    raise ParseError(source, None, "no btime line")


def parse_scratch(data: bytes, source: str) -> tuple[int, ...]:
    """``out/scratch_phys`` / ``scratch_len`` (7.4: ``bootmem_*``): one ``0x%llx`` per area
    (lowmem, global, then one per NUMA node)."""
    values = []
    for n, raw in enumerate(_text(data, source).splitlines()):
        line = raw.strip()
        if not _HEX.match(line):
            raise ParseError(source, None, f"line {n + 1} is not a hex value: {line[:30]!r}")
        values.append(int(line, 16))
    return tuple(values)


# boot protocol type_of_loader ids (Documentation/arch/x86/boot.rst): the high nibble
KEXEC_LOADER = 0xD  # arch/x86/kernel/kexec-bzimage64.c and kexec-tools set 0x0D << 4


def parse_bootloader_type(data: bytes, source: str) -> int:
    """``/proc/sys/kernel/bootloader_type`` (x86 only), decimal: ``type_of_loader``, or
    for an extended loader id (T = 0xE) ``(ext_loader_type + 0x10) << 4 | V``
    (``arch/x86/kernel/setup.c``), so up to 0x10FF."""
    text = _text(data, source).strip()
    if not text.isdigit() or len(text) > 5 or int(text) > 0x10FF:
        raise ParseError(source, 0, f"not a loader id: {text[:20]!r}")
    return int(text)


def loaded_by_kexec(bootloader_type: int | None) -> bool:
    return bootloader_type is not None and bootloader_type >> 4 == KEXEC_LOADER


def kho_cmdline_setting(cmdline: str) -> bool | None:
    """The ``kho=`` boot parameter (kstrtobool), or None when it is not given."""
    value = None
    for word in cmdline.split():
        if word.startswith("kho="):
            parsed = kstrtobool(word[4:])
            if parsed is not None:  # the kernel ignores a value it cannot parse
                value = parsed
    return value


def kstrtobool(v: str) -> bool | None:
    """``lib/kstrtox.c`` ``kstrtobool``: the first character decides (y/t/1, n/f/0),
    ``on``/``off`` by the second; anything else is -EINVAL (None)."""
    first, second = v[:1].lower(), v[1:2].lower()
    if first in ("y", "t", "1"):
        return True
    if first in ("n", "f", "0"):
        return False
    if first == "o" and second in ("n", "f"):
        return second == "n"
    return None
