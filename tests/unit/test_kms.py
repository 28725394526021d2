"""AWS KMS as a key wrapper, against a real moto server over HTTP (no mock in the process):
keys in the domain's own region, wrappings bound by the encryption context, a KMS that is
away is ``KeyServiceUnavailable`` and the local escrow still opens, retired keys are
scheduled for deletion."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from regionvault import context as context_module
from regionvault import keys
from regionvault.config import Config, parse_config
from regionvault.context import DomainContext
from regionvault.devstack.services import S3Service, free_port, start_s3
from regionvault.domains import Domain
from regionvault.errors import (
    ConfigError,
    KeyServiceUnavailable,
    ResidencyError,
    WrongKeyError,
)
from regionvault.keyring import Keyring, LocalWrapper, WrapContext, new_data_key
from regionvault.kms import (
    AwsKmsWrapper,
    create_kms_key,
    key_region,
    schedule_kms_key_deletion,
)
from regionvault.stores.memory import MemoryStore
from tests.unit import REGIONS, config_data
from tests.unit.test_keyring import assert_no_key_material

BACKUP = "eu.accounts.20261128T020000Z.1a2b3c4d"
OTHER_BACKUP = "eu.accounts.20261129T020000Z.5e6f7a8b"
ARN_RE = re.compile(r"arn:aws:kms:(?P<region>[a-z0-9-]+):\d{12}:key/[0-9a-f-]{36}")


def ctx(domain: Domain = Domain.EU, backup_id: str = BACKUP,
        purpose: str = "data-key") -> WrapContext:
    return WrapContext(domain, backup_id, purpose)


@pytest.fixture(scope="module")
def kms_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    """One moto server (it serves KMS as well as S3) for the module."""
    server = start_s3(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's fake credentials; nothing from a real account (profile, session, metadata)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def kms_config(endpoint: str, tmp_path: Path | None = None,
               wrappers: tuple[str, ...] = ("aws-kms", "local")) -> Config:
    """Every domain, KMS at ``endpoint``; with ``tmp_path`` the eu domain uses a managed
    keyring file there with ``wrappers``."""
    data: dict[str, Any] = config_data()
    data["development"] = True  # http to moto
    data["spool_dir"] = str((tmp_path or Path("/nonexistent")) / "spool")
    data["kms"] = {"endpoint_url": endpoint, "connect_timeout_seconds": 1,
                   "read_timeout_seconds": 3}
    if tmp_path is not None:
        eu = data["domains"]["eu"]
        del eu["key"]
        eu["keyring"] = {"file": str(tmp_path / "eu.keyring.json"), "wrappers": list(wrappers)}
    return parse_config(data, origin="test", env={})


def kms_wrapper(config: Config, arn: str, *held: str,
                domain: Domain = Domain.EU) -> AwsKmsWrapper:
    return AwsKmsWrapper.for_domain(config, domain, arn, (arn, *held))


def local_wrapper() -> LocalWrapper:
    return LocalWrapper(Domain.EU, {"eu-escrow": bytearray(new_data_key())}, "eu-escrow")


# --- keys in the domain's region -------------------------------------------------------------


@pytest.mark.parametrize("domain", list(Domain))
def test_create_kms_key_gives_an_arn_in_the_domains_region(kms_server: S3Service,
                                                           domain: Domain) -> None:
    config = kms_config(kms_server.endpoint)
    arn = create_kms_key(config, domain)
    match = ARN_RE.fullmatch(arn)
    assert match is not None, arn
    assert match["region"] == key_region(arn) == REGIONS[domain.value][0]
    assert kms_wrapper(config, arn, domain=domain).key_state(arn) == "Enabled"


def test_a_key_arn_from_another_region_is_refused(kms_server: S3Service) -> None:
    config = kms_config(kms_server.endpoint)
    eu_arn = create_kms_key(config, Domain.EU)
    us_arn = create_kms_key(config, Domain.US)
    with pytest.raises(ResidencyError, match="lies in region 'us-east-2'") as info:
        kms_wrapper(config, us_arn)  # as the current key
    assert us_arn in str(info.value) and "'eu-central-1' only" in str(info.value)
    with pytest.raises(ResidencyError, match="lies in region 'us-east-2'"):
        kms_wrapper(config, eu_arn, us_arn)  # as an older one
    with pytest.raises(ConfigError, match="is not a KMS key ARN"):
        kms_wrapper(config, "alias/regionvault-eu")


# --- wrapping --------------------------------------------------------------------------------


def test_wrap_unwrap_round_trip(kms_server: S3Service) -> None:
    config = kms_config(kms_server.endpoint)
    arn = create_kms_key(config, Domain.EU)
    wrapper = kms_wrapper(config, arn)
    data_key = new_data_key()
    wrapping = wrapper.wrap(data_key, ctx())
    assert (wrapping.wrapper, wrapping.key_id) == ("aws-kms", arn)
    assert bytes(data_key) not in wrapping.raw()
    opened = wrapper.unwrap(wrapping, ctx())
    assert isinstance(opened, bytearray) and opened == data_key
    # a second wrapping of the same key is another blob that opens to the same key
    again = wrapper.wrap(data_key, ctx())
    assert again.blob != wrapping.blob and wrapper.unwrap(again, ctx()) == data_key
    assert_no_key_material(repr(wrapper), bytes(data_key))


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(ctx(backup_id=OTHER_BACKUP), id="other-backup"),
        pytest.param(ctx(purpose="spool-key"), id="other-purpose"),
        pytest.param(ctx(domain=Domain.AU), id="other-domain"),
    ],
)
def test_the_encryption_context_binds_the_wrapping(kms_server: S3Service,
                                                   other: WrapContext) -> None:
    config = kms_config(kms_server.endpoint)
    wrapper = kms_wrapper(config, create_kms_key(config, Domain.EU))
    data_key = new_data_key()
    wrapping = wrapper.wrap(data_key, ctx())
    with pytest.raises(WrongKeyError, match="AWS KMS refused to open a data key") as info:
        wrapper.unwrap(wrapping, other)
    assert_no_key_material(str(info.value), bytes(data_key))
    assert wrapper.unwrap(wrapping, ctx()) == data_key  # KMS refused only the wrong context


def test_older_held_keys_open_and_unheld_ones_are_refused_without_asking(
    kms_server: S3Service,
) -> None:
    config = kms_config(kms_server.endpoint)
    old_arn, new_arn = create_kms_key(config, Domain.EU), create_kms_key(config, Domain.EU)
    data_key = new_data_key()
    old_wrapping = kms_wrapper(config, old_arn).wrap(data_key, ctx())
    rotated = kms_wrapper(config, new_arn, old_arn)
    assert rotated.unwrap(old_wrapping, ctx()) == data_key
    assert rotated.wrap(data_key, ctx()).key_id == new_arn
    forgetful = kms_wrapper(config, new_arn)
    with pytest.raises(WrongKeyError, match=f"does not hold KMS key {old_arn}"):
        forgetful.unwrap(old_wrapping, ctx())


# --- KMS away --------------------------------------------------------------------------------


def test_kms_stopped_is_key_service_unavailable_and_the_escrow_still_opens(
    tmp_path: Path,
) -> None:
    """A KMS of its own, so stopping it leaves the module's server to the other tests."""
    server = start_s3(tmp_path / "moto")
    try:
        config = kms_config(server.endpoint)
        arn = create_kms_key(config, Domain.EU)
        escrow = local_wrapper()
        keyring = Keyring(Domain.EU, (kms_wrapper(config, arn), escrow), escrow)
        data_key = new_data_key()
        wrappings = keyring.wrap(data_key, ctx())
        assert [w.wrapper for w in wrappings] == ["aws-kms", "local"]
        assert keyring.open_all(wrappings, ctx()) == data_key
    finally:
        server.stop()

    started = time.monotonic()
    with pytest.raises(KeyServiceUnavailable, match="could not be reached") as info:
        keyring.wrappers[0].unwrap(wrappings[0], ctx())
    assert time.monotonic() - started < 5  # quickly: a restore moves on to the escrow
    assert not isinstance(info.value, WrongKeyError)
    with pytest.raises(KeyServiceUnavailable):
        keyring.wrappers[0].wrap(data_key, ctx())  # a step retries later
    # the keyring passes over the KMS wrapping and opens the local escrow one
    started = time.monotonic()
    assert keyring.unwrap(wrappings, ctx()) == data_key
    assert time.monotonic() - started < 5
    # with only the KMS wrapping, that is the error: worth another try
    with pytest.raises(KeyServiceUnavailable):
        keyring.unwrap(wrappings[:1], ctx())


def test_kms_at_a_closed_port_is_key_service_unavailable(kms_server: S3Service) -> None:
    live = kms_config(kms_server.endpoint)
    arn = create_kms_key(live, Domain.EU)
    wrapping = kms_wrapper(live, arn).wrap(new_data_key(), ctx())
    dead = kms_wrapper(kms_config(f"http://127.0.0.1:{free_port()}"), arn)
    started = time.monotonic()
    with pytest.raises(KeyServiceUnavailable, match=f"to open a data key with {arn}"):
        dead.unwrap(wrapping, ctx())
    with pytest.raises(KeyServiceUnavailable):
        dead.key_state(arn)
    assert time.monotonic() - started < 5


# --- deletion of retired keys ----------------------------------------------------------------


def test_schedule_kms_key_deletion_puts_the_key_in_pending_deletion(
    kms_server: S3Service,
) -> None:
    config = kms_config(kms_server.endpoint)
    arn = create_kms_key(config, Domain.EU)
    wrapper = kms_wrapper(config, arn)
    assert wrapper.key_state(arn) == "Enabled"
    when = schedule_kms_key_deletion(config, Domain.EU, arn, days=7)
    assert wrapper.key_state(arn) == "PendingDeletion"
    now = datetime.now(UTC)
    assert now + timedelta(days=6) < when < now + timedelta(days=8)


def test_key_state_of_an_unknown_key_is_not_found(kms_server: S3Service) -> None:
    config = kms_config(kms_server.endpoint)
    arn = create_kms_key(config, Domain.EU)
    missing = arn.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
    assert kms_wrapper(config, arn).key_state(missing) == "NotFound"


# --- a managed keyring with aws-kms ----------------------------------------------------------


def test_a_managed_kms_keyring_wraps_twice_rotates_and_retires(
    kms_server: S3Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(context_module, "_residency_checked", set())
    config = kms_config(kms_server.endpoint, tmp_path)
    doc = keys.init(config, Domain.EU)
    kms_entry, local_entry = doc.current("aws-kms"), doc.current("local")
    assert kms_entry is not None and local_entry is not None
    assert kms_entry.material is None and key_region(kms_entry.id) == "eu-central-1"
    ctx_ = DomainContext(config, Domain.EU,
                         s3=MemoryStore("rv-eu-primary", "eu-central-1"),
                         gcs=MemoryStore("rv-eu-replica", "europe-west4"))
    data_key = new_data_key()
    wrappings = ctx_.keyring.wrap(data_key, ctx())
    assert [(w.wrapper, w.key_id) for w in wrappings] == [("aws-kms", kms_entry.id),
                                                          ("local", local_entry.id)]
    assert ctx_.keyring.open_all(wrappings, ctx()) == data_key

    rotated = keys.rotate(config, Domain.EU, only=["aws-kms"])
    assert rotated["aws-kms"] != kms_entry.id
    assert ctx_.keyring.current_ids() == {"aws-kms": rotated["aws-kms"],
                                          "local": local_entry.id}
    assert ctx_.keyring.unwrap(wrappings, ctx()) == data_key  # the old KMS key still opens

    done = keys.retire(ctx_, kms_entry.id)  # no manifest names it
    assert done.startswith(f"KMS key {kms_entry.id} removed from the keyring; KMS deletes")
    assert AwsKmsWrapper.for_domain(config, Domain.EU, rotated["aws-kms"], ()).key_state(
        kms_entry.id) == "PendingDeletion"
    assert not ctx_.keyring.holds(kms_entry.id)
    # its wrapping no longer opens, the escrow wrapping of the same key still does
    with pytest.raises(WrongKeyError):
        ctx_.keyring.unwrap(wrappings[:1], ctx())
    assert ctx_.keyring.unwrap(wrappings, ctx()) == data_key

