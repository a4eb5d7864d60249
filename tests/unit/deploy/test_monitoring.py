"""The operations kit: alert rules and the dashboard name only metrics the code really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from cnop.common.config import Settings
from cnop.common.security.token_manager import write_ed25519_key_pair
from cnop.gateway.cloud import create_gateway_app
from cnop.roles import ROLES, create_role_app

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "deploy" / "monitoring"
# Metrics of other exporters the rules rely on, each with its source.
EXTERNAL_METRICS = {"kube_job_status_failed": "kube-state-metrics"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
    "inf", "nan", "le",
}  # fmt: skip
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and numbers left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # groupings
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # an exponent or unit inside a number (1e-9)
        names.add(word)
    return names


def _rule_exprs() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def _exported(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name the real processes of the cloud shape export: each role and the gateway."""
    directory = tmp_path_factory.mktemp("monitoring")
    write_ed25519_key_pair(directory / "jwt.key", directory / "public" / "jwt.pem")
    settings = Settings(
        _env_file=None,
        store=f"sqlite:///{directory / 'cnop.db'}",
        jwt_secret=None,
        jwt_algorithm="EdDSA",
        jwt_public_keys_dir=str(directory / "public"),
        price_source="manual",
        upstream_urls={name: "http://127.0.0.1:9" for name in ("user", "order", "inventory", "insights", "web")},
    )
    names = _exported(create_gateway_app(settings).state.metrics.registry)
    for role in ROLES:
        names |= _exported(create_role_app(role, settings).state.container.metrics.registry)
    return names


def test_the_metric_name_extraction_finds_metrics_and_only_metrics() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, route) (rate(cnop_x_bucket{route!~"a|b", s="5.."}[5m]))) > 1e-9'
    assert metric_names(expr) == {"cnop_x_bucket"}
    assert metric_names("max(a_total) / clamp_min(sum(b), 1) and on(x) c") == {"a_total", "b", "c"}


def test_the_rules_cover_every_alert_the_cloud_shape_needs() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {
        "CnopHighErrorRatio",
        "CnopHighP99Latency",
        "CnopPriceStale",
        "CnopTriggerEngineLag",
        "CnopCircuitBreakerOpen",
        "CnopRedisDown",
        "CnopAuditFailed",
    } <= alerts
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"page", "ticket"}
            assert rule["annotations"]["summary"]


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_the_rules_and_dashboard_name_is_exported_by_the_code(source: str, exported: set[str]) -> None:
    exprs = _rule_exprs() if source == "alerts" else _dashboard_exprs()
    assert exprs
    named = set().union(*(metric_names(e) for e in exprs))
    for name in named:
        if name.startswith("cnop_"):
            assert name in exported, f"{source} names {name}, which no cnop process exports"
        else:
            assert name in EXTERNAL_METRICS, f"{source} names {name}: neither cnop's nor a known exporter's"


def test_the_dashboard_shows_every_metric_the_code_exports(exported: set[str]) -> None:
    shown = set().union(*(metric_names(e) for e in _dashboard_exprs()))
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in exported if n.startswith("cnop_")}
    missing = {f for f in families if not any(s == f or s.startswith(f + "_") for s in shown)}
    assert missing == set()


def test_prometheus_loads_the_rules_and_scrapes_cnop() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert {job["job_name"] for job in config["scrape_configs"]} >= {"cnop", "kube-state-metrics"}
