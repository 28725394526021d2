"""The JSON documents regionvault prints for machines: how each names its format, and where
its JSON Schema is.

Every document (``status --json``, ``compliance --json``, ...) and every event of ``backup
--json`` carries ``schema`` (``regionvault/<kind>/v<N>``) beside ``schema_version``; the JSON
Schema (draft 2020-12) of each kind ships in the package as
``regionvault/schemas/<kind>.schema.json``. A new optional field keeps the version; a field
that changes meaning or goes away raises it. Times are ISO 8601 in UTC, sizes integers in
bytes, ages and durations seconds.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

#: the version every kind is at now (one rule for all: they move together)
SCHEMA_VERSION = 1


def schema_id(kind: str) -> str:
    """What a document of ``kind`` carries in ``schema``, e.g. ``regionvault/status/v1``."""
    return f"regionvault/{kind}/v{SCHEMA_VERSION}"


def load_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of documents of ``kind``, as shipped in the package."""
    text = resources.files("regionvault").joinpath(f"schemas/{kind}.schema.json") \
        .read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def time_text(when: datetime | None) -> str | None:
    """ISO 8601 in UTC (``+00:00``)."""
    return when.astimezone(UTC).isoformat() if when is not None else None


def seconds(delta: timedelta | None) -> float | None:
    return delta.total_seconds() if delta is not None else None


def header(kind: str) -> dict[str, Any]:
    """The fields every document and event of ``kind`` starts with."""
    return {"schema": schema_id(kind), "schema_version": SCHEMA_VERSION}


__all__ = ["SCHEMA_VERSION", "header", "load_schema", "schema_id", "seconds", "time_text"]
