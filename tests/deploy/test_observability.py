"""The shipped alerts and dashboard: promtool accepts the rules and passes their unit tests, every
alert has a test that fires it and names a runbook section that exists, and every metric the
alerts, the dashboard and the runbook's PromQL read is one the services export (their Prometheus
registry); the runbook's PromQL parses."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client import REGISTRY

import services.budget.service
import services.gateway.service
import services.recorder.service
import services.router.service  # noqa: F401  (each service registers what it exports)
from tests.support.stack import REPO

PROMETHEUS = REPO / "deploy/prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts_test.yml"
DASHBOARD = REPO / "deploy/grafana/dashboards/switchboard.json"
RUNBOOK = REPO / "docs/runbook.md"
METRIC = re.compile(r"\bswitchboard_[a-z0-9_]+\b")


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found: `bash deploy/local/infra.sh` installs Debian's prometheus package")
    return subprocess.run([binary, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def exported() -> set[str]:
    """Sample names the services' registry exposes on /metrics."""
    names = {"up"}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    for family in REGISTRY.collect():
        names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    return names


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return out


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_every_alert_pass():
    result = promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_test_case():
    fired, quiet = set(), set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in rules()}
    assert names - fired == set(), "alerts no test fires"
    assert names - quiet == set(), "alerts no test shows quiet"


def test_every_alert_names_a_runbook_section_that_exists():
    sections = anchors(RUNBOOK.read_text())
    for rule in rules():
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert path == "docs/runbook.md", rule["alert"]
        assert anchor in sections, f"{rule['alert']}: no section #{anchor} in docs/runbook.md"
        assert rule["alert"] in RUNBOOK.read_text(), f"the runbook does not mention {rule['alert']}"


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in doc["templating"]["list"]]
    return exprs


def test_every_metric_the_alerts_and_dashboard_read_is_exported():
    used = {m for r in rules() for m in METRIC.findall(r["expr"])}
    used |= {m for e in dashboard_exprs() for m in METRIC.findall(e)}
    assert len(used) > 10  # the extraction found the metrics
    assert used - exported() == set()


def family(sample: str) -> str:
    return re.sub(r"_(total|bucket|count|sum)$", "", sample)


def test_every_exported_metric_is_on_the_dashboard():
    """A new metric lands with a panel (and, if it can page someone, an alert with its test and
    runbook section): nothing is exported that nobody looks at."""
    shown = {family(m) for e in dashboard_exprs() for m in METRIC.findall(e)}
    ours = {family(n) for n in exported() if n.startswith("switchboard_")}
    assert ours - shown == set(), "metrics no dashboard panel shows"


def test_dashboard_panels_use_the_provisioned_datasource():
    doc = json.loads(DASHBOARD.read_text())
    provisioned = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uid = provisioned["datasources"][0]["uid"]
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    assert panels and all(p["datasource"]["uid"] == uid for p in panels)
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])


def test_compose_loads_the_alerts_and_provisions_the_dashboard():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["prometheus"]["volumes"])
    assert [mounts[f] for f in ("./deploy/prometheus/alerts.yml",)] == config["rule_files"]
    grafana = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["grafana"]["volumes"])
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/switchboard.yml").read_text())
    assert grafana["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert grafana["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


def test_the_local_prometheus_of_make_run_scrapes_every_service_with_the_alerts(tmp_path):
    spec = importlib.util.spec_from_file_location("local_run", REPO / "deploy/local/run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    config = run.prometheus_config(tmp_path)
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout
    scraped = yaml.safe_load(config.read_text())["scrape_configs"][0]
    assert scraped["job_name"] == "switchboard"  # the job the alerts select
    ports = {t["labels"]["service"]: t["targets"][0] for t in scraped["static_configs"]}
    assert ports == {
        name: f"127.0.0.1:{port}" for name, (_, port) in run.SERVICES.items() if name != "simulator"
    }


def runbook_promql() -> list[str]:
    blocks = re.findall(r"```promql\n(.*?)```", RUNBOOK.read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_runbooks_promql_parses_and_reads_only_exported_metrics(tmp_path):
    exprs = runbook_promql()
    assert len(exprs) > 10  # the extraction found them
    path = tmp_path / "runbook_queries.yml"
    rules = [{"record": f"runbook:query_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path.write_text(yaml.safe_dump({"groups": [{"name": "runbook", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used - exported() == set()
