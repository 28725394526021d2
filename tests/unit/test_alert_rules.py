"""The shipped alert rules parse as PromQL and name only metrics the workers export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import promql_parser
import yaml

from tests.metric_names import EXPORTED, exported_by_the_code
from tests.metric_names import metric_names as _metric_names

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "regionvault-alerts.yml"
REQUIRED = {"RegionvaultBackupLate", "RegionvaultVerificationMismatch",
            "RegionvaultRestoreDrillFailed", "RegionvaultNoWorker"}


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_required_alerts_exist_and_are_complete() -> None:
    rules = _rules()
    assert {r["alert"] for r in rules} >= REQUIRED
    for rule in rules:
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_every_expression_parses_and_names_only_exported_metrics() -> None:
    for rule in _rules():
        tree = promql_parser.parse(rule["expr"])
        names = _metric_names(tree)
        assert names, f"{rule['alert']} selects no metric"
        unknown = names - EXPORTED
        assert not unknown, f"{rule['alert']} names metrics no worker exports: {unknown}"


def test_the_walker_finds_nested_selectors() -> None:
    tree = promql_parser.parse("sum(rate(a_total[5m])) / on(x) b or absent(c{d='e'})")
    assert _metric_names(tree) == {"a_total", "b", "c"}


def test_the_hand_kept_list_of_exported_metrics_is_what_the_code_exports() -> None:
    assert exported_by_the_code() == EXPORTED
