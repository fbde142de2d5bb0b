#!/usr/bin/python3
"""A stand-in VMM for the systemd guest (the test's, not the product's), installed in the
image as /usr/local/sbin/khod-e2e-vmm: it keeps "guest memory" in a memfd across a kernel
update through the Live Update Orchestrator, as a hypervisor does, with the uAPI of
``include/uapi/linux/liveupdate.h`` (7.3.4):

    khod-e2e-vmm preserve SESSION TOKEN TEXT OUT.json -- CMD...
        open /dev/liveupdate (khod.service is running: it must not hold it), create
        SESSION, put TEXT in a memfd, preserve it under TOKEN, write OUT.json, then run
        CMD (a kexec that does not return) while still holding the session: systemd's
        shutdown would kill the holder and so drop the session, hence ``kexec -e``.
    khod-e2e-vmm retrieve SESSION TOKEN OUT.json
        in the next kernel: retrieve SESSION and the memfd under TOKEN, read it back,
        finish the session; write what was found to OUT.json.

Standard library only (the image's python3).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from fcntl import ioctl
from typing import Any

DEVICE = "/dev/liveupdate"
NAME_LEN = 64  # LIVEUPDATE_SESSION_NAME_LENGTH


def _io(nr: int) -> int:
    return (0xBA << 8) | nr  # _IO(LIVEUPDATE_IOCTL_TYPE, nr): no size, no direction bits


CREATE_SESSION, RETRIEVE_SESSION = _io(0x00), _io(0x01)
PRESERVE_FD, RETRIEVE_FD, FINISH = _io(0x40), _io(0x41), _io(0x42)
SESSION = struct.Struct(f"=Ii{NAME_LEN}s")  # liveupdate_ioctl_{create,retrieve}_session
FD_TOKEN = struct.Struct("=IiQ")  # liveupdate_session_{preserve,retrieve}_fd
FINISH_ARG = struct.Struct("=II")  # liveupdate_session_finish


def session(dev: int, request: int, name: str) -> int:
    buf = bytearray(SESSION.pack(SESSION.size, -1, name.encode()))
    ioctl(dev, request, buf, True)
    return int(SESSION.unpack(buf)[1])


def write(path: str, report: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(report, f)
    os.sync()


def preserve(name: str, token: int, text: str, out: str, cmd: list[str]) -> int:
    report: dict[str, Any] = {"step": "preserve", "session": name, "token": token}
    try:
        dev = os.open(DEVICE, os.O_RDWR)
        report["opened"] = True
        sfd = session(dev, CREATE_SESSION, name)
        mfd = os.memfd_create("guest-memory")
        os.write(mfd, text.encode())
        ioctl(sfd, PRESERVE_FD, bytearray(FD_TOKEN.pack(FD_TOKEN.size, mfd, token)), True)
        report["preserved"] = True
    except OSError as e:
        report["error"] = f"{type(e).__name__}: {e}"
        write(out, report)
        return 1
    write(out, report)
    # dev, sfd and mfd stay open through the kexec: the session goes with them
    return subprocess.run(cmd, check=False).returncode


def retrieve(name: str, token: int, out: str) -> int:
    report: dict[str, Any] = {"step": "retrieve", "session": name, "token": token}
    try:
        dev = os.open(DEVICE, os.O_RDWR)
        report["opened"] = True
        sfd = session(dev, RETRIEVE_SESSION, name)
        buf = bytearray(FD_TOKEN.pack(FD_TOKEN.size, -1, token))
        ioctl(sfd, RETRIEVE_FD, buf, True)
        mfd = FD_TOKEN.unpack(buf)[1]
        report["text"] = os.pread(mfd, 4096, 0).decode(errors="replace")
        ioctl(sfd, FINISH, bytearray(FINISH_ARG.pack(FINISH_ARG.size, 0)), True)
        report["finished"] = True
    except OSError as e:
        report["error"] = f"{type(e).__name__}: {e}"
    write(out, report)
    return 0 if "finished" in report else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["preserve"] and len(argv) > 6 and argv[5] == "--":
        return preserve(argv[1], int(argv[2]), argv[3], argv[4], argv[6:])
    if argv[:1] == ["retrieve"] and len(argv) == 4:
        return retrieve(argv[1], int(argv[2]), argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
