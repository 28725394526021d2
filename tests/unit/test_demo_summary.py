"""The demo's summary table keeps every short column whole on a narrow terminal or a pipe:
the long object keys fold onto more lines instead (they were cut to ``do…`` and ``sour…``)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from regionvault.demo import DemoRow, _summary

ROWS = [
    DemoRow(domain="au", source="journeys-accounts", kind="mysql",
            backup_id="au.journeys-accounts.20261130T231048Z.9369f48c", ok=True, seconds=2.8,
            size=51_539,
            primary="swift://rv-dev-au-journeys/au/pii/journeys-accounts/"
                    "au.journeys-accounts.20261130T231048Z.9369f48c.rvb",
            replica="gs://rv-dev-au-replica/au/pii/journeys-accounts/"
                    "au.journeys-accounts.20261130T231048Z.9369f48c.rvb",
            verified=True),
    DemoRow(domain="eu", source="accounts", kind="postgres",
            backup_id="eu.accounts.20261130T231048Z.c145ed8e", ok=True, seconds=1.8,
            size=2_878, primary="s3://rv-dev-eu-primary/eu/pii/accounts/x.rvb",
            replica="gs://rv-dev-eu-replica/eu/pii/accounts/x.rvb", verified=True),
]


@pytest.mark.parametrize("width", [80, 100, 200])
def test_short_columns_are_never_cut_and_keys_fold(width: int) -> None:
    out = io.StringIO()
    _summary(ROWS, Console(file=out, width=width, color_system=None))
    text = out.getvalue()
    assert "…" not in text, text
    for whole in ("domain", "source", "kind", "journeys-accounts", "postgres", "51,539 B",
                  "verified"):
        assert whole in text, f"{whole!r} is cut at width {width}:\n{text}"
    # the keys are all there, folded: joined back, the lines hold the whole key
    joined = "".join(line.split("│")[6].strip() for line in text.splitlines()
                     if line.count("│") > 6)
    assert ROWS[0].primary in joined
    assert max(len(line) for line in text.splitlines()) <= width
