"""Configuration parsing: a valid file becomes typed models; each mistake is a ConfigError naming
the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from regionvault.config import (
    Config,
    DataClass,
    SecretRef,
    load_config,
    parse_config,
    read_source_dsn,
)
from regionvault.domains import Domain
from regionvault.errors import ConfigError, SecretError, UnknownDomainError, UnknownSourceError
from tests.unit import config_data, source_data

Edit = Callable[[dict[str, Any]], None]


def parse(data: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    return parse_config(data, origin="test", env=env or {})


def test_valid_three_domain_config() -> None:
    config = parse(config_data())
    assert set(config.domains) == {Domain.US, Domain.EU, Domain.AU}
    eu = config.domain("eu")
    assert (eu.aws_region, eu.gcp_location) == ("eu-central-1", "europe-west4")
    assert eu.s3_bucket == "rv-eu-primary"
    assert [s.name for s in eu.sources] == ["accounts", "catalog"]
    assert config.source(Domain.EU, "accounts").data_class is DataClass.PII
    assert config.source("au", "catalog").data_class is DataClass.METADATA
    assert config.retention.pii_days == 29
    assert config.development is False
    assert config.spool_for(Domain.AU) == config.spool_dir / "au"


def test_domain_lookup_accepts_any_case() -> None:
    config = parse(config_data())
    assert config.domain("EU") is config.domain(Domain.EU)


def _set_retention(days: int) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        d["retention"] = {"pii_days": days}
    return edit


def _set_source_name(name: str) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        d["domains"]["eu"]["sources"][0]["name"] = name
    return edit


def _duplicate_source(d: dict[str, Any]) -> None:
    d["domains"]["eu"]["sources"].append(source_data("accounts", "metadata"))


def _eu_in_us_region(d: dict[str, Any]) -> None:
    d["domains"]["eu"]["aws_region"] = "us-east-1"


def _eu_replica_in_us(d: dict[str, Any]) -> None:
    d["domains"]["eu"]["gcp_location"] = "us-central1"


def _http_s3(d: dict[str, Any]) -> None:
    d["s3"] = {"endpoint_url": "http://127.0.0.1:9000"}


def _http_gcs(d: dict[str, Any]) -> None:
    d["gcs"] = {"endpoint_url": "http://127.0.0.1:9023"}


def _bad_cron(d: dict[str, Any]) -> None:
    d["domains"]["eu"]["schedule"] = "61 * * * *"


def _six_field_cron(d: dict[str, Any]) -> None:
    d["domains"]["eu"]["schedule"] = "0 0 2 * * *"


def _unknown_top_level(d: dict[str, Any]) -> None:
    d["backup_everything"] = True


def _unknown_domain(d: dict[str, Any]) -> None:
    d["domains"]["xx"] = d["domains"]["eu"]


def _secret_with_both(d: dict[str, Any]) -> None:
    d["domains"]["eu"]["key"]["secret"] = {"env": "A", "file": "/b"}


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param(_set_retention(30), ["retention.pii_days", "29", "30"], id="pii-30-days"),
        pytest.param(_set_source_name("a/b"), ["domains.eu.sources.0.name", "'a/b'"],
                     id="source-slash"),
        pytest.param(_set_source_name(".."), ["domains.eu.sources.0.name", "'..'"],
                     id="source-dotdot"),
        pytest.param(_set_source_name("a..b"), ["domains.eu.sources.0.name"], id="source-dots"),
        pytest.param(_set_source_name("Accounts"), ["domains.eu.sources.0.name", "'Accounts'"],
                     id="source-upper-case"),
        pytest.param(_set_source_name(""), ["domains.eu.sources.0.name"], id="source-empty"),
        pytest.param(_duplicate_source, ["domains.eu.sources", "accounts", "unique"],
                     id="duplicate-source"),
        pytest.param(_eu_in_us_region, ["domains.eu.aws_region", "us-east-1"],
                     id="eu-in-us-east-1"),
        pytest.param(_eu_replica_in_us, ["domains.eu.gcp_location", "us-central1"],
                     id="eu-replica-in-us"),
        pytest.param(_http_s3, ["s3.endpoint_url", "development: true"], id="http-s3"),
        pytest.param(_http_gcs, ["gcs.endpoint_url", "https://"], id="http-gcs"),
        pytest.param(_bad_cron, ["domains.eu.schedule", "61 * * * *"], id="bad-cron"),
        pytest.param(_six_field_cron, ["domains.eu.schedule", "5-field"], id="six-field-cron"),
        pytest.param(_unknown_top_level, ["backup_everything"], id="unknown-top-level-key"),
        pytest.param(_unknown_domain, ["domains.xx"], id="unknown-domain-key"),
        pytest.param(_secret_with_both, ["domains.eu.key.secret", "exactly one"],
                     id="secret-env-and-file"),
    ],
)
def test_invalid_config_is_rejected_naming_the_field(edit: Edit, expected: list[str]) -> None:
    data = config_data()
    edit(data)
    with pytest.raises(ConfigError) as info:
        parse(data)
    message = str(info.value)
    assert message.startswith("configuration test is invalid")
    for part in expected:
        assert part in message


def test_http_endpoint_is_accepted_in_development() -> None:
    data = config_data()
    _http_s3(data)
    data["development"] = True
    assert parse(data).s3.endpoint_url == "http://127.0.0.1:9000"


def test_pii_days_below_ceiling_is_accepted() -> None:
    data = config_data()
    data["retention"] = {"pii_days": 7, "metadata_days": 400}
    retention = parse(data).retention
    assert retention.days_for(DataClass.PII) == 7
    assert retention.days_for(DataClass.METADATA) == 400


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        parse_config(["domains"], origin="test", env={})


def test_env_overrides_are_applied() -> None:
    data = config_data()
    data["development"] = True
    env = {"REGIONVAULT_S3_ENDPOINT": "http://127.0.0.1:5000",
           "REGIONVAULT_BROKER_URL": "redis://broker.internal:6380/3"}
    config = parse(data, env=env)
    assert config.s3.endpoint_url == "http://127.0.0.1:5000"
    assert config.broker_url == "redis://broker.internal:6380/3"


def test_env_override_is_validated_like_the_file() -> None:
    with pytest.raises(ConfigError, match=r"s3\.endpoint_url"):
        parse(config_data(), env={"REGIONVAULT_S3_ENDPOINT": "http://127.0.0.1:5000"})


def test_explicit_env_replaces_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIONVAULT_BROKER_URL", "redis://from-process:1/0")
    assert parse(config_data(), env={}).broker_url == "redis://127.0.0.1:6379/0"
    assert parse_config(config_data(), origin="t").broker_url == "redis://from-process:1/0"


# --- load_config -----------------------------------------------------------------------------


def test_load_config_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "regionvault.yaml"
    path.write_text(
        "domains:\n"
        "  eu:\n"
        "    aws_region: eu-central-1\n"
        "    s3_bucket: b1\n"
        "    gcp_location: europe-west4\n"
        "    gcs_bucket: b2\n"
        "    key: {id: k1, secret: {env: RV_KEY}}\n"
        "    sources:\n"
        "      - {name: accounts, dsn: {file: /run/dsn}, data_class: pii}\n"
    )
    config = load_config(path, env={})
    assert config.source("eu", "accounts").dsn.file == Path("/run/dsn")


def test_load_config_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\ndomains:\n  eu: {aws_region: eu-central-1\n  us: x\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path, env={})
    assert "at line 4" in str(info.value)
    assert str(path) in str(info.value)


def test_load_config_bad_indentation_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\ndomains: x\n  eu: y\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line 3"):
        load_config(path, env={})


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="cannot be read") as info:
        load_config(path, env={})
    assert str(path) in str(info.value)


def test_load_config_without_path_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGIONVAULT_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="REGIONVAULT_CONFIG"):
        load_config(None, env={})


def test_load_config_from_regionvault_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "from-env.yaml"
    path.write_text("domains: {}\nbroker_url: redis://x:1/0\n")
    monkeypatch.setenv("REGIONVAULT_CONFIG", str(path))
    assert load_config(env={}).broker_url == "redis://x:1/0"


# --- secrets ---------------------------------------------------------------------------------


def test_secret_from_missing_env_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RV_UNIT_ABSENT", raising=False)
    with pytest.raises(SecretError, match="RV_UNIT_ABSENT") as info:
        SecretRef(env="RV_UNIT_ABSENT").read("the DSN of source 'accounts'")
    assert "the DSN of source 'accounts'" in str(info.value)


def test_secret_from_empty_env_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RV_UNIT_EMPTY", "")
    with pytest.raises(SecretError, match="RV_UNIT_EMPTY"):
        SecretRef(env="RV_UNIT_EMPTY").read("x")


def test_secret_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RV_UNIT_SET", "  postgresql://u:p@h/db \n")
    assert SecretRef(env="RV_UNIT_SET").read("x") == "postgresql://u:p@h/db"


def test_secret_from_file(tmp_path: Path) -> None:
    path = tmp_path / "dsn"
    path.write_text("postgresql://u:p@h/db\n")
    ref = SecretRef(file=path)
    assert ref.read("x") == "postgresql://u:p@h/db"
    assert str(path) in ref.describe()


def test_secret_from_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="absent"):
        SecretRef(file=tmp_path / "absent").read("the key")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SecretError, match="empty"):
        SecretRef(file=empty).read("the key")


def test_read_source_dsn_names_source_and_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse(config_data("eu"))
    source = config.source("eu", "accounts")
    assert source.dsn.env is not None
    monkeypatch.delenv(source.dsn.env, raising=False)
    with pytest.raises(SecretError, match="'accounts' in domain 'eu'"):
        read_source_dsn(source, Domain.EU)
    monkeypatch.setenv(source.dsn.env, "postgresql:///accounts")
    assert read_source_dsn(source, Domain.EU) == "postgresql:///accounts"


# --- lookups ---------------------------------------------------------------------------------


def test_unknown_source_lists_configured_ones() -> None:
    config = parse(config_data())
    with pytest.raises(UnknownSourceError) as info:
        config.source("eu", "billing")
    assert str(info.value) == (
        "source 'billing' is not configured in domain 'eu' (configured: accounts, catalog)"
    )


def test_unconfigured_domain() -> None:
    config = parse(config_data("eu", "us"))
    with pytest.raises(ConfigError, match="domain 'au' is not configured") as info:
        config.domain(Domain.AU)
    assert "eu" in str(info.value) and "us" in str(info.value)
    with pytest.raises(ConfigError, match="'au' is not configured"):
        config.source("au", "accounts")


def test_unknown_domain_name() -> None:
    config = parse(config_data())
    with pytest.raises(UnknownDomainError, match="'xx'"):
        config.domain("xx")


# --- domain keys: static keys or a managed keyring (issue 11) --------------------------------


def _key(key_id: str, env: str) -> dict[str, Any]:
    return {"id": key_id, "secret": {"env": env}}


def _previous_repeats_current(d: dict[str, Any]) -> None:
    d["domains"]["eu"]["previous_keys"] = [_key("eu-2025", "RV_OLD"), _key("eu-2026", "RV_OLD2")]


def _previous_repeat_each_other(d: dict[str, Any]) -> None:
    d["domains"]["eu"]["previous_keys"] = [_key("eu-2024", "RV_A"), _key("eu-2025", "RV_B"),
                                           _key("eu-2024", "RV_C")]


def _keyring(wrappers: list[str] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"file": "/var/lib/regionvault/eu.keyring.json"}
    if wrappers is not None:
        found["wrappers"] = wrappers
    return found


def _key_and_keyring(d: dict[str, Any]) -> None:
    d["domains"]["eu"]["keyring"] = _keyring()


def _neither_key_nor_keyring(d: dict[str, Any]) -> None:
    del d["domains"]["eu"]["key"]


def _keyring_with_previous_keys(d: dict[str, Any]) -> None:
    del d["domains"]["eu"]["key"]
    d["domains"]["eu"]["keyring"] = _keyring()
    d["domains"]["eu"]["previous_keys"] = [_key("eu-2025", "RV_OLD")]


def _keyring_wrappers(wrappers: list[str]) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        del d["domains"]["eu"]["key"]
        d["domains"]["eu"]["keyring"] = _keyring(wrappers)
    return edit


def _http_kms(d: dict[str, Any]) -> None:
    d["kms"] = {"endpoint_url": "http://127.0.0.1:5000"}


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param(_previous_repeats_current,
                     ["domains.eu", "key ids must be unique, repeated: eu-2026"],
                     id="previous-repeats-current"),
        pytest.param(_previous_repeat_each_other,
                     ["domains.eu", "key ids must be unique, repeated: eu-2024 "],
                     id="previous-repeat-each-other"),
        pytest.param(_key_and_keyring, ["domains.eu", "exactly one of 'key'", "'keyring'"],
                     id="key-and-keyring"),
        pytest.param(_neither_key_nor_keyring, ["domains.eu", "exactly one of 'key'"],
                     id="neither-key-nor-keyring"),
        pytest.param(_keyring_with_previous_keys,
                     ["domains.eu", "previous_keys belongs with 'key'"],
                     id="keyring-with-previous-keys"),
        pytest.param(_keyring_wrappers(["aws-kms"]),
                     ["domains.eu.keyring.wrappers", "must include 'local'"],
                     id="wrappers-without-local"),
        pytest.param(_keyring_wrappers([]),
                     ["domains.eu.keyring.wrappers", "must include 'local'"],
                     id="no-wrappers"),
        pytest.param(_keyring_wrappers(["local", "aws-kms", "local"]),
                     ["domains.eu.keyring.wrappers", "repeated: local"],
                     id="wrapper-twice"),
        pytest.param(_keyring_wrappers(["local", "gcp-kms"]),
                     ["domains.eu.keyring.wrappers"], id="unknown-wrapper"),
        pytest.param(_http_kms, ["kms.endpoint_url", "development: true"], id="http-kms"),
    ],
)
def test_invalid_key_configuration_is_rejected(edit: Edit, expected: list[str]) -> None:
    data = config_data()
    edit(data)
    with pytest.raises(ConfigError) as info:
        parse(data)
    message = str(info.value)
    assert message.startswith("configuration test is invalid")
    for part in expected:
        assert part in message


def test_duplicate_key_id_message_names_only_the_repeated_ids() -> None:
    data = config_data("eu")
    _previous_repeats_current(data)
    with pytest.raises(ConfigError) as info:
        parse(data)
    message = str(info.value)
    assert "repeated: eu-2026 (" in message
    assert "eu-2025" not in message  # the distinct previous key is not blamed
    assert "give the new key a new id" in message


def test_static_keys_with_distinct_ids_are_accepted_current_first() -> None:
    data = config_data("eu")
    data["domains"]["eu"]["previous_keys"] = [_key("eu-2025", "RV_OLD"),
                                              _key("eu-2024", "RV_OLDER")]
    eu = parse(data).domain("eu")
    assert [k.id for k in eu.all_keys()] == ["eu-2026", "eu-2025", "eu-2024"]
    assert eu.keyring is None


@pytest.mark.parametrize(
    ("wrappers", "expected"),
    [
        pytest.param(None, ("local",), id="default-local"),
        pytest.param(["local"], ("local",), id="local"),
        pytest.param(["aws-kms", "local"], ("aws-kms", "local"), id="kms-and-escrow"),
    ],
)
def test_a_managed_keyring_is_accepted(wrappers: list[str] | None,
                                       expected: tuple[str, ...]) -> None:
    data = config_data("eu")
    del data["domains"]["eu"]["key"]
    data["domains"]["eu"]["keyring"] = _keyring(wrappers)
    eu = parse(data).domain("eu")
    assert eu.keyring is not None
    assert eu.keyring.file == Path("/var/lib/regionvault/eu.keyring.json")
    assert eu.keyring.wrappers == expected
    assert eu.key is None and eu.all_keys() == ()


def test_kms_endpoint_over_http_is_accepted_in_development() -> None:
    data = config_data()
    _http_kms(data)
    data["development"] = True
    assert parse(data).kms.endpoint_url == "http://127.0.0.1:5000"
