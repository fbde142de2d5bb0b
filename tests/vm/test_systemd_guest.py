"""The installed package on a Debian 13 host that systemd boots (issue 14).

The guest (tests/vm/guestimage.py): the .deb built from this checkout installed with apt
in a trixie image, root on virtio-9p, the suite's kernels ``a`` and ``b`` (KHO, BPF and
cgroup BPF, memcg, namespaces, seccomp: khod.service's hardening is enforced), QEMU TCG.
The test's own driver (tests/vm/guestdriver.py) reports each boot and takes the next step.

Runs, each one QEMU process from a freshly unpacked image:
- ``cold`` and ``masked``: one first boot each, with khod and with khod.service masked:
  khod records the cold boot by itself, nothing fails, nothing is denied, reload
  re-ingests, the journal's catalog text shows; and what khod costs the boot.
- ``chain``: a -> b (``khoctl kexec`` without ``--now``, so ``systemctl kexec``) -> a ->
  b (a hand-made ``kexec -s -l`` + ``systemctl kexec``, recorded by khod-kexec.service)
  -> panic -> a cold boot, beside the real systemd-pstore; the host's real Prometheus
  scrapes the guest's khod through QEMU user networking (refused by the unit's firewall
  until an ``IPAddressAllow=`` drop-in), khod syncs to a PostgreSQL on the host, and a
  configuration drop-in that does not parse stops khod at one boot.
- ``owner``: khod-pstore.service owns pstore, systemd-pstore masked: a -> b -> panic -> a.
- ``cloud``: Debian's own kernel (no KHO): cold, a panic into ramoops loaded late, then
  into itself by ``khoctl kexec --force`` (refused without it) and by a hand-made
  ``kexec -l`` + ``systemctl kexec`` (the hook masked): the chain from khoctl's attempt,
  then from the real, persistent journal.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from khod.adapters import sd
from tests import daemon_helpers
from tests.daemon.test_prometheus import get_json, process, wait_until
from tests.pgserver import PostgresServer
from tests.vm import guestimage, harness
from tests.vm.guestimage import Boot, Run

pytestmark = pytest.mark.vm
APPEND = f"{harness.BASE_APPEND} kho=on"
DENIALS = ("SIGSYS", "EPERM", "Permission denied", "Traceback", "DENIED")
REPO = Path(__file__).resolve().parent.parent.parent
KEXEC_B = "khoctl kexec --kernel /boot/khod-e2e/bzImage-b"
KEXEC_A = "khoctl kexec --kernel /boot/khod-e2e/bzImage-a"
PANIC = "echo c > /proc/sysrq-trigger"
REMOTE = "/etc/khod/khod.toml.d/50-e2e-remote.toml"
BROKEN = "/etc/khod/khod.toml.d/70-e2e-broken.toml"
ALLOW = "/etc/systemd/system/khod.service.d/50-e2e-allow.conf"


def records(db: Path) -> dict[str, dict[str, Any]]:
    return harness.records_at(db) if db.exists() else {}


def table(r: Run) -> str:
    """The per-boot table: the kernel's own line next to what khod recorded."""
    recs = records(r.db)
    lines = [
        f"== {r.summary()}",
        f"{'n':<2} {'release':<16} {'kernel: KHO: exec from':<30} {'khod: kind':<17} "
        f"{'previous':<16} {'count':<5} {'verdict':<23} {'gens':>6} {'sysinit':>8} {'khod up':>8}",
    ]
    for b in r.boots:
        rec = recs.get(b.boot_id, {})
        said = b.exec_from()
        ready = b.reached("khod.service")
        lines.append(
            f"{b.n:<2} {b.out('release').strip():<16} "
            f"{f'{said[0]} (count {said[1]})' if said else '-':<30} "
            f"{rec.get('kind', 'NOT RECORDED'):<17} {rec.get('previous_release') or '-':<16} "
            f"{rec.get('kexec_count', '-')!s:<5} {rec.get('verdict') or '-':<23} "
            f"{b.generators():>5.1f}s {b.reached('sysinit.target'):>7.1f}s "
            f"{f'{ready:.1f}s' if ready else '-':>8}"
        )
    lines += [f"host: {e}" for e in r.host_errors]
    lines.append(f"(run directory: {r.dir})")
    return "\n".join(lines)


def show(r: Run, *extra: str) -> None:
    report = "\n".join([table(r), *extra, *([] if r.rc == 0 else [r.digest()])])
    guestimage.TABLES.append(report)
    print(f"\n{report}", file=sys.stderr)


def khod_lines(b: Boot) -> list[str]:
    """The journal's lines from khod's own units (the test's khod-e2e units aside)."""
    unit = re.compile(
        r"\bkhod(-pstore|-kexec|-fleet-report|-fleet-retain)?(\.service|\.timer|\[\d+\])"
    )
    journal = b.out("journal").splitlines()
    return [line for line in journal if unit.search(line) and "khod-e2e" not in line]


def status(b: Boot, sub: str = "") -> dict[str, Any]:
    return b.json(f"{sub}/status.json" if sub else "status.json") or {}


# --- cold boot and boot cost (scenarios 1 and 2) -------------------------------------

COLD_PLAN = [{"analyze": True, "do": ["@reload"]}]


@pytest.fixture(scope="module")
def cold(image: tuple[Path, Path]) -> tuple[Run, Run]:
    """The same first boot twice, same image and kernel: with khod, and with it masked."""
    tar, kernels = image
    with_khod = guestimage.run("cold", tar, kernels, COLD_PLAN, append=APPEND)
    masked = guestimage.run(
        "masked",
        tar,
        kernels,
        COLD_PLAN,
        append=APPEND,
        files={"etc/systemd/system/khod.service": "@/dev/null"},
    )
    k, m = with_khod.boots[0], masked.boots[0]
    ratio = k.reached("sysinit.target") / (m.reached("sysinit.target") or float("nan"))
    mu = k.reached("multi-user.target") / (m.reached("multi-user.target") or float("nan"))
    show(
        with_khod,
        "boot cost, first boots, same image and kernel, seconds after PID 1 started: "
        f"sysinit.target reached at "
        f"{k.reached('sysinit.target'):.2f}s with khod, {m.reached('sysinit.target'):.2f}s "
        f"with khod masked: {ratio:.2f}x (goal <= 1.10x); multi-user.target "
        f"{k.reached('multi-user.target'):.2f}s vs {m.reached('multi-user.target'):.2f}s: "
        f"{mu:.2f}x",
        "-- systemd-analyze time (with khod)",
        k.out("analyze-time").rstrip(),
        "-- systemd-analyze blame | head (with khod)",
        k.out("analyze-blame").rstrip(),
        "-- journalctl -b -u 'khod*'",
        k.out("journal-khod").rstrip(),
    )
    show(masked)
    return with_khod, masked


def test_khod_records_the_cold_boot_by_itself(cold: tuple[Run, Run]) -> None:
    r, _ = cold
    assert r.rc == 0 and len(r.boots) == 1 and r.boots[0].out("done"), r.digest()
    b = r.boots[0]
    assert b.out("is-active").strip() == "active", b.out("journal-khod")
    s = status(b)
    assert (s.get("boot_id"), s.get("kind"), s.get("recorded")) == (b.boot_id, "cold", True), (
        s,
        b.out("status.err"),
    )
    assert b.exec_from() is None  # the kernel agrees: no "KHO: exec from" on a cold boot


def test_nothing_failed_and_no_denials(cold: tuple[Run, Run]) -> None:
    b = cold[0].boots[0]
    assert b.out("done"), cold[0].digest()
    assert b.out("failed").strip() == "", b.out("failed")
    denied = [line for line in khod_lines(b) if any(d in line for d in DENIALS)]
    assert denied == [], "\n".join(denied)


def test_the_hardening_is_enforced(cold: tuple[Run, Run]) -> None:
    """The kernel has what the unit's sandbox needs: systemd says nothing is missing."""
    journal = cold[0].boots[0].out("journal")
    assert "does not support BPF" not in journal, [
        line for line in journal.splitlines() if "BPF" in line
    ]
    assert "Failed to" not in "\n".join(khod_lines(cold[0].boots[0]))


def test_systemctl_reload_reingests(cold: tuple[Run, Run]) -> None:
    rel = cold[0].boots[0].json("reload.json")
    assert rel and rel["rc"] == 0, rel
    assert rel["after"] > rel["before"] > 0, rel  # khod_last_ingest_timestamp_seconds


def test_journal_x_shows_the_catalog_text(cold: tuple[Run, Run]) -> None:
    b = cold[0].boots[0]
    assert f"Subject: khod recorded boot {b.boot_id}: cold" in b.out("journal-x"), b.out(
        "journal-x"
    )[-3000:]


def test_khod_does_not_hold_sysinit(cold: tuple[Run, Run]) -> None:
    """khod's imports and database are not on the way to sysinit.target: it starts after
    sysinit.target is reached, and is not on its critical chain."""
    r, masked = cold
    b = r.boots[0]
    assert masked.rc == 0 and masked.boots and masked.boots[0].out("done"), masked.digest()
    assert masked.boots[0].out("is-active").strip() == "inactive"
    units = b.units()
    sysinit = int(units["sysinit.target"]["ActiveEnterTimestampMonotonic"])
    started = int(units["khod.service"]["ExecMainStartTimestampMonotonic"])
    assert 0 < sysinit <= started, units
    assert "khod" not in b.out("critical-chain"), b.out("critical-chain")


# --- the chain: kexec through systemd, pstore beside systemd-pstore, scrape, sync ------


class Fleet:
    """The host's side of the chain run: a Prometheus scraping the guest, a PostgreSQL
    the guest syncs to, and what each step saw."""

    def __init__(self, tmp: Path, pg: PostgresServer) -> None:
        self.tmp = tmp
        self.forward = daemon_helpers.free_port()
        self.prom_port = daemon_helpers.free_port()
        self.db = pg.create_database()
        self.pg_url = pg.url(self.db)
        self.guest_url = self.pg_url.replace("127.0.0.1", "10.0.2.2")
        self.saw: dict[str, Any] = {}
        config = {
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "khod",
                    "scrape_timeout": "900ms",
                    "static_configs": [{"targets": [f"127.0.0.1:{self.forward}"]}],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(json.dumps(config))
        self.prom_argv = [
            "prometheus",
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.prom_port}",
        ]

    def query(self, expr: str) -> list[Any]:
        api = f"http://127.0.0.1:{self.prom_port}/api/v1"
        res = get_json(f"{api}/query?query={urllib.parse.quote(expr)}")
        assert res["status"] == "success", res
        return list(res["data"]["result"])

    def target(self) -> dict[str, Any]:
        (t,) = get_json(f"http://127.0.0.1:{self.prom_port}/api/v1/targets")["data"][
            "activeTargets"
        ]
        return dict(t)

    def fleet_boots(self) -> list[dict[str, Any]]:
        engine = create_engine(self.pg_url)
        try:
            with engine.connect() as c:
                if not c.execute(text("SELECT to_regclass('boots')")).scalar():
                    return []  # no sync has reached the database yet
                rows = c.execute(
                    text("SELECT boot_id, kind, previous_release, kexec_count FROM boots")
                )
                return [dict(r._mapping) for r in rows]
        finally:
            engine.dispose()

    def refused(self) -> None:
        """The unit's firewall (IPAddressDeny=any) refuses the scrape and the sync."""
        scrapes = wait_until(
            "three refused scrapes",
            lambda: [
                s
                for s in self.query('count_over_time(up{job="khod"}[5m]) >= 3')
                if self.query('max_over_time(up{job="khod"}[5m])')[0]["value"][1] == "0"
            ],
            timeout=120,
        )
        self.saw["refused"] = {
            "scrapes": scrapes[0]["value"][1],
            "lastError": self.target().get("lastError"),
            "fleet_boots": self.fleet_boots(),
        }

    def allowed(self) -> None:
        """After the IPAddressAllow= drop-in: scraped, and the guest's boot synced."""
        (up,) = wait_until("a scrape", lambda: self.query('up{job="khod"} == 1'), timeout=180)
        (count,) = wait_until(
            "khod_kexecs_since_cold_boot", lambda: self.query("khod_kexecs_since_cold_boot")
        )
        fleet = wait_until("the sync", self.fleet_boots, timeout=180)
        self.saw["allowed"] = {"up": up, "count": count, "fleet_boots": fleet}

    def final(self) -> None:
        """The whole chain in the fleet database, and the transition report over it."""
        wait_until(
            "five boots synced",
            lambda: len(self.fleet_boots()) == 5 and self.fleet_crash_rows() > 0,
            timeout=300,
        )
        (count,) = wait_until(
            "count 0 after the cold boot",
            lambda: self.query("khod_kexecs_since_cold_boot == 0"),
            timeout=120,
        )
        report = subprocess.run(
            [
                str(REPO / ".venv/bin/khoctl"),
                "report",
                "transitions",
                "--db",
                self.pg_url,
                "--json",
                "--window",  # every boot of the chain counts at once (the guests are minutes old)
                "0s",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        self.saw["final"] = {
            "fleet_boots": self.fleet_boots(),
            "count": count,
            "report_rc": report.returncode,
            "report": json.loads(report.stdout) if report.returncode == 0 else report.stderr,
        }

    def fleet_crash_rows(self) -> int:
        engine = create_engine(self.pg_url)
        try:
            with engine.connect() as c:
                q = "SELECT count(*) FROM pstore_records WHERE reason IN ('Panic', 'Oops')"
                return int(c.execute(text(q)).scalar() or 0)
        finally:
            engine.dispose()


def chain_plan() -> list[dict[str, Any]]:
    allow = (
        f"mkdir -p {Path(ALLOW).parent} && printf '[Service]\\nIPAddressAllow=10.0.2.2\\n' "
        f"> {ALLOW} && systemctl daemon-reload && systemctl restart khod.service"
    )
    return [
        # 0: cold boot on a; scraped only after the unit drop-in; then a -> b via systemd
        {"do": ["@host refused", allow, "@host allowed"], "then": KEXEC_B},
        # 1: b, with a configuration drop-in that does not parse from before khod started
        {
            "early": [f"printf '[daemon\\nlisten = 1\\n' > {BROKEN}"],
            "do": [
                "sleep 30",  # Restart=on-failure has had time to loop, if it would
                "@report broken",
                f"rm {BROKEN} && systemctl reset-failed khod.service; systemctl start khod.service",
                "@report fixed",
            ],
            "then": KEXEC_A,
        },
        # 2: a; a kexec khoctl did not make: khod-kexec.service records it at kexec.target
        {"then": "kexec -s -l /boot/khod-e2e/bzImage-b --reuse-cmdline && systemctl kexec"},
        # 3: b; a panic: panic=-1 resets the machine, ramoops keeps the dump
        {"then": PANIC},
        # 4: the cold boot after the panic (QEMU boots kernel a again)
        {"do": ["@host final"]},
    ]


@pytest.fixture(scope="module")
def chain(
    image: tuple[Path, Path], pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Run, Fleet]:
    tar, kernels = image
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), pg_server)
    # the suite's plaintext PostgreSQL: the operator's explicit opt-out of verified TLS
    # (a remote URL is verify-full otherwise); tests/fleet/test_fleet_trust.py runs the
    # trusted path, per-host roles over TLS
    remote = (
        f'[daemon]\nlisten = "0.0.0.0:9733"\n\n[sync]\nto = "{fleet.guest_url}"\n'
        'interval = "10s"\nsslmode = "disable"\n'
    )
    with process(fleet.prom_argv, fleet.tmp / "prometheus.log"):
        r = guestimage.run(
            "chain",
            tar,
            kernels,
            chain_plan(),
            append=APPEND,
            files={REMOTE.lstrip("/"): remote},
            forward=fleet.forward,
            host={"refused": fleet.refused, "allowed": fleet.allowed, "final": fleet.final},
        )
    show(r, f"host saw: {json.dumps(fleet.saw, default=str)[:3000]}")
    return r, fleet


def test_the_chain_lands_through_systemctl_kexec(chain: tuple[Run, Fleet]) -> None:
    r, _ = chain
    assert r.rc == 0 and len(r.boots) == 5, r.digest()
    assert r.host_errors == []
    recs = records(r.db)
    rel = {b.n: b.out("release").strip() for b in r.boots}
    got = []
    for b in r.boots:
        rec = recs[b.boot_id]
        said = b.exec_from()
        if said is not None:  # khod agrees with the kernel's own line
            assert (rec["previous_release"], rec["kexec_count"]) == said, (b.n, rec, said)
        got.append((rec["kind"], rec["previous_release"], rec["kexec_count"], rec.get("verdict")))
    assert got == [
        ("cold", None, 0, None),
        ("kexec", rel[0], 1, "landed"),
        ("kexec", rel[1], 2, "landed"),
        ("kexec", rel[2], 3, "landed"),
        ("cold", None, 0, None),
    ], got
    assert rel[1].endswith("-khod-b") and rel[2].endswith("-khod-a")


def test_each_kexec_is_recorded_by_whoever_made_it(chain: tuple[Run, Fleet]) -> None:
    import sqlite3

    r, _ = chain
    with sqlite3.connect(r.db) as c:
        sources = [s for (s,) in c.execute("SELECT source FROM kexec_attempts ORDER BY id")]
    # khoctl kexec twice (its own record; the hook at kexec.target finds it open), then
    # the hand-made kexec, which only the hook saw
    assert sources == ["khoctl", "khoctl", "hook"], sources


def test_a_broken_drop_in_stops_khod_with_one_line(chain: tuple[Run, Fleet]) -> None:
    r, _ = chain
    b = r.boots[1]
    assert b.out("broken/is-active").strip() == "failed", b.out("broken/journal-khod")
    said = [
        line
        for line in b.out("broken/journal-khod").splitlines()
        if "khod.service" not in line.split(":", 1)[0] and "70-e2e-broken.toml" in line
    ]
    assert len(said) == 1, b.out("broken/journal-khod")  # no restart loop
    assert "Traceback" not in b.out("broken/journal")
    # fixed: the boot it captured first is recorded, as the kexec it was
    s = status(b, "fixed")
    assert b.out("fixed/is-active").strip() == "active", b.out("fixed/journal-khod")
    assert (s.get("boot_id"), s.get("kind"), s.get("kexec_count")) == (b.boot_id, "kexec", 1), s


def pstore_entries(b: Boot) -> list[dict[str, Any]]:
    """khod's pstore journal entries of this boot, as its last report saw them (a boot
    reports again after a step: ``fixed/``, ``loaded/``)."""
    seen: dict[str, dict[str, Any]] = {}
    for f in sorted(b.dir.glob("**/journal-pstore.json")):
        for line in f.read_text().splitlines():
            if line:
                e = json.loads(line)
                seen[e["__CURSOR"]] = e
    return list(seen.values())


def kept_once(r: Run) -> dict[int, set[str]]:
    """The reasons of the pstore records in the guest's store, by the boot (n) that
    collected them, once it is asserted that each record was kept once and journaled
    once, by the boot that kept it."""
    import sqlite3

    ids = {b.boot_id: b.n for b in r.boots}
    with sqlite3.connect(r.db) as c:
        rows = list(
            c.execute(
                "SELECT p.sha256, p.reason, b.boot_id FROM pstore_records p "
                "JOIN boots b ON b.id = p.collected_by"
            )
        )
    assert len({sha for sha, *_ in rows}) == len(rows), rows  # each record kept once
    kept = Counter(ids[boot] for *_, boot in rows)
    journaled = Counter(b.n for b in r.boots for _ in pstore_entries(b))
    assert journaled == kept, (journaled, kept)  # one entry per record, in its boot
    reasons: dict[int, set[str]] = {}
    for _, reason, boot in rows:
        reasons.setdefault(ids[boot], set()).add(reason)
    return reasons


def test_each_pstore_record_is_kept_and_journaled_once(chain: tuple[Run, Fleet]) -> None:
    r, _ = chain
    kept = kept_once(r)
    assert set(kept) == {1, 2, 3, 4}, kept  # every kexec left records, and the panic
    panic = [e for e in pstore_entries(r.boots[4]) if e.get("KHOD_PSTORE_REASON") == "Panic"]
    assert panic and panic[0]["PRIORITY"] == "3", pstore_entries(r.boots[4])
    # systemd-pstore moved them: /sys/fs/pstore is empty, its archive has them
    for b in r.boots[1:]:
        assert "ramoops" not in b.out("pstore-sys"), b.out("pstore-sys")
    assert "dmesg-ramoops" in r.boots[4].out("pstore-archive"), r.boots[4].out("pstore-archive")


def test_the_firewall_refuses_a_remote_scrape_until_the_drop_in(chain: tuple[Run, Fleet]) -> None:
    r, fleet = chain
    refused, allowed = fleet.saw.get("refused"), fleet.saw.get("allowed")
    assert refused and allowed, (fleet.saw, r.host_errors)
    assert refused["fleet_boots"] == []  # the sync was refused too
    assert "khod_kexecs_since_cold_boot" in r.boots[0].out("metrics")  # khod was serving
    assert allowed["count"]["value"][1] == "0"
    assert [b["boot_id"] for b in allowed["fleet_boots"]] == [r.boots[0].boot_id]


def test_the_chain_reaches_the_fleet_database_and_its_report(chain: tuple[Run, Fleet]) -> None:
    r, fleet = chain
    final = fleet.saw.get("final")
    assert final, (fleet.saw, r.host_errors)
    assert sorted((b["boot_id"], b["kexec_count"]) for b in final["fleet_boots"]) == sorted(
        (b.boot_id, records(r.db)[b.boot_id]["kexec_count"]) for b in r.boots
    )
    a, b_ = r.boots[0].out("release").strip(), r.boots[1].out("release").strip()
    report = {(t["previous_release"], t["release"]): t for t in final["report"]}
    assert (report[(a, b_)]["boots"], report[(a, b_)]["crashes"]) == (2, 1), report
    assert (report[(b_, a)]["boots"], report[(b_, a)]["crashes"]) == (1, 0), report
    # the real attempts (khoctl kexec twice, the hook once) and their verdicts, and the
    # kernels' own warnings counted at every boot, reached the fleet and its report
    assert [(report[t]["attempts"], report[t]["landed"]) for t in ((a, b_), (b_, a))] == [
        (2, 2),
        (1, 1),
    ], report
    assert all(report[t]["logged_boots"] == report[t]["boots"] for t in ((a, b_), (b_, a)))
    # three boots are too few to say a transition is worse than its baseline
    assert {report[t]["verdict"] for t in ((a, b_), (b_, a))} == {"no evidence"}, report


# --- khod owns pstore (khod-pstore.service), systemd-pstore masked ---------------------


@pytest.fixture(scope="module")
def owner(image: tuple[Path, Path]) -> Run:
    tar, kernels = image
    r = guestimage.run(
        "owner",
        tar,
        kernels,
        [{"then": KEXEC_B}, {"then": PANIC}, {}],
        append=APPEND,
        files={
            "etc/systemd/system/systemd-pstore.service": "@/dev/null",
            "etc/systemd/system/sysinit.target.wants/khod-pstore.service": (
                "@/usr/lib/systemd/system/khod-pstore.service"
            ),
        },
    )
    show(r)
    return r


def test_khod_owning_pstore_loses_and_doubles_nothing(owner: Run) -> None:
    import sqlite3

    r = owner
    assert r.rc == 0 and len(r.boots) == 3, r.digest()
    kept = kept_once(r)
    assert set(kept) == {1, 2} and "Panic" in kept[2], kept
    with sqlite3.connect(r.db) as c:
        (unlinked,) = c.execute(
            "SELECT count(*) FROM events WHERE kind = 'pstore-unlinked'"
        ).fetchone()
    assert unlinked, "khod-pstore.service unlinked nothing"
    for b in r.boots[1:]:  # khod-pstore emptied the backend; nothing was archived
        assert "ramoops" not in b.out("pstore-sys") + b.out("pstore-archive"), b.dir
        assert b.out("failed").strip() == "", b.out("failed")


# --- Debian's own kernel: no KHO, pstore backends as modules (scenario 7) -------------
# then kexecs into itself (issue 27): by khoctl kexec --force, then by hand

CLOUD_APPEND = (  # no_timer_check: see tests/vm/harness.py
    "console=ttyS0 loglevel=7 panic=-1 nokaslr no_timer_check reserve_mem=1M:4096:oops"
)
# ramoops over the region reserve_mem set aside at boot: the same RAM after a reset
RAMOOPS = "modprobe ramoops mem_name=oops record_size=65536 console_size=65536 max_reason=4"
CRASH_ID = sd.MESSAGE_IDS["pstore-crash"]
# Debian's own kernel and initramfs, the ones it runs: the kexec is into itself
SELF = "--kernel /boot/vmlinuz-$(uname -r) --initrd /boot/initrd.img-$(uname -r)"
KEXEC_SELF = f"khoctl kexec {SELF}"
# a kexec khoctl did not make, with the kexec.target hook turned off for this boot (an
# operator's choice): no attempt record, only the journal can show no boot came between
BY_HAND = (
    "systemctl mask --runtime khod-kexec.service && kexec -l /boot/vmlinuz-$(uname -r) "
    "--initrd=/boot/initrd.img-$(uname -r) --reuse-cmdline && systemctl kexec"
)
# what khod's journal source reads, run as the product runs it, on this real journal
JOURNAL_SOURCE = (
    "python3 -c 'from khod.collect.collector import Collector; "
    "from khod.collect.journal import journal_previous_boot; from khod.paths import HostPaths; "
    "c = Collector(HostPaths()); "
    'print(journal_previous_boot(c, open("/proc/sys/kernel/random/boot_id").read().strip())); '
    "print([e.message for e in c.events])'"
)
PERSISTENT = "[Journal]\nStorage=persistent\n"
# the do commands of the boots after the kexecs (their outputs: do-0.out ...)
AFTER_KEXEC = ["cat /proc/version", "journalctl --list-boots -o json --no-pager", JOURNAL_SOURCE]


@pytest.fixture(scope="module")
def cloud(image: tuple[Path, Path]) -> Run:
    tar, kernels = image
    cloud_tar, built = guestimage.cloud_image(tar)
    wait_crash = (  # the rescan a module uevent starts: until its journal entry shows
        f"for i in $(seq 90); do journalctl -b -q MESSAGE_ID={CRASH_ID} | grep -q . "
        "&& break; sleep 2; done; journalctl -b -q -u khod.service -o cat | tail -5"
    )
    r = guestimage.run(
        "cloud",
        cloud_tar,
        kernels,
        [
            # 0: cold; ramoops loaded by hand after khod started, then a panic into it
            {"do": [RAMOOPS, "sleep 20", "@report loaded"], "then": PANIC},
            # 1: after the reset; the dump is there once ramoops is loaded again; then
            # khoctl kexec into this same kernel: refused (no KHO), then --force
            {
                "do": [RAMOOPS, wait_crash, "@report loaded", "cat /proc/version", KEXEC_SELF],
                "then": f"{KEXEC_SELF} --force",
            },
            # 2: landed by khoctl's kexec; then kexec -l + systemctl kexec by hand
            {"do": AFTER_KEXEC, "then": BY_HAND},
            # 3: landed by the hand-made kexec
            {"do": AFTER_KEXEC},
        ],
        append=CLOUD_APPEND,
        own_kernel=True,
        files={"etc/systemd/journald.conf.d/50-e2e-persistent.conf": PERSISTENT},
    )
    show(r, f"cloud image: {cloud_tar.name}, " + (f"built in {built:.0f}s" if built else "cached"))
    return r


def test_debians_kernel_is_recorded_without_kho(cloud: Run) -> None:
    r = cloud
    assert r.rc == 0 and len(r.boots) == 4, r.digest()
    for b in r.boots:
        assert b.out("release").strip().endswith("-cloud-amd64"), b.out("release")
        s = status(b)
        assert (s.get("boot_id"), s["kho"]["enabled"]) == (b.boot_id, False), s
        assert b.out("failed").strip() == "", b.out("failed")
        assert not [line for line in khod_lines(b) if any(d in line for d in DENIALS)]
        assert b.kho_lines == [], b.kho_lines  # the kernel's own log: no KHO at all
    assert [status(b).get("kind") for b in r.boots[:2]] == ["cold", "cold"]


def release_of(b: Boot, i: int) -> str:
    """The release in the kernel's own /proc/version (a ``do`` command's output)."""
    m = re.search(r"^Linux version (\S+) ", b.out(f"do-{i}.out"), re.M)
    assert m, b.out(f"do-{i}.out")
    return m.group(1)


def test_debians_kernel_kexecs_into_itself(cloud: Run) -> None:
    """khoctl kexec --force, then kexec -l + systemctl kexec: each a kexec without a
    handover (0xD0), its chain one on from the boot before: from khoctl's attempt, then
    from the journal (the hook turned off: no attempt record)."""
    r = cloud
    assert r.rc == 0 and len(r.boots) == 4, r.digest()
    recs = records(r.db)
    one, two, three = r.boots[1], r.boots[2], r.boots[3]
    # without --force, khoctl refuses a kexec with no KHO to hand over
    refused = one.out("do-4.out")
    assert refused.rstrip().endswith("[rc 1]") and "kho-enabled" in refused, refused
    rel = [release_of(one, 3), release_of(two, 0), release_of(three, 0)]
    assert rel[0] == rel[1] == rel[2] == one.out("release").strip()  # into itself
    got = [
        (
            recs[b.boot_id]["kind"],
            recs[b.boot_id]["bootloader_type"],
            recs[b.boot_id]["previous_release"],
            recs[b.boot_id]["kexec_count"],
            recs[b.boot_id]["metadata_source"],
            recs[b.boot_id].get("verdict"),
        )
        for b in r.boots
    ]
    assert [int(b.out("bootloader_type").strip()) for b in r.boots[2:]] == [0xD0, 0xD0]
    assert got[1][0] == "cold" and got[1][3] == 0, got
    assert got[2:] == [
        # khoctl's attempt: the chain from it; landed, with no handover (there was none to
        # make: the kernel has no KHO)
        ("kexec-no-handover", 0xD0, rel[0], 1, "attempt", "landed-without-handover"),
        # by hand, the hook off: no attempt; the journal's boot before is boot 2
        ("kexec-no-handover", 0xD0, rel[1], 2, "derived", None),
    ], got
    import sqlite3

    with sqlite3.connect(r.db) as c:
        sources = [s for (s,) in c.execute("SELECT source FROM kexec_attempts ORDER BY id")]
    assert sources == ["khoctl"], sources  # the refused one was not recorded, nor the hand-made
    # khod's journal source read the real journal: boot 2 just before boot 3
    boots = json.loads(three.out("do-1.out").split("\n", 1)[1].rsplit("[rc", 1)[0])
    ids = [b["boot_id"] for b in sorted(boots, key=lambda b: b["index"])]
    plain = [b.boot_id.replace("-", "") for b in r.boots]
    assert ids[-2:] == plain[2:], (ids, plain)
    said = three.out("do-2.out").splitlines()
    assert said[1:3] == [plain[2], "[]"], said
    # and journaled, as stored
    for b, source in ((two, "attempt"), (three, "derived")):
        s = status(b)
        assert (s.get("kind"), s.get("metadata_source")) == ("kexec-no-handover", source), s


def test_a_pstore_backend_loaded_late_is_picked_up_through_udev(cloud: Run) -> None:
    import sqlite3

    r = cloud
    b = r.boots[1]
    assert "ramoops" not in b.out("pstore-sys")  # nothing at boot: the module was not loaded
    at_boot = [json.loads(line) for line in b.out("journal-pstore.json").splitlines() if line]
    assert not [e for e in at_boot if e.get("MESSAGE_ID") == CRASH_ID], at_boot
    journal = b.out("loaded/journal-khod")
    assert "a kernel module loaded: rescanning pstore" in journal, journal[-3000:]
    after = [json.loads(line) for line in b.out("loaded/journal-pstore.json").splitlines() if line]
    crashes = [e.get("KHOD_PSTORE_REASON") for e in after if e.get("MESSAGE_ID") == CRASH_ID]
    assert crashes == ["Panic"], after  # journaled once, by the rescan
    with sqlite3.connect(r.db) as c:
        rows = list(
            c.execute(
                "SELECT p.reason, d.boot_id FROM pstore_records p "
                "JOIN boots b ON b.id = p.collected_by LEFT JOIN boots d ON d.id = p.describes "
                "WHERE b.boot_id = ?",
                (b.boot_id,),
            )
        )
    assert ("Panic", r.boots[0].boot_id) in rows, rows  # the panic of the boot before
