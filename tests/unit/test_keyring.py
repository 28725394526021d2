"""LocalKeyring: envelope encryption bound to domain and backup; keys never leak into text."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from regionvault.config import DomainConfig
from regionvault.domains import Domain
from regionvault.errors import SecretError, WrongKeyError
from regionvault.keyring import (
    KEY_BYTES,
    LocalKeyring,
    WrappedKey,
    generate_domain_key,
    new_data_key,
    wrap_context,
)
from tests.unit import domain_data

BACKUP = "eu.accounts.20261128T020000Z.1a2b3c4d"
OTHER_BACKUP = "eu.accounts.20261129T020000Z.5e6f7a8b"


def ctx(domain: Domain = Domain.EU, backup_id: str = BACKUP, purpose: str = "data-key") -> bytes:
    return wrap_context(domain, backup_id, purpose)


def key_texts(key: bytes) -> list[str]:
    """Every form in which key bytes could show up in a message."""
    return [key.hex(), base64.b64encode(key).decode(), repr(key), key.decode("latin-1")]


def assert_no_key_material(text: str, *keys: bytes) -> None:
    for key in keys:
        for form in key_texts(key):
            assert form not in text


def test_wrap_unwrap_round_trip() -> None:
    keyring = LocalKeyring(Domain.EU, {"eu-1": os.urandom(KEY_BYTES)}, current="eu-1")
    data_key = new_data_key()
    wrapped = keyring.wrap(data_key, ctx())
    assert wrapped.key_id == "eu-1"
    assert data_key not in wrapped.blob
    assert keyring.unwrap(wrapped, ctx()) == data_key


def test_wrapped_key_encoding_round_trip() -> None:
    keyring = LocalKeyring(Domain.EU, {"eu-1": os.urandom(KEY_BYTES)}, current="eu-1")
    data_key = new_data_key()
    wrapped = keyring.wrap(data_key, ctx())
    decoded = WrappedKey.decode(wrapped.key_id, wrapped.encoded())
    assert decoded == wrapped
    assert keyring.unwrap(decoded, ctx()) == data_key


def test_another_domains_key_cannot_unwrap_and_message_hides_keys() -> None:
    eu_key, us_key = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
    eu = LocalKeyring(Domain.EU, {"k1": eu_key}, current="k1")
    us = LocalKeyring(Domain.US, {"k1": us_key}, current="k1")  # same id, other bytes
    data_key = new_data_key()
    wrapped = eu.wrap(data_key, ctx())
    with pytest.raises(WrongKeyError) as info:
        us.unwrap(wrapped, ctx())
    message = str(info.value)
    assert "'k1'" in message and "'us'" in message
    assert_no_key_material(message, eu_key, us_key, data_key)


def test_same_key_bytes_in_another_domain_still_cannot_unwrap() -> None:
    """The domain is part of the wrap context, not only of the key choice."""
    shared = os.urandom(KEY_BYTES)
    eu = LocalKeyring(Domain.EU, {"k1": shared}, current="k1")
    us = LocalKeyring(Domain.US, {"k1": shared}, current="k1")
    wrapped = eu.wrap(new_data_key(), ctx(Domain.EU))
    with pytest.raises(WrongKeyError):
        us.unwrap(wrapped, ctx(Domain.US))


def test_unknown_key_id_is_named() -> None:
    keyring = LocalKeyring(Domain.EU, {"eu-2026": os.urandom(KEY_BYTES)}, current="eu-2026")
    wrapped = WrappedKey(key_id="eu-2019", blob=os.urandom(60))
    with pytest.raises(WrongKeyError, match="'eu-2019'") as info:
        keyring.unwrap(wrapped, ctx())
    assert "eu-2026" in str(info.value)  # what it does hold
    assert "previous_keys" in str(info.value)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(ctx(backup_id=OTHER_BACKUP), id="other-backup"),
        pytest.param(ctx(purpose="spool-key"), id="other-purpose"),
        pytest.param(ctx(domain=Domain.AU), id="other-domain"),
    ],
)
def test_wrap_is_bound_to_its_context(other: bytes) -> None:
    keyring = LocalKeyring(Domain.EU, {"k1": os.urandom(KEY_BYTES)}, current="k1")
    wrapped = keyring.wrap(new_data_key(), ctx())
    with pytest.raises(WrongKeyError):
        keyring.unwrap(wrapped, other)


def test_tampered_blob_is_wrong_key() -> None:
    keyring = LocalKeyring(Domain.EU, {"k1": os.urandom(KEY_BYTES)}, current="k1")
    wrapped = keyring.wrap(new_data_key(), ctx())
    blob = bytearray(wrapped.blob)
    blob[-1] ^= 0x01
    with pytest.raises(WrongKeyError):
        keyring.unwrap(WrappedKey(wrapped.key_id, bytes(blob)), ctx())


def test_previous_keys_unwrap_old_backups_and_current_key_wraps() -> None:
    old_key, new_key = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
    before = LocalKeyring(Domain.EU, {"k-old": old_key}, current="k-old")
    after = LocalKeyring(Domain.EU, {"k-new": new_key, "k-old": old_key}, current="k-new")
    data_key = new_data_key()
    old_wrapped = before.wrap(data_key, ctx())
    assert after.unwrap(old_wrapped, ctx()) == data_key
    assert after.wrap(data_key, ctx()).key_id == "k-new"


def _dcfg(tmp_path: Path, *, current_env: str, previous_file: Path | None = None) -> DomainConfig:
    data = domain_data("eu", sources=[])
    data["key"] = {"id": "eu-current", "secret": {"env": current_env}}
    if previous_file is not None:
        data["previous_keys"] = [{"id": "eu-previous", "secret": {"file": str(previous_file)}}]
    return DomainConfig.model_validate(data)


def test_from_config_reads_env_and_file_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    current, previous = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
    monkeypatch.setenv("RV_UNIT_KEY", base64.b64encode(current).decode())
    key_file = tmp_path / "previous.key"
    key_file.write_text(base64.b64encode(previous).decode() + "\n")
    keyring = LocalKeyring.from_config(Domain.EU, _dcfg(tmp_path, current_env="RV_UNIT_KEY",
                                                        previous_file=key_file))
    data_key = new_data_key()
    wrapped = keyring.wrap(data_key, ctx())
    assert wrapped.key_id == "eu-current"
    # the wrapping really is done with the bytes from the environment ...
    by_hand = LocalKeyring(Domain.EU, {"eu-current": current}, current="eu-current")
    assert by_hand.unwrap(wrapped, ctx()) == data_key
    # ... and the previous key from the file opens what it wrapped
    old = LocalKeyring(Domain.EU, {"eu-previous": previous}, current="eu-previous")
    assert keyring.unwrap(old.wrap(data_key, ctx()), ctx()) == data_key


def test_generated_domain_key_is_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RV_UNIT_KEY", generate_domain_key())
    keyring = LocalKeyring.from_config(Domain.EU, _dcfg(tmp_path, current_env="RV_UNIT_KEY"))
    data_key = new_data_key()
    assert keyring.unwrap(keyring.wrap(data_key, ctx()), ctx()) == data_key


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(base64.b64encode(b"\x01" * 16).decode(), id="16-bytes"),
        pytest.param(base64.b64encode(b"\x01" * 33).decode(), id="33-bytes"),
        pytest.param("not base64 at all!", id="not-base64"),
    ],
)
def test_key_of_wrong_length_is_a_secret_error_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RV_UNIT_KEY", value)
    with pytest.raises(SecretError, match="'eu-current'") as info:
        LocalKeyring.from_config(Domain.EU, _dcfg(tmp_path, current_env="RV_UNIT_KEY"))
    message = str(info.value)
    assert "RV_UNIT_KEY" in message and "32 bytes" in message
    assert value not in message


def test_missing_key_env_is_a_secret_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RV_UNIT_KEY_MISSING", raising=False)
    with pytest.raises(SecretError, match="RV_UNIT_KEY_MISSING") as info:
        LocalKeyring.from_config(Domain.EU, _dcfg(tmp_path, current_env="RV_UNIT_KEY_MISSING"))
    assert "'eu-current'" in str(info.value)


def test_repr_hides_key_material() -> None:
    key = os.urandom(KEY_BYTES)
    keyring = LocalKeyring(Domain.EU, {"eu-1": key}, current="eu-1")
    text = repr(keyring)
    assert "eu-1" in text and "'eu'" in text
    assert_no_key_material(text, key)
    assert_no_key_material(str(keyring), key)
