"""What PromQL shipped with regionvault (alert rules, the Grafana dashboard) may name: the
metric names the domain workers export, and a walk over a parsed expression's selectors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import promql_parser
from prometheus_client import Counter, Gauge, Histogram

from workers import metrics
from workers.metrics import EXPORTED

__all__ = ["EXPORTED", "exported_by_the_code", "metric_names", "selectors"]


def selectors(node: Any) -> Iterator[Any]:
    """Every VectorSelector of a parsed PromQL expression (inside ranges, calls, binary
    expressions, aggregations and subqueries)."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    for attribute in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, attribute, None)
        if child is not None and not isinstance(child, (str, int, float)):
            yield from selectors(child)
    for arg in getattr(node, "args", None) or []:
        yield from selectors(arg)


def metric_names(node: Any) -> set[str]:
    """Every metric a PromQL expression selects, walking its syntax tree."""
    names: set[str] = set()
    for selector in selectors(node):
        names.add(selector.name or "")
        for matcher in selector.matchers.matchers:
            if matcher.name == "__name__":
                names.add(matcher.value)
    return {n for n in names if n}


class _AnsweringQueue(metrics.QueueDepthCollector):
    """The queue-depth collector with a broker that answers (0 waiting), without a broker."""

    def depth(self) -> int | None:
        return 0


def exported_by_the_code() -> set[str]:
    """The sample names workers/metrics.py exports, read from its metric objects and its
    scrape-time collectors rather than from the hand-kept ``EXPORTED``: a counter as
    ``<name>_total``, a histogram as ``_bucket``, ``_sum`` and ``_count``, a gauge by its name."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, Histogram):
            (family,) = value.describe()
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif isinstance(value, Counter):
            (family,) = value.describe()
            names.add(f"{family.name}_total")
        elif isinstance(value, Gauge):
            (family,) = value.describe()
            names.add(family.name)
    collectors = (_AnsweringQueue("eu", "backup.eu", "redis://unused.invalid:6379/0"),
                  metrics.SourceRPOCollector("eu", {"accounts": 3600.0}))
    for collector in collectors:
        names |= {family.name for family in collector.collect()}
    return names
