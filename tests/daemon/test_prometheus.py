"""The Prometheus side: alert and recording rules under promtool's own unit tests, the
Grafana dashboard's queries, and a real Prometheus server scraping a running khod and
a real node_exporter serving the fleet report."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from khod.cli import khoctl
from khod.cli.common import run_main
from tests import daemon_helpers
from tests.builders import boot_row, pstore_row, write_export
from tests.conftest import REPO, SysrootFactory

RULES = REPO / "packaging" / "prometheus" / "khod-rules.yml"
RULE_TESTS = REPO / "packaging" / "prometheus" / "khod-rules.test.yml"
DASHBOARD = REPO / "packaging" / "grafana" / "khod-fleet.json"


def promtool(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *argv], capture_output=True, text=True, check=False, cwd=cwd, timeout=120
    )


def test_rules_pass_promtool_unit_tests() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("(khod_fleet_transition_bad) == 1", "(khod_fleet_transition_bad) == 0"),
        ("(khod_fleet_transition_verdict) == 1", "(khod_fleet_transition_verdict) != 0"),
        ("(khod_fleet_transition_verdict) == 1\n", "(khod_fleet_transition_verdict) >= 0\n"),
        (
            'verdict=~"cold-boot|abi-mismatch|mismatch|failed|landed-without-handover|'
            'landed-kho-off"',
            'verdict=~"abi-mismatch"',
        ),
        ('|landed-without-handover|landed-kho-off"', '|landed-without-handover"'),
        ("(khod_last_ingest_timestamp_seconds >= ", "(khod_last_ingest_timestamp_seconds > 0 * "),
    ],
)
def test_the_rule_tests_catch_a_broken_rule(tmp_path: Path, old: str, new: str) -> None:
    text = RULES.read_text()
    assert old in text
    (tmp_path / RULES.name).write_text(text.replace(old, new))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    r = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_dashboard_loads_under_file_provisioning() -> None:
    """Grafana's file provisioning does not fill ``__inputs`` (an import-dialog thing):
    each panel's datasource is the dashboard's own datasource variable."""
    dash = json.loads(DASHBOARD.read_text())
    assert "__inputs" not in dash
    (var,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert var["query"] == "prometheus"
    used = {p["datasource"]["uid"] for p in dash["panels"]} | {
        t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]
    }
    assert used == {"${" + var["name"] + "}"}


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "khod-fleet" and len({p["id"] for p in dash["panels"]}) == len(
        dash["panels"]
    )
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": e}
                    for i, e in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    f = tmp_path / "dash-rules.yml"
    f.write_text(json.dumps(rules))  # JSON is YAML
    r = promtool("check", "rules", str(f))
    assert r.returncode == 0, r.stdout + r.stderr


# --- a real Prometheus ------------------------------------------------------------


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as e:  # not listening yet
            last = e
        else:
            if last:
                return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}: last {last!r}")


def test_prometheus_scrapes_khod_and_fires_on_a_bad_transition(
    sysroot: SysrootFactory, sqlite_url: str, tmp_path: Path
) -> None:
    exporter = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    assert exporter, "prometheus-node-exporter is not installed (make test installs it)"
    # the fleet database: this host's transition (7.3.4-khlab-a -> 7.3.4-khlab-a, as
    # kexec1/step1 shows) crashed on one host of two
    a = "7.3.4-khlab-a"
    fleet = [
        boot_row("1" * 32, "x-0", a, None, 1000),
        boot_row("1" * 32, "x-1", a, a, 1100),
        boot_row("1" * 32, "x-2", a, None, 1200),
        boot_row("2" * 32, "y-0", a, None, 1000),
        boot_row("2" * 32, "y-1", a, a, 1100),
        pstore_row("1" * 32, "x-2", "x-1", "Panic"),
    ]
    f = write_export(tmp_path / "fleet.jsonl", fleet)
    assert run_main("khoctl", khoctl.main, ["import", str(f), "--db", sqlite_url]) == 0
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    rc = run_main(
        "khoctl",
        khoctl.main,
        [
            "report",
            "transitions",
            "--db",
            sqlite_url,
            "--textfile",
            str(textdir / "khod-fleet.prom"),
            "--bad-rate",
            "0.5",
            "--bad-min-boots",
            "2",
        ],
    )
    assert rc == 0
    node_port, prom_port = daemon_helpers.free_port(), daemon_helpers.free_port()
    root = sysroot("kexec1/step1")
    with daemon_helpers.running_daemon(root, tmp_path / "host") as khod:
        khod.wait_for("READY=1")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "khod", "static_configs": [{"targets": [f"127.0.0.1:{khod.port}"]}]},
                {"job_name": "node", "static_configs": [{"targets": [f"127.0.0.1:{node_port}"]}]},
            ],
        }
        (tmp_path / "prometheus.yml").write_text(json.dumps(config))
        node_argv = [
            exporter,
            f"--web.listen-address=127.0.0.1:{node_port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={textdir}",
        ]
        prom_argv = [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ]
        api = f"http://127.0.0.1:{prom_port}/api/v1"

        def query(expr: str) -> list[Any]:
            res = get_json(f"{api}/query?query={urllib.parse.quote(expr)}")
            assert res["status"] == "success", res
            return list(res["data"]["result"])

        with (
            process(node_argv, tmp_path / "node.log"),
            process(prom_argv, tmp_path / "prometheus.log"),
        ):
            (sample,) = wait_until(
                "khod_kexecs_since_cold_boot", lambda: query("khod_kexecs_since_cold_boot")
            )
            assert sample["value"][1] == "1" and sample["metric"]["job"] == "khod"
            (depth,) = wait_until("the recording rule", lambda: query("khod:hosts_by_chain_depth"))
            assert depth["metric"]["depth"] == "1" and depth["value"][1] == "1"

            def firing() -> list[Any]:
                alerts = get_json(f"{api}/alerts")["data"]["alerts"]
                return [
                    a
                    for a in alerts
                    if a["labels"]["alertname"] == "KhodBootThroughBadTransition"
                    and a["state"] == "firing"
                ]

            (alert,) = wait_until("the bad-transition alert", firing)
            assert alert["labels"]["previous_release"] == a == alert["labels"]["release"]
            assert alert["labels"]["instance"] == f"127.0.0.1:{khod.port}"
            rules = get_json(f"{api}/rules")["data"]["groups"]
            assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules
            for expr in dashboard_queries():  # every panel's query runs on real data
                query(expr)
            (bad,) = query("khod_fleet_transition_bad")
            assert bad["value"][1] == "1"
