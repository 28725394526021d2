"""Source kinds and store placement in the configuration: Cloud Files regions are checked
against the domain table (LON only with the adequacy flag), every store a source uses must be
configured, and kind-specific settings stay with their kind."""

from __future__ import annotations

from typing import Any

import pytest

from regionvault.config import StorePair, parse_config
from regionvault.errors import ConfigError
from tests.unit import config_data, source_data


def _swift(region: str, **extra: Any) -> dict[str, Any]:
    return {"region": region, "container": "rv-journeys", "user": "rv",
            "api_key": {"env": "RV_TEST_CLOUD_FILES_KEY"}, **extra}


def _with(domain: str, **fields: Any) -> dict[str, Any]:
    data = config_data(domain)
    data["domains"][domain].update(fields)
    return data


def _parse(data: dict[str, Any]) -> Any:
    return parse_config(data, origin="test", env={})


def test_an_au_domain_with_a_dfw_cloud_files_endpoint_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        _parse(_with("au", swift=_swift("DFW")))
    assert ("domains.au.swift.region DFW is outside domain 'au' (allowed: SYD)"
            in str(caught.value))


def test_an_au_domain_with_syd_is_accepted() -> None:
    config = _parse(_with("au", swift=_swift("syd")))
    dcfg = config.domains[next(iter(config.domains))]
    assert dcfg.swift.region == "SYD"
    assert dcfg.store_names() == ("s3", "gcs", "swift")


@pytest.mark.parametrize("region", ["DFW", "ORD", "IAD"])
def test_us_cloud_files_regions_are_accepted_for_us(region: str) -> None:
    _parse(_with("us", swift=_swift(region)))


def test_an_eu_domain_with_lon_is_refused_without_the_adequacy_flag() -> None:
    with pytest.raises(ConfigError) as caught:
        _parse(_with("eu", swift=_swift("LON")))
    assert ("domains.eu.swift.region LON lies outside domain 'eu': it is in the UK, not the "
            "EU; set 'uk_adequacy: true' in domains.eu only if your data protection officer "
            "relies on the EU's adequacy decision for the UK") in str(caught.value)


def test_an_eu_domain_with_lon_is_accepted_with_the_adequacy_flag() -> None:
    config = _parse(_with("eu", swift=_swift("LON"), uk_adequacy=True))
    assert config.domain("eu").swift.region == "LON"


def test_aws_london_is_held_to_the_same_rule_as_cloud_files_london() -> None:
    with pytest.raises(ConfigError, match="aws_region eu-west-2 lies outside domain 'eu'"):
        _parse(_with("eu", aws_region="eu-west-2"))
    assert _parse(_with("eu", aws_region="eu-west-2", uk_adequacy=True)).domain(
        "eu").aws_region == "eu-west-2"


def test_the_adequacy_flag_does_not_open_other_domains_regions() -> None:
    with pytest.raises(ConfigError, match="outside domain 'eu'"):
        _parse(_with("eu", swift=_swift("SYD"), uk_adequacy=True))
    with pytest.raises(ConfigError, match="outside domain 'au'"):
        _parse(_with("au", swift=_swift("LON"), uk_adequacy=True))
    with pytest.raises(ConfigError, match="outside domain 'us'"):
        _parse(_with("us", aws_region="eu-west-2", uk_adequacy=True))


def test_a_source_on_swift_needs_the_domains_swift_section() -> None:
    journeys = {**source_data("journeys"), "stores": {"primary": "swift", "replica": "gcs"}}
    data = config_data("au")
    data["domains"]["au"]["sources"] = [journeys]
    with pytest.raises(ConfigError, match=r"source 'journeys' use.* the swift store"):
        _parse(data)
    data["domains"]["au"]["swift"] = _swift("SYD")
    config = _parse(data)
    dcfg = next(iter(config.domains.values()))
    assert dcfg.stores_for(dcfg.sources[0]) == StorePair(primary="swift", replica="gcs")


def test_primary_and_replica_must_differ() -> None:
    with pytest.raises(ConfigError, match="two different stores"):
        _parse(_with("us", stores={"primary": "gcs", "replica": "gcs"}))


def test_tables_belong_to_bigtable_sources() -> None:
    data = config_data("us")
    data["domains"]["us"]["sources"] = [{**source_data("orders"), "tables": ["events"]}]
    with pytest.raises(ConfigError, match="'tables' is for bigtable sources"):
        _parse(data)
    data["domains"]["us"]["sources"][0]["kind"] = "bigtable"
    config = _parse(data)
    assert next(iter(config.domains.values())).sources[0].tables == ("events",)


def test_an_unknown_kind_is_refused_naming_the_kinds() -> None:
    data = config_data("us")
    data["domains"]["us"]["sources"] = [{**source_data("orders"), "kind": "oracle"}]
    with pytest.raises(ConfigError, match="'postgres', 'mysql' or 'bigtable'"):
        _parse(data)


def test_swift_auth_url_must_be_https_outside_development() -> None:
    data = config_data("us")
    data["swift"] = {"auth_url": "http://identity.example/v2.0"}
    with pytest.raises(ConfigError, match=r"swift\.auth_url must be an https:// URL"):
        _parse(data)
    data["development"] = True
    _parse(data)


def test_an_object_lock_is_refused_for_a_domain_that_writes_to_cloud_files() -> None:
    journeys = {**source_data("journeys"), "stores": {"primary": "swift", "replica": "gcs"}}
    data = config_data("au")
    data["domains"]["au"].update(swift=_swift("SYD"), object_lock={"mode": "compliance"},
                                 sources=[journeys])
    with pytest.raises(ConfigError, match="Cloud Files cannot lock objects"):
        _parse(data)
    data["domains"]["au"]["sources"] = [source_data("accounts")]  # swift configured, unused
    _parse(data)
