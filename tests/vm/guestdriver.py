#!/usr/bin/python3
"""The systemd guest's test driver (the test's, not the product's), installed in the image
as /usr/local/sbin/khod-e2e and run by two units of the test's own:

- ``khod-e2e early`` (khod-e2e-early.service, before khod.service): this boot's ``early``
  commands, which set the stage khod starts on (a broken configuration drop-in, say);
- ``khod-e2e`` (khod-e2e.service, after multi-user.target): waits for the boot to settle,
  writes what the host shows to /khod-e2e/boot-N/, runs this boot's ``do`` commands and
  takes the next step (``then``: a kexec, a panic; power off when there is none).

The plan is /khod-e2e/plan.json: ``{"steps": [{"early": [...], "do": [...], "then": CMD}]}``,
one step per boot, in order; boot N is the Nth boot the driver sees (``"analyze": true``
adds ``systemd-analyze blame`` and ``critical-chain`` to its report). A ``do`` command
``@host TAG`` announces TAG on the kernel log (the serial console) and waits on the
virtio port for the host's ``go TAG``: the host acts (scrapes, queries) meanwhile; ``@report
NAME`` writes the report again into boot-N/NAME/. Standard library only (the image's
python3): it must not depend on what it tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OUT = Path("/khod-e2e")
PORT = "/dev/virtio-ports/org.khod.e2e"
RECORDED_ID = "8cdcc4ade3a94ee197e11e9990c60450"  # khod's boot-recorded entry
MESSAGE_IDS = {  # khod's pstore entries (khod/adapters/sd.py)
    "pstore-record": "b9371c84a1624c8b9c79d59f1a01764c",
    "pstore-crash": "95545d729a4543bbafc31f3d660a7dce",
}
UNITS = (
    "sysinit.target",
    "basic.target",
    "multi-user.target",
    "khod.service",
    "khod-pstore.service",
    "systemd-pstore.service",
)


def kmsg(msg: str) -> None:
    with open("/dev/kmsg", "w") as f:
        f.write(f"<6>khod-e2e: {msg}\n")


def sh(cmd: str, timeout: float = 600) -> tuple[int, str]:
    try:
        r = subprocess.run(
            ["sh", "-c", cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f}s\n"
    return r.returncode, r.stdout


def save(d: Path, name: str, cmd: str, timeout: float = 600) -> int:
    rc, out = sh(cmd, timeout)
    (d / name).write_text(out)
    return rc


def metrics(d: Path, name: str) -> None:
    import urllib.request

    try:
        with urllib.request.urlopen("http://127.0.0.1:9733/metrics", timeout=30) as r:
            (d / name).write_bytes(r.read())
    except OSError as e:
        (d / name).write_text(f"# error: {e}\n")


def last_ingest() -> float:
    import urllib.request

    try:
        with urllib.request.urlopen("http://127.0.0.1:9733/metrics", timeout=30) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("khod_last_ingest_timestamp_seconds "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def reload(d: Path) -> None:
    """``systemctl reload khod``, then wait for the re-ingest to show in /metrics."""
    before = last_ingest()
    rc, out = sh("systemctl reload khod.service")
    t0 = time.monotonic()
    after = before
    while rc == 0 and after <= before and time.monotonic() - t0 < 240:
        time.sleep(1)
        after = last_ingest()
    (d / "reload.json").write_text(
        json.dumps({"rc": rc, "out": out, "before": before, "after": after})
    )
    kmsg(f"reload: rc {rc}, last ingest {before} -> {after}")


def settle() -> None:
    """Until khod's start has ended (active or failed) and the boot has settled."""
    for _ in range(180):
        _, state = sh("systemctl is-active khod.service")
        if state.strip() in ("active", "failed", "inactive"):
            break
        time.sleep(1)
    sh("systemctl is-system-running --wait", timeout=300)


def journaled(timeout: float = 120) -> bool:
    """While khod.service is active: until the journal holds this boot's "khod recorded
    boot" entry, at most ``timeout`` seconds. khod sends READY=1 before it journals the
    boot, so an active khod.service does not mean the entry has reached journald."""
    deadline = time.monotonic() + timeout
    while True:
        _, state = sh("systemctl is-active khod.service")
        if state.strip() != "active":
            return False  # masked, failed: nothing to wait for
        _, out = sh(f"journalctl -b -q --no-pager -o cat MESSAGE_ID={RECORDED_ID}")
        if out.strip():
            return True
        if time.monotonic() > deadline:
            kmsg(f"no boot-recorded entry in the journal after {timeout:.0f}s")
            return False
        time.sleep(1)


def report(d: Path, analyze: bool = False) -> None:
    kmsg(f"report into {d}")  # the host counts a silent guest as stuck: say what it does
    d.mkdir(parents=True, exist_ok=True)
    journaled()
    save(d, "is-active", "systemctl is-active khod.service")
    save(d, "failed", "systemctl --failed --no-legend --plain")
    save(d, "status.json", f"khoctl status --json 2>{d}/status.err")
    save(d, "journal", "journalctl -b --no-pager -o short-monotonic")
    save(d, "journal-khod", "journalctl -b --no-pager -o short-monotonic -u 'khod*'")
    save(d, "journal-x", "journalctl -b -x --no-pager -u khod.service")
    ids = " + ".join(f"MESSAGE_ID={m}" for m in MESSAGE_IDS.values())
    save(d, "journal-pstore.json", f"journalctl -b --no-pager -o json {ids}")
    props = "-p Id -p ActiveEnterTimestampMonotonic -p ExecMainStartTimestampMonotonic"
    save(d, "units", f"systemctl show {props} {' '.join(UNITS)}")
    save(
        d,
        "manager",
        "systemctl show -p UserspaceTimestampMonotonic -p GeneratorsStartTimestampMonotonic "
        "-p GeneratorsFinishTimestampMonotonic",
    )
    save(d, "analyze-time", "systemd-analyze time")
    if analyze:  # slow under TCG (blame: 48 s), so only where a step asks
        save(d, "analyze-blame", "systemd-analyze blame | head -15")
        save(d, "critical-chain", "systemd-analyze critical-chain sysinit.target")
    save(d, "bootloader_type", "cat /proc/sys/kernel/bootloader_type")
    save(d, "pstore-sys", "ls -ln --full-time /sys/fs/pstore")
    save(d, "pstore-archive", "ls -lnR --full-time /var/lib/systemd/pstore")
    metrics(d, "metrics")


def wait_host(tag: str) -> None:
    """Announce TAG, wait for the host's "go TAG" on the virtio port."""
    with open(PORT, "rb", buffering=0) as port:
        kmsg(f"host {tag}")
        buf = b""
        while f"go {tag}".encode() not in buf.split(b"\n"):
            b = port.read(256)
            if b:
                buf += b
            else:
                time.sleep(0.2)


def early(step: dict[str, Any], d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i, cmd in enumerate(step.get("early", [])):
        rc, out = sh(str(cmd))
        (d / f"early-{i}.out").write_text(f"$ {cmd}\n{out}[rc {rc}]\n")
    os.sync()


def main() -> None:
    plan = json.loads((OUT / "plan.json").read_text())
    steps = plan["steps"]
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    seen = OUT / "boots"  # one line per boot: the boot id, in order
    ids = seen.read_text().split() if seen.exists() else []
    if "early" in sys.argv[1:]:
        if boot_id not in ids:
            ids.append(boot_id)
            seen.write_text("\n".join(ids) + "\n")
        n = ids.index(boot_id)
        if n < len(steps):
            early(steps[n], OUT / f"boot-{n}")
        return
    if boot_id not in ids:  # no early unit ran (it is the test's, so it should have)
        ids.append(boot_id)
        seen.write_text("\n".join(ids) + "\n")
    n = ids.index(boot_id)
    d = OUT / f"boot-{n}"
    d.mkdir(parents=True, exist_ok=True)
    release = os.uname().release
    kmsg(f"boot n={n} boot_id={boot_id} release={release}")
    (d / "boot_id").write_text(boot_id + "\n")
    (d / "release").write_text(release + "\n")
    (d / "cmdline").write_text(Path("/proc/cmdline").read_text())
    settle()
    step = steps[n] if n < len(steps) else {}
    report(d, bool(step.get("analyze")))
    for i, item in enumerate(step.get("do", [])):
        cmd = str(item)
        kmsg(f"boot n={n} do {i}: {cmd[:120]}")
        if cmd.startswith("@host "):
            os.sync()
            wait_host(cmd.split(None, 1)[1])
            continue
        if cmd.startswith("@report "):
            report(d / cmd.split(None, 1)[1])
            continue
        if cmd == "@reload":
            reload(d)
            continue
        if cmd.startswith("@metrics "):
            metrics(d, cmd.split(None, 1)[1])
            continue
        rc, out = sh(cmd)
        (d / f"do-{i}.out").write_text(f"$ {cmd}\n{out}[rc {rc}]\n")
    (d / "done").write_text("done\n")
    os.sync()
    then = step.get("then")
    if then:
        kmsg(f"boot n={n} then: {then}")
        rc, out = sh(str(then))
        (d / "then.out").write_text(f"$ {then}\n{out}[rc {rc}]\n")
        os.sync()
        time.sleep(200)  # a kexec or a panic takes the host away before this ends
        kmsg(f"boot n={n}: the step did not take the host away")
    kmsg(f"boot n={n}: powering off")
    sh("systemctl poweroff")


if __name__ == "__main__":
    main()
