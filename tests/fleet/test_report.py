"""The transition report on a fleet worked out by hand: attempts and what became of
them, crashes and warnings after landing, baselines, Wilson intervals and the verdict
(Fisher's exact test). Every test taking db_url runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from math import comb, sqrt
from pathlib import Path
from typing import Any

import pytest

from khod.fleet.stats import Thresholds, fisher, wilson
from tests.builders import attempt_row, boot_row, pstore_row, write_export
from tests.fleet.test_fleet import ctl

T0 = 1_790_000_000
Z = 1.959963984540054  # the 97.5% quantile of the normal law: 95% intervals


def attempt_obj(
    machine: str,
    n: int,
    from_boot: str,
    prev: str,
    target: str | None,
    verdict: str | None,
    verdict_boot: str | None = None,
) -> dict[str, Any]:
    return attempt_row(
        machine,
        f"{machine[:8]}-0000-4000-8000-{n:012x}",
        from_boot=from_boot,
        prev=prev,
        target=target,
        verdict=verdict,
        verdict_boot=verdict_boot,
        created_at=float(T0 + n),
    )


def host(i: int, group: str) -> str:
    return f"{group}{i:031x}"


def fleet() -> list[dict[str, Any]]:
    """Worked out by hand (each host's boots in order; kexec attempts made from a boot
    are judged by the next one):

    7.0 -> 7.1, large and bad: hosts a0..a19 each boot cold 7.0, kexec 7.1, cold 7.0,
        kexec 7.1, cold 7.0: 40 boots on 20 hosts, 40 attempts landed. a0..a9's first
        7.1 boot panicked (found by the cold boot after it): 10 crashes. a10, a11's first
        7.1 boot logged 1 warning each: 2 warned of 40. From a0..a9's last boot one more
        attempt each: 4 cold-boot, 2 mismatch (failed to land), 4 abi-mismatch
        (rejected): 50 attempts, 10 that did not land. a10 has a superseded attempt,
        a11 a failed (load) one, a12 an open one: none of them ran, none counted.
    6.9 -> 7.1, small and noisy: hosts s0..s2 boot cold 6.9, kexec 7.1 (3 attempts
        landed); s0's 7.1 boot panicked (s0 boots cold 6.9 again), s1's logged 2
        warnings and did not crash: 1 crash of 3, 1 warned of 3.
    7.1 cold: hosts c0..c39 boot cold 7.1 once: 40 boots, no crash, no warning.
        c0..c3 then try 7.1 -> 7.3, and every attempt falls back to firmware (4 of 4
        failed to land, no boot of 7.3 at all).
    6.8 -> 7.2, warnings without crashes: hosts w0..w29 boot cold 6.8, kexec 7.2 (the
        kexec.target hook's attempts: no target release, the boot that judged them
        names it; 30 landed). w0..w9 logged 1, 2, 3, 1, 2, 3, 1, 2, 3, 1 warnings (19),
        w10..w24 none, w25..w29 were recorded by a khod that did not count them (NULL):
        10 warned of 25 counted, 0 crashes. One more hook attempt from w0's 7.2 boot
        fell back to firmware: it names no target and is left out.
    7.2 cold: hosts d0..d24 boot cold 7.2 once: 25 boots, no warning.
    """
    objs: list[dict[str, Any]] = []
    n = 0

    def boot(m: str, b: str, rel: str, prev: str | None, t: int, warnings: int | None = 0) -> str:
        objs.append(boot_row(m, b, rel, prev, T0 + t) | {"warnings": warnings})
        return b

    def attempt(m: str, frm: str, prev: str, to: str | None, v: str | None, vb: str | None) -> None:
        nonlocal n
        n += 1
        objs.append(attempt_obj(m, n, frm, prev, to, v, vb))

    for i in range(20):
        m = host(i, "a")
        b0 = boot(m, f"a{i}-0", "7.0", None, 0)
        b1 = boot(m, f"a{i}-1", "7.1", "7.0", 100, 1 if i in (10, 11) else 0)
        b2 = boot(m, f"a{i}-2", "7.0", None, 200)
        b3 = boot(m, f"a{i}-3", "7.1", "7.0", 300)
        b4 = boot(m, f"a{i}-4", "7.0", None, 400)
        attempt(m, b0, "7.0", "7.1", "landed", b1)
        attempt(m, b2, "7.0", "7.1", "landed", b3)
        if i < 10:
            objs.append(pstore_row(m, b2, b1, "Panic"))
            failed = ["cold-boot"] * 4 + ["mismatch"] * 2 + ["abi-mismatch"] * 4
            attempt(m, b4, "7.0", "7.1", failed[i], None)
        elif i <= 12:
            attempt(m, b4, "7.0", "7.1", {10: "superseded", 11: "failed", 12: None}[i], None)
    for i in range(3):
        m = host(i, "b")
        b0 = boot(m, f"s{i}-0", "6.9", None, 0)
        b1 = boot(m, f"s{i}-1", "7.1", "6.9", 100, 2 if i == 1 else 0)
        attempt(m, b0, "6.9", "7.1", "landed", b1)
        if i == 0:
            boot(m, "s0-2", "6.9", None, 200)
            objs.append(pstore_row(m, "s0-2", b1, "Panic"))
    for i in range(40):
        m = host(i, "c")
        b0 = boot(m, f"c{i}-0", "7.1", None, 0)
        if i < 4:
            attempt(m, b0, "7.1", "7.3", "cold-boot", None)
    counts = [1, 2, 3, 1, 2, 3, 1, 2, 3, 1] + [0] * 15 + [None] * 5
    for i in range(30):
        m = host(i, "e")
        b0 = boot(m, f"w{i}-0", "6.8", None, 0)
        b1 = boot(m, f"w{i}-1", "7.2", "6.8", 100, counts[i])
        attempt(m, b0, "6.8", None, "landed", b1)
        if i == 0:
            attempt(m, b1, "7.2", None, "cold-boot", None)
    for i in range(25):
        boot(host(i, "d"), f"d{i}-0", "7.2", None, 0)
    return sorted(objs, key=lambda o: ["boot", "pstore", "attempt"].index(o["object"]))


def w(k: int, n: int) -> tuple[float, float]:
    """The Wilson interval, written out: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    p, z2 = k / n, Z * Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z * sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (0.0 if k == 0 else centre - half, 1.0 if k == n else centre + half)


def upper(k1: int, n1: int, k2: int, n2: int) -> float:
    """P(X >= k1), X hypergeometric (the rows do not differ): by exact binomials."""
    big_n, big_k = n1 + n2, k1 + k2
    top = min(n1, big_k)
    return sum(comb(big_k, x) * comb(big_n - big_k, n1 - x) for x in range(k1, top + 1)) / comb(
        big_n, n1
    )


def lower(k1: int, n1: int, k2: int, n2: int) -> float:
    big_n, big_k = n1 + n2, k1 + k2
    bottom = max(0, n1 - (big_n - big_k))
    return sum(comb(big_k, x) * comb(big_n - big_k, n1 - x) for x in range(bottom, k1 + 1)) / comb(
        big_n, n1
    )


def two_sided(k1: int, n1: int, k2: int, n2: int) -> float:
    return min(1.0, 2 * min(upper(k1, n1, k2, n2), lower(k1, n1, k2, n2)))


@pytest.fixture
def report(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    f = write_export(tmp_path / "fleet.jsonl", fleet())
    rc, out, err = ctl(capsys, "import", str(f), "--db", db_url, "--json")
    assert rc == 0, err
    assert json.loads(out)["new"] == {"boot": 232, "pstore": 11, "attempt": 91}

    def run(*argv: str) -> tuple[int, str, str]:
        return ctl(capsys, "report", "transitions", "--db", db_url, *argv)

    return run


# (previous_release, release): boots, hosts, crashes, attempts, landed, failed_to_land,
# rejected, without_handover, logged_boots, warned_boots, warnings, verdict; worst first
# (by verdict, then crash rate: 7.0 -> 7.1 at 25% before 6.8 -> 7.2 at 0%; the small
# 6.9 -> 7.1 at 33% is no evidence and comes after both)
ROWS = [
    (("7.0", "7.1"), (40, 20, 10, 50, 40, 6, 4, 0, 40, 2, 2, "worse")),
    (("6.8", "7.2"), (30, 30, 0, 30, 30, 0, 0, 0, 25, 10, 19, "worse")),
    (("6.9", "7.1"), (3, 3, 1, 3, 3, 0, 0, 0, 3, 1, 2, "no evidence")),
    (("7.1", "7.3"), (0, 0, 0, 4, 0, 4, 0, 0, 0, 0, 0, "no evidence")),
]
COUNTS = [
    "boots",
    "hosts",
    "crashes",
    "attempts",
    "landed",
    "failed_to_land",
    "rejected",
    "without_handover",
    "logged_boots",
    "warned_boots",
    "warnings",
    "verdict",
]

# rate -> (count, of), (baseline count, baseline of, scope), (hosts affected, hosts),
# (baseline's), verdict; the p-value is two_sided() on the hosts
TESTS = {
    ("7.0", "7.1"): {
        # baseline: 7.1's 40 cold boots on c0..c39 (no crash); 10 of 20 hosts crashed
        "crash": ((10, 40), (0, 40, "cold"), (10, 20), (0, 40), "worse"),
        "warning": ((2, 40), (0, 40, "cold"), (2, 20), (0, 40), "no evidence"),
        # into 7.1 from elsewhere: 3 hosts, fewer than 5: the fleet's other transitions
        # but 7.1 -> 7.3 (4 of 4 failed, p = 3e-5 against the rest: suspect, left out):
        # 6.9 -> 7.1 (3) and 6.8 -> 7.2 (30), none failed
        "land_failure": ((10, 50), (0, 33, "fleet"), (10, 20), (0, 33), "worse"),
    },
    ("6.8", "7.2"): {
        "crash": ((0, 30), (0, 25, "cold"), (0, 30), (0, 25), "no evidence"),  # p = 1
        # w0..w24 counted, w0..w9 warned; the baseline: d0..d24, none
        "warning": ((10, 25), (0, 25, "cold"), (10, 25), (0, 25), "worse"),
        # the fleet but 7.0 -> 7.1 (worse) and 7.1 -> 7.3 (suspect): 6.9 -> 7.1 alone,
        # 3 hosts: no verdict (the report as it was called this "better", against the
        # very failures of those two)
        "land_failure": ((0, 30), (0, 3, "fleet"), (0, 30), (0, 3), "no evidence"),
    },
    ("6.9", "7.1"): {
        # 1 of 3 hosts, 3 < 5: no evidence whatever the p-value (0.14)
        "crash": ((1, 3), (0, 40, "cold"), (1, 3), (0, 40), "no evidence"),
        "warning": ((1, 3), (0, 40, "cold"), (1, 3), (0, 40), "no evidence"),
        # 7.0 -> 7.1 is worse in landing: left out, so the fleet's (6.8 -> 7.2)
        "land_failure": ((0, 3), (0, 30, "fleet"), (0, 3), (0, 30), "no evidence"),
    },
    ("7.1", "7.3"): {
        "crash": ((0, 0), (0, 0, "release"), (0, 0), (0, 0), "no evidence"),
        "warning": ((0, 0), (0, 0, "release"), (0, 0), (0, 0), "no evidence"),
        # p = 3e-5, but 4 hosts are fewer than 5
        "land_failure": ((4, 4), (0, 33, "fleet"), (4, 4), (0, 33), "no evidence"),
    },
}


def test_every_count_of_the_hand_computed_fleet(report: Any) -> None:
    rc, out, err = report("--json")
    assert rc == 0, err
    got = [
        ((r["previous_release"], r["release"]), tuple(r[k] for k in COUNTS))
        for r in json.loads(out)
    ]
    assert got == ROWS
    rows = {(r["previous_release"], r["release"]): r for r in json.loads(out)}
    assert rows[("7.0", "7.1")]["crash_rate"] == 0.25
    assert rows[("7.1", "7.3")]["crash_rate"] is None  # nothing landed: no rate
    assert rows[("7.1", "7.3")]["first_booted_at"] is None
    assert rows[("7.0", "7.1")]["first_booted_at"] == T0 + 100
    assert rows[("7.0", "7.1")]["last_booted_at"] == T0 + 300


def test_every_rate_interval_and_verdict_of_the_hand_computed_fleet(report: Any) -> None:
    _, out, _ = report("--json")
    rows = {(r["previous_release"], r["release"]): r for r in json.loads(out)}
    for key, tests in TESTS.items():
        assert set(rows[key]["rates"]) == set(tests)
        for name, ((k, n), (bk, bn, scope), (hk, hn), (bhk, bhn), verdict) in tests.items():
            got = rows[key]["rates"][name]
            where = f"{key} {name}"
            assert (got["count"], got["of"], got["verdict"]) == (k, n, verdict), where
            base = got["baseline"]
            assert (base["count"], base["of"], base["scope"]) == (bk, bn, scope), where
            assert (got["hosts"]["count"], got["hosts"]["of"]) == (hk, hn), where
            assert (base["hosts"]["count"], base["hosts"]["of"]) == (bhk, bhn), where
            if n:
                assert got["rate"] == pytest.approx(k / n)
                assert got["interval"] == pytest.approx(w(k, n), abs=1e-12), where
            else:
                assert got["rate"] is None and got["interval"] == [0.0, 1.0]
            if bn:
                assert base["interval"] == pytest.approx(w(bk, bn), abs=1e-12), where
            if hn and bhn:
                assert got["p_value"] == pytest.approx(two_sided(hk, hn, bhk, bhn), rel=1e-9)
                e = e_value(hk, hn, bhk, bhn) if min(hn, bhn) >= 5 else 1.0  # too few hosts
                assert got["e_value"] == pytest.approx(e, rel=1e-9), where
            else:
                assert got["p_value"] is None
    # the figures quoted above
    crash = rows[("7.0", "7.1")]["rates"]["crash"]
    assert [round(x, 4) for x in crash["interval"]] == [0.1419, 0.4019]
    assert round(rows[("7.1", "7.3")]["rates"]["land_failure"]["p_value"], 5) == 0.00003
    assert round(rows[("6.9", "7.1")]["rates"]["crash"]["p_value"], 2) == 0.14
    warned = rows[("6.8", "7.2")]["rates"]["warning"]
    assert warned["p_value"] == pytest.approx(2 * comb(40, 15) / comb(50, 25))
    assert [round(x, 4) for x in warned["interval"]] == [0.2340, 0.5926]
    # e-BH over the m = 5 rates with 5 hosts on each side (7.0 -> 7.1's three, 6.8 ->
    # 7.2's crash and warning): k = 3 is the largest with e_(k) >= m / (0.01 k)
    tested = sorted(
        (
            c["e_value"]
            for r in rows.values()
            for c in r["rates"].values()
            if c["hosts"]["of"] >= 5 and c["baseline"]["hosts"]["of"] >= 5
        ),
        reverse=True,
    )
    assert len(tested) == 5
    assert tested[2] >= 5 / (0.01 * 3)
    assert tested[3] < 5 / (0.01 * 4) and tested[4] < 5 / (0.01 * 5)


def e_value(k: int, n: int, bk: int, bn: int) -> float:
    """The mixture likelihood ratio written out: the baseline's rate at the top of its
    65% Wilson interval (Thresholds.bound), odds ratios 1.5 to 1000 equally weighted."""
    z = 0.9345892910734798  # the 82.5% quantile: a 65% interval
    p, z2 = bk / bn, z * z
    p0 = (p + z2 / (2 * bn) + z * sqrt(p * (1 - p) / bn + z2 / (4 * bn * bn))) / (1 + z2 / bn)
    total = 0.0
    for r in (1.5, 2, 3, 5, 10, 30, 100, 1000):
        odds = p0 / (1 - p0) * r
        q = odds / (1 + odds)
        total += (q / p0) ** k * ((1 - q) / (1 - p0)) ** (n - k)
    return total / 8


def words(line: str) -> str:
    return " ".join(line.split())


def test_the_text_report_shows_the_counts_the_intervals_and_the_verdicts(report: Any) -> None:
    rc, out, _ = report()
    assert rc == 0
    landed, attempts, tests, how = out.rstrip("\n").split("\n\n")
    assert [words(x) for x in landed.splitlines()] == [
        "PREVIOUS_RELEASE RELEASE BOOTS OBSERVED HOSTS HOSTS_AFFECTED CRASHES CRASH_RATE",
        "7.0 7.1 40 40 20 10 10 25.00%",
        "6.8 7.2 30 30 30 0 0 0.00%",
        "6.9 7.1 3 3 3 1 1 33.33%",
        "7.1 7.3 0 0 0 0 0 -",
    ]
    assert [words(x) for x in attempts.splitlines()] == [
        "PREVIOUS_RELEASE RELEASE ATTEMPTS LANDED FAILED_TO_LAND REJECTED NO_HANDOVER "
        "WARNED_BOOTS WARNINGS VERDICT",
        "7.0 7.1 50 40 6 4 0 2 2 worse",
        "6.8 7.2 30 30 0 0 0 10 19 worse",
        "6.9 7.1 3 3 0 0 0 1 2 no evidence",
        "7.1 7.3 4 0 4 0 0 0 0 no evidence",
    ]
    lines = [words(x) for x in tests.splitlines()]
    assert lines[0] == (
        "PREVIOUS_RELEASE RELEASE RATE TRANSITION (95% INTERVAL) BASELINE (95% INTERVAL) "
        "HOSTS AFFECTED P E VERDICT"
    )
    e = e_value(10, 20, 0, 40)
    assert lines[1] == (
        "7.0 7.1 crash 10/40 25.00% [14.19%, 40.19%] 0/40 0.00% [0.00%, 8.76%] (cold) "
        f"10/20 vs 0/40 4.9e-06 {e:.3g} worse"
    )
    e = e_value(10, 20, 0, 33)
    assert lines[3] == (
        "7.0 7.1 land failure 10/50 20.00% [11.24%, 33.04%] 0/33 0.00% [0.00%, 10.43%] "
        f"(fleet) 10/20 vs 0/33 1.9e-05 {e:.3g} worse"
    )
    e = e_value(10, 25, 0, 25)
    assert lines[5] == (
        "6.8 7.2 warning 10/25 40.00% [23.40%, 59.26%] 0/25 0.00% [0.00%, 13.32%] (cold) "
        f"10/25 vs 0/25 0.00064 {e:.3g} worse"
    )
    assert lines[7] == (
        "6.9 7.1 crash 1/3 33.33% [6.15%, 79.23%] 0/40 0.00% [0.00%, 8.76%] (cold) "
        "1/3 vs 0/40 0.14 1 no evidence"
    )
    assert len(lines) == 1 + 4 * 3
    how = words(how)
    assert "by hosts, against a clean baseline" in how
    assert "e-BH at 0.01" in how and "At least 5 hosts on each side" in how
    assert "24h after it landed" in how


def test_thresholds_move_the_verdicts(report: Any) -> None:
    def verdicts(*argv: str) -> dict[tuple[str, str], str]:
        rc, out, err = report("--json", *argv)
        assert rc == 0, err
        return {(r["previous_release"], r["release"]): r["verdict"] for r in json.loads(out)}

    # 4 of 4 hosts failed to land: enough once 4 hosts are enough
    assert verdicts("--min-evidence", "4")[("7.1", "7.3")] == "worse"
    # at 1e-7, 6.8 -> 7.2's warnings (10 of 25 hosts against 0 of 25, e = 4.6e6) are
    # not enough; 7.0 -> 7.1's crashes (10 of 20 against 0 of 40, e = 6.5e9) still are
    strict = verdicts("--alpha", "0.0000001")
    assert strict[("7.0", "7.1")] == "worse" and strict[("6.8", "7.2")] == "no evidence"
    # with 3 hosts enough, the noisy transition is still no evidence: 1 of 3
    assert verdicts("--min-evidence", "3")[("6.9", "7.1")] == "no evidence"
    # a window longer than the fleet's age: no boot counts, no verdict on crashes
    rows = json.loads(report("--json", "--window", "10000d")[1])
    assert {r["observed_boots"] for r in rows} == {0}
    assert {r["window"] for r in rows} == {10000 * 86400}
    assert all(r["rates"]["crash"]["verdict"] == "no evidence" for r in rows)


def test_the_baseline_rows_carry_rates_and_no_verdict(report: Any) -> None:
    rc, out, _ = report("--json", "--include-cold")
    assert rc == 0
    cold = {r["release"]: r for r in json.loads(out) if r["previous_release"] is None}
    assert {k: (r["boots"], r["crashes"], r["verdict"]) for k, r in cold.items()} == {
        "6.8": (30, 0, None),
        "6.9": (4, 0, None),  # s0..s2, and s0 again after its crash
        "7.0": (60, 0, None),
        "7.1": (40, 0, None),
        "7.2": (25, 0, None),
    }
    assert set(cold["7.1"]["rates"]) == {"crash", "warning"}  # a fresh boot is no attempt
    assert cold["7.1"]["rates"]["crash"]["baseline"] is None
    _, out, _ = report("--include-cold")
    assert "(cold boot) 7.1 0 0 0 0 0 0 0 (baseline)" in [words(x) for x in out.splitlines()]


def test_textfile_metrics_carry_the_counts_intervals_and_verdicts(
    report: Any, tmp_path: Path
) -> None:
    prom = tmp_path / "t.prom"
    assert report("--textfile", str(prom))[0] == 0
    text = prom.read_text()

    def value(name: str, prev: str, rel: str) -> float:
        prefix = f'khod_fleet_transition_{name}{{previous_release="{prev}",release="{rel}"}} '
        (line,) = [x for x in text.splitlines() if x.startswith(prefix)]
        return float(line.removeprefix(prefix))

    assert value("verdict", "7.0", "7.1") == 1.0
    assert value("verdict", "6.8", "7.2") == 1.0
    assert value("verdict", "6.9", "7.1") == 0.0
    assert value("attempts", "7.0", "7.1") == 50
    assert value("failed_to_land", "7.0", "7.1") == 6
    assert value("rejected", "7.0", "7.1") == 4
    assert value("without_handover", "7.0", "7.1") == 0
    assert value("warned_boots", "6.8", "7.2") == 10
    assert value("warnings", "6.8", "7.2") == 19
    assert value("crash_rate_low", "7.0", "7.1") == pytest.approx(w(10, 40)[0])
    assert value("crash_rate_high", "7.0", "7.1") == pytest.approx(w(10, 40)[1])
    assert value("baseline_crash_rate", "7.0", "7.1") == 0.0  # 7.1's 40 cold boots
    # hosts, the window, the e-value the corrected verdict is built on
    assert value("hosts_affected", "7.0", "7.1") == 10
    assert value("crash_hosts_affected", "7.0", "7.1") == 10
    assert value("land_failure_hosts_affected", "7.0", "7.1") == 10
    assert value("observed_boots", "7.0", "7.1") == 40
    assert value("window_seconds", "7.0", "7.1") == 86400
    assert value("crash_e_value", "7.0", "7.1") == pytest.approx(e_value(10, 20, 0, 40))
    assert value("warning_rate", "6.8", "7.2") == pytest.approx(10 / 25)
    assert value("land_failure_rate", "7.1", "7.3") == 1.0
    assert value("land_failure_rate_low", "7.1", "7.3") == pytest.approx(w(4, 4)[0])
    # nothing landed: no crash rate, no interval (a gap on the dashboard, not a zero)
    assert 'khod_fleet_transition_crash_rate{previous_release="7.1",release="7.3"}' not in text
    assert "machine_id" not in text and "boot_id" not in text  # no per-boot labels


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--alpha", "0"], "argument --alpha: expected a number above 0 below 1, got '0'"),
        (["--alpha", "1.5"], "argument --alpha: expected a number above 0 below 1, got '1.5'"),
        (
            ["--min-evidence", "-1"],
            "argument --min-evidence: expected a whole number from 0 to "
            "9223372036854775807, got '-1'",
        ),
    ],
)
def test_bad_thresholds_are_usage_errors(
    report: Any, capsys: pytest.CaptureFixture[str], argv: list[str], why: str
) -> None:
    """A threshold out of range is a usage error (exit 2): the usage, then one line."""
    with pytest.raises(SystemExit) as exit_:
        report(*argv)
    out, err = capsys.readouterr()
    assert (exit_.value.code, out, err.splitlines()[-1]) == (2, "", f"khoctl report: error: {why}")


# --- the statistics alone ----------------------------------------------------------


def test_cli_defaults_are_the_thresholds_defaults() -> None:
    from khod.cli import khoctl

    args = khoctl.parser().parse_args(["report", "transitions"])
    assert (args.alpha, args.min_evidence) == (Thresholds.alpha, Thresholds.min_n)


@pytest.mark.parametrize(
    ("k", "n", "interval"),
    [
        (0, 10, (0.0, 0.2775)),  # Newcombe (1998), table I
        (1, 29, (0.0061, 0.1718)),
        (15, 148, (0.0624, 0.1605)),
        (81, 263, (0.2553, 0.3662)),
        (10, 10, (0.7225, 1.0)),
    ],
)
def test_wilson_matches_the_published_intervals(
    k: int, n: int, interval: tuple[float, float]
) -> None:
    assert tuple(round(x, 4) for x in wilson(k, n)) == interval


@pytest.mark.parametrize(
    "table",
    [
        (1, 3, 40, 10000),
        (1, 20, 40, 10000),
        (2, 3, 1, 3),
        (0, 10, 5, 10),
        (7, 7, 0, 9),
        (30, 200, 100, 5000),
        (0, 50, 50, 50),
        (3, 9, 1, 12),
        (12, 15, 3, 30),
    ],
)
def test_fisher_tails_are_the_exact_sums(table: tuple[int, int, int, int]) -> None:
    p_ge, p_le = fisher(*table)
    assert p_ge == pytest.approx(upper(*table), rel=1e-9, abs=1e-300)
    assert p_le == pytest.approx(lower(*table), rel=1e-9, abs=1e-300)


def test_one_crash_in_three_hosts_is_no_evidence_against_forty_in_ten_thousand() -> None:
    from khod.fleet.stats import compare, correct

    th = Thresholds()
    # the exact chance of 1 or more of 3 at the baseline's 0.4% is 1.2%: suggestive,
    # and 3 hosts are too few to call it
    noisy = compare(1, 3, (40, 10_000), th)
    assert noisy.verdict == "no evidence" and round(noisy.p_value or 0, 3) == 0.024
    assert not noisy.enough and noisy.e_value == 1.0
    # 40 in 10,000 against 4 in 10,000 is worse, by a p-value of 1.7e-8, and an
    # e-value above 1 / alpha once e-BH has seen it (alone in its report)
    large = compare(40, 10_000, (4, 10_000), th)
    assert large.p_value == pytest.approx(two_sided(40, 10_000, 4, 10_000), rel=1e-9)
    assert large.e_value == pytest.approx(e_value(40, 10_000, 4, 10_000), rel=1e-9)
    assert large.e_value >= 1 / th.alpha
    assert [c.verdict for c in correct([noisy, large], th.alpha)] == ["no evidence", "worse"]


def test_e_bh_takes_the_largest_e_values_that_pass_m_over_alpha_k() -> None:
    from khod.fleet.stats import e_bh

    # m = 4, alpha 0.1: thresholds 40, 20, 13.3, 10 for k = 1..4; k = 2 is the largest
    # with e_(k) >= 4 / (0.1 k) (25 >= 20; 12 < 13.3, 1 < 10)
    assert e_bh([1.0, 25.0, 12.0, 30.0], 0.1) == [False, True, False, True]
    assert e_bh([39.0, 1.0, 1.0, 1.0], 0.1) == [False] * 4
    assert e_bh([], 0.1) == []


# --- warnings, from the kernel log to the report ------------------------------------


def test_a_boots_warnings_are_counted_and_grow_with_its_log(
    sysroot: Any, sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from khod.cli import khoctl, khod_main
    from khod.cli.common import run_main

    root = sysroot("kexec1/step1")
    kmsg = root / "dev" / "kmsg"
    with kmsg.open("ab") as f:
        f.write(b"4,385,2600000,-;WARNING: CPU: 0 PID: 1 at mm/memblock.c:1 x+0x1/0x2\n")
        f.write(b"12,386,2600001,-;WARNING: a user program wrote this\n")  # not the kernel
    argv = ["--sysroot", str(root), "--db", sqlite_url]
    assert run_main("khod", khod_main.main, ["--once", *argv]) == 0

    def exported() -> list[Any]:
        dump = tmp_path / "x.jsonl"
        assert run_main("khoctl", khoctl.main, ["export", "--db", sqlite_url, "-o", str(dump)]) == 0
        objs = [json.loads(x) for x in dump.read_text().splitlines()[1:]]
        return [o["warnings"] for o in objs if o["object"] == "boot"]

    assert exported() == [1]
    # later in the same boot (khoctl kexec and the hook look at it again before leaving)
    with kmsg.open("ab") as f:
        f.write(b"3,387,9000000,-;INFO: task kworker/0:1:12 blocked for more than 122 seconds.\n")
    assert run_main("khoctl", khoctl.main, ["record-kexec", *argv]) == 0
    assert exported() == [2]
    # the report counts it: 7.3.4-khlab-a -> 7.3.4-khlab-a, 1 warned boot of 1
    rc, out, _ = ctl(capsys, "report", "transitions", "--db", sqlite_url, "--json")
    assert rc == 0
    (row,) = json.loads(out)
    assert (row["logged_boots"], row["warned_boots"], row["warnings"]) == (1, 1, 2)


def test_an_export_without_warnings_still_imports(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write_export(tmp_path / "old.jsonl", [boot_row("1" * 32, "b-1", "7.1", "7.0", T0)])
    assert "warnings" not in boot_row("1" * 32, "b-1", "7.1", "7.0", T0)
    assert ctl(capsys, "import", str(f), "--db", db_url)[0] == 0
    rc, out, _ = ctl(capsys, "report", "transitions", "--db", db_url, "--json")
    assert rc == 0
    (row,) = json.loads(out)
    assert (row["boots"], row["logged_boots"], row["warned_boots"]) == (1, 0, 0)
    assert row["rates"]["warning"]["of"] == 0 and row["rates"]["warning"]["rate"] is None


# --- the verdicts a fleet kernel engineer can act on (five fleets, by hand) ----------


class Fleet:
    """Boots, attempts and crashes, host by host; a crashed boot is found by the next
    one, a cold boot of ``back`` (the release the host falls back to)."""

    def __init__(self) -> None:
        self.objs: list[dict[str, Any]] = []
        self.clock: dict[str, int] = {}
        self.n = 0

    def boot(
        self,
        m: str,
        rel: str,
        prev: str | None = None,
        crash: bool = False,
        back: str | None = None,
        at: int | None = None,
    ) -> str:
        t = self.clock.get(m, T0) + 100 if at is None else at
        self.clock[m] = t
        b = f"{m[-8:]}-{len(self.objs)}"
        self.objs.append(boot_row(m, b, rel, prev, t))
        if crash:
            found = self.boot(m, back or prev or rel, at=None if at is None else at + 3600)
            self.objs.append(pstore_row(m, found, b, "Panic"))
        return b

    def take(
        self,
        m: str,
        prev: str,
        rel: str,
        crash: bool = False,
        fail: bool = False,
        at: int | None = None,
    ) -> None:
        """A cold boot of prev, then khoctl kexec to rel: landed (and crashed), or not."""
        b0 = self.boot(m, prev, at=None if at is None else at - 100)
        self.n += 1
        if fail:
            self.objs.append(attempt_obj(m, self.n, b0, prev, rel, "cold-boot", None))
            self.boot(m, prev)
            return
        b1 = self.boot(m, rel, prev, crash=crash, at=at)
        self.objs.append(attempt_obj(m, self.n, b0, prev, rel, "landed", b1))

    def write(self, path: Path) -> Path:
        order = ["boot", "pstore", "attempt"]
        return write_export(path, sorted(self.objs, key=lambda o: order.index(o["object"])))


def hosts(group: str, n: int) -> list[str]:
    return [f"{group}{i:0{32 - len(group)}x}" for i in range(n)]


@pytest.fixture
def fleet_report(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    def run(f: Fleet, *argv: str) -> dict[tuple[str, str], Any]:
        path = f.write(tmp_path / "f.jsonl")
        assert ctl(capsys, "import", str(path), "--db", db_url)[0] == 0
        rc, out, err = ctl(capsys, "report", "transitions", "--db", db_url, "--json", *argv)
        assert rc == 0, err
        return {(r["previous_release"], r["release"]): r for r in json.loads(out)}

    return run


def test_a_bad_neighbour_does_not_make_a_good_transition_better(fleet_report: Any) -> None:
    """6.2 boots cold on n0..n49 (n0 crashed once); g0..g59 take 6.0 -> 6.2 and none
    crashes; x0..x19 take 6.1 -> 6.2 and every one crashes. Against every other boot of
    6.2 (cold, and from 6.1: 21 crashes of 71) 0 of 60 was "better"; against 6.2's
    boots without a handover it is 0 of 60 hosts against 1 of 50: no evidence."""
    f = Fleet()
    for i, m in enumerate(hosts("n", 50)):
        f.boot(m, "6.2", crash=i == 0)
    for m in hosts("g", 60):
        f.take(m, "6.0", "6.2")
    for m in hosts("x", 20):
        f.take(m, "6.1", "6.2", crash=True)
    rows = fleet_report(f)
    good, bad = rows[("6.0", "6.2")], rows[("6.1", "6.2")]
    assert (good["verdict"], bad["verdict"]) == ("no evidence", "worse")
    crash = good["rates"]["crash"]
    assert crash["baseline"]["scope"] == "cold"
    assert (crash["baseline"]["count"], crash["baseline"]["of"]) == (1, 51)  # n0 twice
    assert (crash["baseline"]["hosts"]["count"], crash["baseline"]["hosts"]["of"]) == (1, 50)
    assert crash["p_value"] == pytest.approx(two_sided(0, 60, 1, 50))
    assert (bad["hosts_affected"], bad["rates"]["crash"]["hosts"]["of"]) == (20, 20)


def test_one_crash_looping_host_is_one_host(fleet_report: Any) -> None:
    """y0 takes 6.1 -> 6.2 twelve times and crashes every time; y1..y19 once, fine; 6.2
    boots cold on n0..n44, n0 crashed once. By boots 12 of 31 against 1 of 46 was
    worse; by hosts it is 1 of 20 against 1 of 45: no evidence."""
    f = Fleet()
    for i, m in enumerate(hosts("n", 45)):
        f.boot(m, "6.2", crash=i == 0)
    for i, m in enumerate(hosts("y", 20)):
        for _ in range(12 if i == 0 else 1):
            f.take(m, "6.1", "6.2", crash=i == 0)
    row = fleet_report(f)[("6.1", "6.2")]
    assert (row["boots"], row["crashes"], row["hosts"], row["hosts_affected"]) == (31, 12, 20, 1)
    crash = row["rates"]["crash"]
    assert (crash["count"], crash["of"]) == (12, 31)
    assert (crash["hosts"]["count"], crash["hosts"]["of"]) == (1, 20)
    assert (crash["baseline"]["hosts"]["count"], crash["baseline"]["hosts"]["of"]) == (1, 45)
    assert crash["p_value"] == pytest.approx(two_sided(1, 20, 1, 45))  # = 1
    assert (crash["verdict"], row["verdict"]) == ("no evidence", "no evidence")


def test_five_of_five_failed_landings_on_five_hosts_are_worse(fleet_report: Any) -> None:
    """h0..h39 take 5.9 -> 6.0 and land; p0..p4 try 6.0 -> 6.5 and every attempt falls
    back to firmware. 5 attempts were fewer than the 20 boots the report needed; they
    are 5 hosts, and 5 is enough."""
    f = Fleet()
    for m in hosts("h", 40):
        f.take(m, "5.9", "6.0")
    for m in hosts("p", 5):
        f.take(m, "6.0", "6.5", fail=True)
    row = fleet_report(f)[("6.0", "6.5")]
    land = row["rates"]["land_failure"]
    assert (land["count"], land["of"], land["hosts"]["count"], land["hosts"]["of"]) == (5, 5, 5, 5)
    base = land["baseline"]
    assert (base["count"], base["of"], base["scope"]) == (0, 40, "fleet")
    assert land["e_value"] == pytest.approx(e_value(5, 5, 0, 40))
    assert (land["verdict"], row["verdict"]) == ("worse", "worse")


def test_a_rollout_younger_than_its_window_waits(fleet_report: Any) -> None:
    """7.5 boots cold on q0..q29 long ago; r0..r29 took 7.4 -> 7.5 two hours ago and
    r0..r2 have crashed since (back on 7.4). The healthy 27 are still running: with the
    24h window none of the 30 counts yet; with --window 1h all 30 do."""
    import time

    now = int(time.time())
    f = Fleet()
    for m in hosts("q", 30):
        f.boot(m, "7.5")
    for i, m in enumerate(hosts("r", 30)):
        f.take(m, "7.4", "7.5", crash=i < 3, at=now - 7200)
    row = fleet_report(f)[("7.4", "7.5")]
    assert (row["boots"], row["crashes"], row["hosts_affected"]) == (30, 3, 3)
    assert (row["observed_boots"], row["crash_rate"], row["window"]) == (0, None, 86400)
    crash = row["rates"]["crash"]
    assert (crash["count"], crash["of"], crash["verdict"]) == (0, 0, "no evidence")
    row = fleet_report(Fleet(), "--window", "1h")[("7.4", "7.5")]
    assert (row["observed_boots"], row["crash_rate"], row["window"]) == (30, 0.1, 3600)
    crash = row["rates"]["crash"]
    assert (crash["hosts"]["count"], crash["hosts"]["of"]) == (3, 30)


def test_many_healthy_transitions_are_not_called_worse_by_chance(fleet_report: Any) -> None:
    """8.0 boots cold on z0..z59 (z0, z1 crashed once). Thirty releases 7.0 .. 7.29 each
    reach it on 10 hosts, 0, 1 or 2 of them crashing (i % 3), and 7.29's 4: at one look
    4 of 10 against 2 of 60 is p = 0.005, below 0.01, and one of thirty healthy
    transitions would be that unlucky. 6.9 -> 8.0 crashes on all its 10 hosts. Only it
    is worse."""
    f = Fleet()
    for i, m in enumerate(hosts("z", 60)):
        f.boot(m, "8.0", crash=i < 2)
    for t in range(30):
        crashed = 4 if t == 29 else t % 3
        for i, m in enumerate(hosts(f"t{t:02d}", 10)):
            f.take(m, f"7.{t}", "8.0", crash=i < crashed)
    for m in hosts("v", 10):
        f.take(m, "6.9", "8.0", crash=True)
    rows = fleet_report(f)
    assert {k for k, r in rows.items() if r["verdict"] == "worse"} == {("6.9", "8.0")}
    unlucky = rows[("7.29", "8.0")]["rates"]["crash"]
    assert (unlucky["hosts"]["count"], unlucky["hosts"]["of"]) == (4, 10)
    assert (
        unlucky["p_value"] == pytest.approx(two_sided(4, 10, 2, 60)) and unlucky["p_value"] < 0.01
    )
    assert unlucky["verdict"] == "no evidence"


def test_the_window_comes_from_the_flag_or_the_configuration(report: Any, tmp_path: Path) -> None:
    conf = tmp_path / "khod.toml"
    conf.write_text('[fleet]\nwindow = "1h"\n')
    rows = json.loads(report("--json", "--config", str(conf))[1])
    assert {r["window"] for r in rows} == {3600}
    rows = json.loads(report("--json", "--config", str(conf), "--window", "2d")[1])
    assert {r["window"] for r in rows} == {2 * 86400}
    rc, out, err = report("--window", "soon")
    assert (rc, out) == (1, "")
    assert err == "khoctl: error: --window: expected a duration like '24h' or '7d', got 'soon'\n"
