"""Which sources a drill covers: the ones asked for, a rotating sample, or all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from regionvault.config import parse_config
from regionvault.domains import Domain
from regionvault.drill import _compare_counts, choose_sources
from regionvault.errors import RegionvaultError
from tests.unit import config_data


def _dcfg(sample: int | None) -> object:
    data = config_data()
    data["domains"]["eu"]["sources"] = [
        {"name": n, "dsn": {"env": "X"}, "data_class": "metadata"} for n in ("a", "b", "c")]
    data["domains"]["eu"]["drill"] = {"sample": sample}
    return parse_config(data, origin="test", env={}).domain(Domain.EU)


DAY = datetime(2026, 11, 28, tzinfo=UTC)


def test_all_sources_without_a_sample() -> None:
    assert [s.name for s in choose_sources(_dcfg(None), None, DAY, Domain.EU)] == ["a", "b", "c"]


def test_named_sources_win_over_the_sample() -> None:
    assert [s.name for s in choose_sources(_dcfg(1), ["c"], DAY, Domain.EU)] == ["c"]


def test_unknown_named_source_is_refused() -> None:
    with pytest.raises(RegionvaultError, match="source 'zz' is not configured in domain 'eu'"):
        choose_sources(_dcfg(None), ["zz"], DAY, Domain.EU)


def test_sample_rotates_so_every_source_is_drilled_within_a_cycle() -> None:
    seen = set()
    for day in range(3):
        chosen = choose_sources(_dcfg(1), None, DAY + timedelta(days=day), Domain.EU)
        assert len(chosen) == 1
        seen.add(chosen[0].name)
    assert seen == {"a", "b", "c"}


def test_row_count_comparison_names_every_difference() -> None:
    assert _compare_counts({"public.t": 3}, {"public.t": 3}) is None
    assert _compare_counts({}, {"public.t": 3}) == "the backup's manifest records no row counts"
    problem = _compare_counts({"public.t": 3, "public.u": 1}, {"public.t": 2})
    assert problem is not None
    assert "public.t: manifest 3, restored 2" in problem
    assert "public.u: manifest 1, restored no table" in problem
