"""config/grafana and config/prometheus: real metric names, valid PromQL, rules that fire,
and runbook links that lead somewhere."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from .conftest import RunningServer, mint
from .console_http import request

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "config" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "config" / "grafana" / "syncbridge.json"
RUNBOOK = ROOT / "docs" / "runbook.md"
METRIC = re.compile(r"\b(?:syncbridge|process)_[a-z0-9_]+\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return queries


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package "
            "(apt-get install -y prometheus; .ci/run does it when it is missing)"
        )
    return found


def exposed_names(text: str) -> set[str]:
    """Every series name a scrape can hold, also for labelled metrics not yet incremented."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


async def test_dashboard_and_alerts_use_only_metrics_that_metrics_exposes(
    server: RunningServer,
) -> None:
    token = mint(user="prom", device="scraper", session="ops", roles=("metrics",))
    with trio.fail_after(20):
        scrape = await request(server.http, "/metrics", token)
    assert scrape.status == 200
    exposed = exposed_names(scrape.body.decode())
    used = {
        "alerts.yml": set(METRIC.findall(ALERTS.read_text())),
        "syncbridge.json": {name for q in dashboard_queries() for name in METRIC.findall(q)},
    }
    for source, names in used.items():
        assert len(names) >= 5, source  # not a vacuous pass
        unknown = sorted(names - exposed)
        assert not unknown, f"{source} uses metrics /metrics does not expose: {unknown}"
    # The dashboard shows every SyncBridge metric family.
    families = {
        family.name
        for family in text_string_to_metric_families(scrape.body.decode())
        if family.name.startswith("syncbridge_") and not family.name.endswith("_created")
    }
    shown = used["syncbridge.json"]
    missing = {f for f in families if not any(n == f or n.startswith(f + "_") for n in shown)}
    assert not missing, f"the dashboard has no panel for {sorted(missing)}"


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    tool = promtool()
    checked = subprocess.run(
        [tool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    tested = subprocess.run(
        [tool, "test", "rules", ALERT_TESTS.name],
        capture_output=True,
        text=True,
        check=False,
        cwd=ALERT_TESTS.parent,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses expressions in rule files: one recording rule per panel query,
    # with Grafana's variables replaced by what they expand to.
    variables = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*"}
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for number, query in enumerate(dashboard_queries()):
        if query.startswith("label_values("):
            continue  # a Grafana function, not PromQL
        for variable, value in variables.items():
            query = query.replace(variable, value)
        lines += [f"      - record: dashboard:query{number}", f"        expr: {json.dumps(query)}"]
    rules = tmp_path / "dashboard.yml"
    rules.write_text("\n".join(lines) + "\n")
    checked = subprocess.run(
        [promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook's headings."""
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_alert_links_to_its_runbook_section() -> None:
    text = ALERTS.read_text()
    alerts = re.findall(r"- alert: (\w+)", text)
    urls = re.findall(r'runbook_url: "([^"]+)"', text)
    assert len(alerts) == len(urls) == 6
    anchors = runbook_anchors()
    for alert, url in zip(alerts, urls, strict=True):
        page, _, anchor = url.partition("#")
        assert page.endswith("/docs/runbook.md"), url
        assert anchor == f"alert-{alert.lower()}", url
        assert anchor in anchors, f"docs/runbook.md has no section #{anchor}"
