"""The monitoring that ships with the project: Prometheus alert rules that promtool accepts and
whose unit tests fire each alert on a synthetic series (and keep it quiet on a healthy one), a
runbook for every alert, and a Grafana dashboard; every metric either names is one the
processes export, so a renamed metric cannot leave an alert that never fires."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import netsync.metrics  # noqa: F401 - registers every metric

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool: apt-get install prometheus"
)


def _rules() -> list[dict[str, object]]:
    groups = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _exported() -> set[str]:
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    for family in REGISTRY.collect():  # a labelled metric has no samples until first used
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bnetsync_[a-z_]+\b", expr))


@needs_promtool
def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    assert PROMTOOL is not None
    check = subprocess.run(
        [PROMTOOL, "check", "rules", "alerts.yaml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts-test.yaml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        check=False,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout


def test_every_alert_has_a_unit_test_that_expects_it_to_fire_and_a_runbook() -> None:
    tests = yaml.safe_load((MONITORING / "alerts-test.yaml").read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    operations = (ROOT / "docs" / "operations.md").read_text()
    anchors = {h.strip().lower() for h in re.findall(r"^### (\w+)$", operations, re.M)}
    for rule in _rules():
        name = str(rule["alert"])
        assert name in firing, f"{name} has no unit test that fires it"
        runbook = str(rule["annotations"]["runbook"])  # type: ignore[index]
        assert runbook == f"docs/operations.md#{name.lower()}"
        assert name.lower() in anchors, f"{name} has no runbook section in docs/operations.md"


def test_alerts_and_the_dashboard_name_only_metrics_the_processes_export() -> None:
    exported = _exported()
    for rule in _rules():
        for metric in _metric_names(str(rule["expr"])):
            assert metric in exported, f"{rule['alert']}: {metric} is not exported"
    dashboard = json.loads((MONITORING / "grafana-netsync.json").read_text())
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert len(titles) == len(set(titles))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for metric in _metric_names(target["expr"]):
                assert metric in exported, f"{panel['title']}: {metric} is not exported"
