"""The documented alert rules (docs/alerts/migrator-rules.yml) are valid and name only metrics that
migrator exports (issue 19, item 6); the new operator metrics are served: staleness per host,
breaches by rule, build info, and the ring's lost counter explained."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from kernel_util import unavailable
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from migrator.config import load_config
from migrator.control.metrics import COUNTERS, BuildInfo, MigrationCollector
from migrator.store import api, open_store
from migrator.store.models import Host, Verdict

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "docs" / "alerts" / "migrator-rules.yml"


def test_promtool_checks_the_rules():
    if shutil.which("promtool") is None:
        unavailable("promtool is not installed (Debian package prometheus; scripts/setup.sh installs it)")
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rules_parse_and_name_exported_metrics_with_their_labels():
    rules = parse_rules(RULES.read_text())
    assert len(rules) >= 6
    exported = {n + "_total" for n, _, _ in COUNTERS} | {
        "migrator_events_dropped_total", "migrator_phase", "migrator_breach_streak", "migrator_rollback_after",
        "migrator_host_last_report_timestamp_seconds", "migrator_host_last_window_end_timestamp_seconds",
        "migrator_breaches_total", "migrator_database_up"}
    for r in rules:
        assert r["alert"] and r["expr"] and r["annotations"]["summary"], r
        names = set(re.findall(r"\bmigrator_[a-z_]+", r["expr"]))
        assert names and names <= exported, (r["alert"], names - exported)
    readme = (ROOT / "README.md").read_text()
    assert "docs/alerts/migrator-rules.yml" in readme


def test_rules_keep_the_labels_their_text_names():
    """An aggregation keeps the labels the summary and description quote (host series carry `migration`)."""
    text = RULES.read_text()
    for r in parse_rules(text):
        by = re.search(r"\bby \(([^)]*)\)", r["expr"])
        if by is None:
            continue
        kept = {x.strip() for x in by.group(1).split(",")}
        quoted = set(re.findall(r"\$labels\.(\w+)", r["annotations"]["summary"] + r["annotations"].get("description", "")))
        assert quoted <= kept, (r["alert"], quoted - kept)


def parse_rules(text: str) -> list[dict]:
    """The rules of the file (PyYAML is not a dependency): each `- alert:` item's alert, expr and
    annotations.summary, from the file's one-key-per-line layout."""
    rules: list[dict] = []
    for line in text.splitlines():
        m = re.match(r"\s*- alert: (\S+)$", line)
        if m:
            rules.append({"alert": m.group(1), "annotations": {}})
            continue
        m = re.match(r"\s+(expr|summary|description|severity): (.+)$", line)
        if m and rules:
            key, val = m.groups()
            (rules[-1]["annotations"] if key in ("summary", "description") else rules[-1])[key] = val.strip('"')
    return rules


def scrape(registry) -> dict:
    out: dict = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_controller_serves_staleness_breaches_by_rule_and_build_info(toml_file):
    cfg = load_config(toml_file('hosts = ["h1", "h2"]\nslices = [1, 2]\n'))
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="fp", now=1000.0).id
        s.query(Host).filter(Host.name == "h1").update({"last_heartbeat": 1234.5})
        for i, rule in enumerate(["max_loss_rate", "max_loss_rate,max_lag_p99_ms"]):
            s.add(Verdict(migration_id=mid, window_id=None, scope="host", host="h1", index=i, phase="DUAL_INSTRUMENT",
                          slice=0, verdict="breach", rule=rule, values=json.dumps({}), streak=0, decided_at=1000.0))
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MigrationCollector(sf, mid))
    reg.register(BuildInfo())
    m = scrape(reg)
    mid_ = str(mid)
    assert m["migrator_host_last_report_timestamp_seconds"] == {(("host", "h1"), ("migration", mid_)): 1234.5}
    assert m["migrator_breaches_total"] == {(("host", "h1"), ("migration", mid_), ("rule", "max_lag_p99_ms")): 1.0,
                                            (("host", "h1"), ("migration", mid_), ("rule", "max_loss_rate")): 2.0}
    (labels, value), = m["migrator_build_info"].items()
    assert value == 1.0 and dict(labels)["version"]


def test_ring_lost_is_explained():
    doc = {n: d for n, _, d in COUNTERS}["migrator_events_lost"]
    assert 'Always 0 on channel="ring"' in doc and "migrator_events_dropped_total" in doc
