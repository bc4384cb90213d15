"""The chart's PrometheusRule through the real promtool (built from the Go module proxy,
pinned and cached like the control-plane binaries): `promtool check rules` on the rendered
rules with several value sets, and `promtool test rules` with tests/promrules/alerts-test.yaml,
which has a firing and a quiet case for every alert.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentqueue.metrics import Metrics
from agentqueue_devtools import Binaries, gobuild
from agentqueue_devtools.binaries import ensure_promtool

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "agentqueue-operator"
PROMRULES = ROOT / "tests" / "promrules"
ALERTS_TEST = PROMRULES / "alerts-test.yaml"
#: The values alerts-test.yaml is written for.
TEST_VALUES = PROMRULES / "values.yaml"
RELEASE, NAMESPACE = "aq", "agentqueue-system"


def _progress(msg: str) -> None:
    print(f"[devcluster] {msg}", file=sys.__stderr__, flush=True)


@pytest.fixture(scope="module")
def promtool() -> Path:
    cached = (gobuild.promtool_dir() / "promtool").exists()
    if not cached and shutil.which("go") is None and not os.environ.get("CI"):
        # In CI a missing promtool is a failure (ensure_promtool raises), never a skip.
        pytest.skip("promtool is not cached and `go` is missing to build it")
    return ensure_promtool(_progress)


def run(cmd: list[str | Path], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def render_rules(binaries: Binaries, *args: str) -> dict[str, Any]:
    """The rendered PrometheusRule's spec (a Prometheus rule file: `groups:`)."""
    env = dict(os.environ, HELM_CACHE_HOME="/tmp/aq-helm/cache",
               HELM_CONFIG_HOME="/tmp/aq-helm/config", HELM_DATA_HOME="/tmp/aq-helm/data")
    cmd = [str(binaries.helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
           "--show-only", "templates/prometheusrule.yaml", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert [d["kind"] for d in docs] == ["PrometheusRule"]
    spec: dict[str, Any] = docs[0]["spec"]
    return spec


def write_rules(spec: dict[str, Any], directory: Path) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def alert_names(spec: dict[str, Any]) -> list[str]:
    return [r["alert"] for g in spec["groups"] for r in g["rules"] if "alert" in r]


def exposed_metric_names() -> set[str]:
    """Series names the operator's /metrics serves (from its real registry)."""
    from prometheus_client import generate_latest

    names: set[str] = set()
    for line in generate_latest(Metrics().registry).decode().splitlines():
        if m := re.match(r"# TYPE (\S+) (\S+)", line):
            name, kind = m.groups()
            names |= ({f"{name}_bucket", f"{name}_sum", f"{name}_count"}
                      if kind == "histogram" else {name})
    return names


ENABLED = ("--set", "metrics.prometheusRule.enabled=true")
VALUE_SETS = {
    "unit-test-values": ("-f", str(TEST_VALUES)),
    "defaults": ENABLED,
    "ha-monitoring": ("-f", str(CHART / "ci" / "ha-monitoring-values.yaml")),
    # JSON numbers reach the templates as float64 (1e+06 if printed as they are).
    "big-thresholds-more-alert-labels": (
        *ENABLED, "--set-json", "metrics.prometheusRule.oldestPendingAgeSeconds=1000000",
        "--set-json", "metrics.prometheusRule.deadLetterLength=2000000",
        "--set-json", 'metrics.prometheusRule.alertLabels={"team":"platform","tier":"1"}'),
    "fractional-age": (*ENABLED, "--set-json",
                       "metrics.prometheusRule.oldestPendingAgeSeconds=90.5"),
}


@pytest.mark.parametrize("args", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_promtool_check_rules(binaries: Binaries, promtool: Path, tmp_path: Path,
                              args: tuple[str, ...]) -> None:
    spec = render_rules(binaries, *args)
    rules = write_rules(spec, tmp_path)
    out = run([promtool, "check", "rules", "--lint=all", "--lint-fatal", rules])
    assert out.returncode == 0, f"promtool check rules failed:\n{out.stdout}\n{out.stderr}"
    assert f"SUCCESS: {len(alert_names(spec))} rules found" in out.stdout, out.stdout
    assert "e+" not in rules.read_text(), "a threshold rendered in exponent notation"


def test_big_thresholds_render_as_whole_numbers(binaries: Binaries, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"metrics": {"prometheusRule": {
        "enabled": True, "oldestPendingAgeSeconds": 1000000, "deadLetterLength": 2000000}}}))
    rules = {r["alert"]: r for g in render_rules(binaries, "-f", str(values))["groups"]
             for r in g["rules"]}
    stuck, dlq = rules["AgentQueueConsumersStuck"], rules["AgentQueueDeadLettersPiling"]
    assert stuck["expr"].endswith(") > 1000000"), stuck["expr"]
    assert "over 1000000s." in stuck["annotations"]["summary"]
    assert dlq["expr"].endswith(") > 2000000"), dlq["expr"]
    assert "over 2000000 dead letters" in dlq["annotations"]["summary"]


def test_promtool_test_rules(binaries: Binaries, promtool: Path, tmp_path: Path) -> None:
    write_rules(render_rules(binaries, "-f", str(TEST_VALUES)), tmp_path)
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    out = run([promtool, "test", "rules", ALERTS_TEST.name], cwd=tmp_path)
    assert out.returncode == 0, f"promtool test rules failed:\n{out.stdout}\n{out.stderr}"
    assert "SUCCESS" in out.stdout, out.stdout


def test_promtool_is_the_pinned_build(promtool: Path) -> None:
    out = run([promtool, "--version"])
    assert out.returncode == 0, out.stderr
    assert f"promtool, version {gobuild.PROMETHEUS_VERSION} " in out.stdout + out.stderr


def test_every_alert_fires_and_stays_quiet_in_a_test(binaries: Binaries) -> None:
    alerts = alert_names(render_rules(binaries, "-f", str(TEST_VALUES)))
    assert len(alerts) == len(set(alerts)) >= 6
    cases = [c for t in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
             for c in t["alert_rule_test"]]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert not set(alerts) - firing, f"alerts never shown firing: {set(alerts) - firing}"
    assert not set(alerts) - quiet, f"alerts never shown quiet: {set(alerts) - quiet}"
    unknown = {c["alertname"] for c in cases} - set(alerts)
    assert not unknown, f"tests of alerts the chart does not have: {unknown}"


def test_alert_tests_use_real_metric_names() -> None:
    """Input series of metrics the operator does not serve would make the tests vacuous."""
    exposed = exposed_metric_names() | {"up"}
    series = [s["series"] for t in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
              for s in t["input_series"]]
    used = {s.split("{", 1)[0] for s in series}
    assert used <= exposed, f"unknown metrics in alerts-test.yaml: {used - exposed}"
