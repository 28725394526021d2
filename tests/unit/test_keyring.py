"""Keyring: envelope encryption bound to domain, backup and purpose; every wrapper wraps, the
first that opens unwraps; the keyring file and the source that re-reads it; keys never leak
into text."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from regionvault import keyring as keyring_module
from regionvault.config import Config, parse_config
from regionvault.domains import Domain
from regionvault.errors import (
    ConfigError,
    KeyServiceUnavailable,
    SecretError,
    WrongKeyError,
)
from regionvault.keyring import (
    KEY_BYTES,
    KeyEntry,
    Keyring,
    KeyringDocument,
    KeyringSource,
    LocalWrapper,
    RetiredKey,
    WrapContext,
    Wrapping,
    generate_domain_key,
    new_data_key,
    read_keyring_document,
    write_keyring_document,
    zeroise,
)
from tests.unit import config_data

BACKUP = "eu.accounts.20261128T020000Z.1a2b3c4d"
OTHER_BACKUP = "eu.accounts.20261129T020000Z.5e6f7a8b"
KMS_ARN = "arn:aws:kms:eu-central-1:123456789012:key/1234abcd-0000-0000-0000-000000000001"
WHEN = datetime(2026, 11, 1, tzinfo=UTC)


def ctx(domain: Domain = Domain.EU, backup_id: str = BACKUP,
        purpose: str = "data-key") -> WrapContext:
    return WrapContext(domain, backup_id, purpose)


def key_texts(key: bytes) -> list[str]:
    """Every form in which key bytes could show up in a message."""
    return [key.hex(), base64.b64encode(key).decode(), repr(key), key.decode("latin-1")]


def assert_no_key_material(text: str, *keys: bytes) -> None:
    for key in keys:
        for form in key_texts(key):
            assert form not in text


def local(keys: dict[str, bytes] | None = None, *, current: str = "k1",
          domain: Domain = Domain.EU) -> Keyring:
    """A local-only keyring; ``keys`` by id (a fresh random ``current`` key if none)."""
    material: dict[str, bytes | bytearray] = dict(keys or {current: os.urandom(KEY_BYTES)})
    return Keyring.local_only(domain, material, current=current)


class FakeKms:
    """A ``KeyWrapper`` standing in for a key service: AES-GCM under a key of its own, and an
    ``away`` switch that makes it behave as a service that cannot be reached."""

    name = "aws-kms"

    def __init__(self, current: str = KMS_ARN) -> None:
        self.current_key_id = current
        self._key = os.urandom(KEY_BYTES)
        self.away = False
        self.unwraps = 0

    def key_ids(self) -> tuple[str, ...]:
        return (self.current_key_id,)

    def holds(self, key_id: str) -> bool:
        return key_id == self.current_key_id

    def wrap(self, data_key: bytes | bytearray, context: WrapContext) -> Wrapping:
        nonce = os.urandom(12)
        sealed = AESGCM(self._key).encrypt(nonce, bytes(data_key), context.aad())
        return Wrapping.of(self.name, self.current_key_id, nonce + sealed)

    def unwrap(self, wrapping: Wrapping, context: WrapContext) -> bytearray:
        self.unwraps += 1
        if self.away:
            raise KeyServiceUnavailable("the fake key service cannot be reached")
        if not self.holds(wrapping.key_id):
            raise WrongKeyError(f"the fake key service holds no key {wrapping.key_id}")
        raw = wrapping.raw()
        try:
            return bytearray(AESGCM(self._key).decrypt(raw[:12], raw[12:], context.aad()))
        except Exception:
            raise WrongKeyError("the fake key service cannot open this data key") from None


def with_kms(kms: FakeKms, **keys: bytes) -> Keyring:
    """A keyring wrapping with ``kms`` first and local keys (``keys``, first current) second."""
    material = dict(keys) or {"k1": os.urandom(KEY_BYTES)}
    wrapper = LocalWrapper(Domain.EU, {k: bytearray(v) for k, v in material.items()},
                           next(iter(material)))
    return Keyring(Domain.EU, (kms, wrapper), wrapper)


# --- local wrapping --------------------------------------------------------------------------


def test_wrap_unwrap_round_trip() -> None:
    keyring = local(current="eu-1")
    data_key = new_data_key()
    (wrapping,) = keyring.wrap(data_key, ctx())
    assert (wrapping.wrapper, wrapping.key_id) == ("local", "eu-1")
    assert bytes(data_key) not in wrapping.raw()
    # 12-byte nonce, the 32-byte key, a 16-byte tag
    assert len(wrapping.raw()) == 12 + KEY_BYTES + 16
    opened = keyring.unwrap((wrapping,), ctx())
    assert isinstance(opened, bytearray) and opened == data_key


def test_wrapping_survives_its_json_form() -> None:
    keyring = local()
    data_key = new_data_key()
    (wrapping,) = keyring.wrap(data_key, ctx())
    again = Wrapping.model_validate_json(wrapping.model_dump_json())
    assert again == wrapping
    assert keyring.unwrap((again,), ctx()) == data_key


def test_another_domains_key_cannot_unwrap_and_message_hides_keys() -> None:
    eu_key, us_key = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
    eu = local({"k1": eu_key}, domain=Domain.EU)
    us = local({"k1": us_key}, domain=Domain.US)  # same id, other bytes
    data_key = new_data_key()
    wrappings = eu.wrap(data_key, ctx())
    with pytest.raises(WrongKeyError) as info:
        us.unwrap(wrappings, ctx())
    message = str(info.value)
    assert "'k1'" in message and "'us'" in message
    assert_no_key_material(message, eu_key, us_key, bytes(data_key))


def test_same_key_bytes_in_another_domain_still_cannot_unwrap() -> None:
    """The domain is part of the wrap context, not only of the key choice."""
    shared = os.urandom(KEY_BYTES)
    eu = local({"k1": shared}, domain=Domain.EU)
    us = local({"k1": shared}, domain=Domain.US)
    wrappings = eu.wrap(new_data_key(), ctx(Domain.EU))
    with pytest.raises(WrongKeyError):
        us.unwrap(wrappings, ctx(Domain.US))


def test_unknown_key_id_is_named_with_what_is_held() -> None:
    keyring = local(current="eu-2026")
    stray = Wrapping.of("local", "eu-2019", os.urandom(60))
    with pytest.raises(WrongKeyError, match="'eu-2019'") as info:
        keyring.unwrap((stray,), ctx())
    message = str(info.value)
    assert "eu-2026" in message  # what it does hold
    assert "retired" in message


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(ctx(backup_id=OTHER_BACKUP), id="other-backup"),
        pytest.param(ctx(purpose="spool-key"), id="other-purpose"),
        pytest.param(ctx(domain=Domain.AU), id="other-domain"),
    ],
)
def test_wrap_is_bound_to_its_context(other: WrapContext) -> None:
    keyring = local()
    data_key = new_data_key()
    wrappings = keyring.wrap(data_key, ctx())
    assert keyring.unwrap(wrappings, ctx()) == data_key  # the right context opens it ...
    with pytest.raises(WrongKeyError):
        keyring.unwrap(wrappings, other)  # ... no other does


def test_tampered_blob_is_wrong_key() -> None:
    keyring = local()
    (wrapping,) = keyring.wrap(new_data_key(), ctx())
    blob = bytearray(wrapping.raw())
    blob[-1] ^= 0x01
    with pytest.raises(WrongKeyError):
        keyring.unwrap((Wrapping.of("local", wrapping.key_id, bytes(blob)),), ctx())


def test_no_wrapping_left_opens_nothing() -> None:
    with pytest.raises(WrongKeyError, match="nothing can open it"):
        local().unwrap((), ctx())


def test_previous_keys_unwrap_old_backups_and_current_key_wraps() -> None:
    old_key, new_key = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
    before = local({"k-old": old_key}, current="k-old")
    after = local({"k-new": new_key, "k-old": old_key}, current="k-new")
    data_key = new_data_key()
    old_wrappings = before.wrap(data_key, ctx())
    assert after.unwrap(old_wrappings, ctx()) == data_key
    (fresh,) = after.wrap(data_key, ctx())
    assert fresh.key_id == "k-new"
    assert after.is_current((fresh,)) and not after.is_current(old_wrappings)
    # the new wrapping is really made with the new key: the old keyring cannot open it
    with pytest.raises(WrongKeyError, match="'k-new'"):
        before.unwrap((fresh,), ctx())


def test_local_wrapper_refuses_a_current_key_it_does_not_hold() -> None:
    with pytest.raises(ConfigError, match="'k9'"):
        LocalWrapper(Domain.EU, {"k1": bytearray(KEY_BYTES)}, "k9")


def test_keyring_refuses_to_be_built_without_its_local_keys() -> None:
    wrapper = LocalWrapper(Domain.EU, {"k1": bytearray(os.urandom(KEY_BYTES))}, "k1")
    with pytest.raises(ConfigError, match="local keys"):
        Keyring(Domain.EU, (FakeKms(),), wrapper)


# --- several wrappers ------------------------------------------------------------------------


def test_wrap_gives_one_wrapping_per_wrapper_each_under_its_current_key() -> None:
    kms = FakeKms()
    keyring = with_kms(kms, **{"eu-a": os.urandom(KEY_BYTES), "eu-b": os.urandom(KEY_BYTES)})
    data_key = new_data_key()
    wrappings = keyring.wrap(data_key, ctx())
    assert [(w.wrapper, w.key_id) for w in wrappings] == [("aws-kms", KMS_ARN),
                                                          ("local", "eu-a")]
    assert keyring.current_ids() == {"aws-kms": KMS_ARN, "local": "eu-a"}
    assert keyring.is_current(wrappings)
    assert not keyring.is_current(wrappings[1:])  # one wrapper's wrapping is missing
    # each wrapping opens on its own to the same key
    assert kms.unwrap(wrappings[0], ctx()) == data_key
    assert keyring.local.unwrap(wrappings[1], ctx()) == data_key
    assert keyring.holds(KMS_ARN) and keyring.holds("eu-b") and not keyring.holds("eu-c")


def test_unwrap_uses_the_first_wrapper_that_opens() -> None:
    kms = FakeKms()
    keyring = with_kms(kms)
    data_key = new_data_key()
    wrappings = keyring.wrap(data_key, ctx())
    assert keyring.unwrap(wrappings, ctx()) == data_key
    assert kms.unwraps == 1


def test_unwrap_passes_over_a_service_that_is_away_to_the_local_escrow() -> None:
    kms = FakeKms()
    keyring = with_kms(kms)
    data_key = new_data_key()
    wrappings = keyring.wrap(data_key, ctx())
    kms.away = True
    assert keyring.unwrap(wrappings, ctx()) == data_key
    assert kms.unwraps == 1  # it was tried first, and passed over


def test_unwrap_with_every_service_away_is_key_service_unavailable() -> None:
    kms = FakeKms()
    keyring = with_kms(kms)
    data_key = new_data_key()
    kms_only = keyring.wrap(data_key, ctx())[:1]  # e.g. the escrow wrapping was never made
    kms.away = True
    with pytest.raises(KeyServiceUnavailable, match="cannot be reached") as info:
        keyring.unwrap(kms_only, ctx())
    assert not isinstance(info.value, WrongKeyError)
    kms.away = False  # worth another try: once back, it opens
    assert keyring.unwrap(kms_only, ctx()) == data_key


def test_unwrap_with_a_service_away_and_a_wrong_key_is_wrong_key() -> None:
    kms = FakeKms()
    keyring = with_kms(kms)
    kms_wrapping, local_wrapping = keyring.wrap(new_data_key(), ctx())
    blob = bytearray(local_wrapping.raw())
    blob[20] ^= 0xFF
    broken = Wrapping.of("local", local_wrapping.key_id, bytes(blob))
    kms.away = True
    with pytest.raises(WrongKeyError) as info:
        keyring.unwrap((kms_wrapping, broken), ctx())
    message = str(info.value)
    assert "aws-kms: the fake key service cannot be reached" in message  # why each failed
    assert "local: key 'k1'" in message


def test_unwrap_names_a_wrapper_the_domain_does_not_use() -> None:
    keyring = local()
    wrapping = FakeKms().wrap(new_data_key(), ctx())
    with pytest.raises(WrongKeyError, match="aws-kms not configured in domain 'eu'"):
        keyring.unwrap((wrapping,), ctx())


def test_open_all_opens_when_every_wrapping_agrees() -> None:
    kms = FakeKms()
    keyring = with_kms(kms)
    data_key = new_data_key()
    assert keyring.open_all(keyring.wrap(data_key, ctx()), ctx()) == data_key
    assert kms.unwraps == 1  # every wrapping was opened, not only the first


def test_open_all_finds_a_wrapping_that_opens_to_another_key() -> None:
    kms = FakeKms()
    keyring = with_kms(kms)
    good_kms, _ = keyring.wrap(new_data_key(), ctx())
    _, other_local = keyring.wrap(new_data_key(), ctx())  # another data key
    assert keyring.unwrap((good_kms, other_local), ctx())  # unwrap alone does not notice
    with pytest.raises(WrongKeyError, match="local wrapping under key 'k1' opens to another"):
        keyring.open_all((good_kms, other_local), ctx())


def test_open_all_fails_on_any_wrapping_that_does_not_open() -> None:
    kms = FakeKms()
    keyring = with_kms(kms)
    wrappings = keyring.wrap(new_data_key(), ctx())
    kms.away = True
    with pytest.raises(KeyServiceUnavailable):
        keyring.open_all(wrappings, ctx())
    with pytest.raises(WrongKeyError, match="no wrapping"):
        keyring.open_all((), ctx())


def test_zeroise_wipes_a_bytearray_in_place() -> None:
    key = new_data_key()
    assert len(key) == KEY_BYTES and any(key)
    same = key
    zeroise(key)
    assert same is key and key == bytearray(KEY_BYTES)
    zeroise(None)  # nothing to wipe is not an error


def test_wipe_zeroises_the_local_keys() -> None:
    material = {"k1": bytearray(os.urandom(KEY_BYTES)), "k2": bytearray(os.urandom(KEY_BYTES))}
    wrapper = LocalWrapper(Domain.EU, material, "k1")
    Keyring(Domain.EU, (wrapper,), wrapper).wipe()
    assert all(key == bytearray(KEY_BYTES) for key in material.values())


# --- static keys from the configuration ------------------------------------------------------


def static_config(current_env: str, previous_file: Path | None = None) -> Config:
    data = config_data("eu")
    data["domains"]["eu"]["key"] = {"id": "eu-current", "secret": {"env": current_env}}
    if previous_file is not None:
        data["domains"]["eu"]["previous_keys"] = [
            {"id": "eu-previous", "secret": {"file": str(previous_file)}}]
    return parse_config(data, origin="test", env={})


def test_static_keys_come_from_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    current, previous = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
    monkeypatch.setenv("RV_UNIT_KEY", base64.b64encode(current).decode())
    key_file = tmp_path / "previous.key"
    key_file.write_text(base64.b64encode(previous).decode() + "\n")
    keyring = KeyringSource(static_config("RV_UNIT_KEY", key_file), Domain.EU).current()
    assert keyring.current_ids() == {"local": "eu-current"}
    data_key = new_data_key()
    wrappings = keyring.wrap(data_key, ctx())
    assert [w.key_id for w in wrappings] == ["eu-current"]
    # the wrapping really is done with the bytes from the environment ...
    by_hand = local({"eu-current": current}, current="eu-current")
    assert by_hand.unwrap(wrappings, ctx()) == data_key
    # ... and the previous key from the file opens what it wrapped
    old = local({"eu-previous": previous}, current="eu-previous")
    assert keyring.unwrap(old.wrap(data_key, ctx()), ctx()) == data_key


def test_static_keyring_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RV_UNIT_KEY", generate_domain_key())
    source = KeyringSource(static_config("RV_UNIT_KEY"), Domain.EU)
    first = source.current()
    monkeypatch.setenv("RV_UNIT_KEY", generate_domain_key())  # changes need a restart
    assert source.current() is first


def test_generated_domain_key_is_readable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RV_UNIT_KEY", generate_domain_key())
    keyring = KeyringSource(static_config("RV_UNIT_KEY"), Domain.EU).current()
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
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RV_UNIT_KEY", value)
    with pytest.raises(SecretError, match="'eu-current'") as info:
        KeyringSource(static_config("RV_UNIT_KEY"), Domain.EU).current()
    message = str(info.value)
    assert "RV_UNIT_KEY" in message and "32 bytes" in message
    assert value not in message


def test_missing_key_env_is_a_secret_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RV_UNIT_KEY_MISSING", raising=False)
    with pytest.raises(SecretError, match="RV_UNIT_KEY_MISSING") as info:
        KeyringSource(static_config("RV_UNIT_KEY_MISSING"), Domain.EU).current()
    assert "'eu-current'" in str(info.value)


def test_repr_hides_key_material() -> None:
    key, other = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
    keyring = local({"eu-1": key, "eu-0": other}, current="eu-1")
    for text in (repr(keyring), str(keyring), repr(keyring.local), str(keyring.local)):
        assert "eu-1" in text and "'eu'" in text
        assert_no_key_material(text, key, other)


# --- the keyring file ------------------------------------------------------------------------


def local_entry(key_id: str, *, current: bool = False,
                material: str | None = None) -> KeyEntry:
    return KeyEntry(id=key_id, wrapper="local", created_at=WHEN, current=current,
                    material=material or generate_domain_key())


def document(*keys: KeyEntry, retired: tuple[RetiredKey, ...] = ()) -> KeyringDocument:
    return KeyringDocument(domain=Domain.EU, keys=keys, retired=retired)


def test_keyring_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "eu.keyring.json"
    doc = document(local_entry("eu-old"), local_entry("eu-new", current=True),
                   KeyEntry(id=KMS_ARN, wrapper="aws-kms", created_at=WHEN, current=True),
                   retired=(RetiredKey(id="eu-gone", wrapper="local", retired_at=WHEN),))
    write_keyring_document(path, doc)
    again = read_keyring_document(path, Domain.EU, ("aws-kms", "local"))
    assert again == doc
    assert again.current("local") == doc.keys[1]
    assert again.current("aws-kms") == doc.keys[2]


def test_keyring_file_is_owner_readable_only(tmp_path: Path) -> None:
    path = tmp_path / "eu.keyring.json"
    write_keyring_document(path, document(local_entry("eu-1", current=True)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_keyring_document(path, document(local_entry("eu-2", current=True)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keyring_file_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "eu.keyring.json"
    first = document(local_entry("eu-1", current=True))
    write_keyring_document(path, first)
    with path.open("rb") as reader:  # a worker in the middle of reading the old file
        second = document(local_entry("eu-1"), local_entry("eu-2", current=True))
        write_keyring_document(path, second)
        # it still reads the old file, whole: the new one is another file moved into place
        assert KeyringDocument.model_validate_json(reader.read()) == first
    assert read_keyring_document(path, Domain.EU) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eu.keyring.json"]  # no temp left


def test_a_write_that_fails_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "eu.keyring.json"
    first = document(local_entry("eu-1", current=True))
    write_keyring_document(path, first)

    def crash(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keyring_module.os, "replace", crash)
    with pytest.raises(OSError, match="No space"):
        write_keyring_document(path, document(local_entry("eu-2", current=True)))
    monkeypatch.undo()
    assert read_keyring_document(path, Domain.EU) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eu.keyring.json"]


def test_duplicate_key_ids_are_refused_naming_them(tmp_path: Path) -> None:
    path = tmp_path / "eu.keyring.json"
    twice = document(local_entry("eu-1", current=True), local_entry("eu-1"),
                     retired=(RetiredKey(id="eu-0", wrapper="local", retired_at=WHEN),
                              RetiredKey(id="eu-0", wrapper="local", retired_at=WHEN)))
    with pytest.raises(ConfigError, match="repeated: eu-0, eu-1"):
        write_keyring_document(path, twice)
    assert not path.exists()
    # a file edited by hand is refused on reading, naming them too
    path.write_bytes(twice.to_json())
    with pytest.raises(SecretError, match="repeated: eu-0, eu-1"):
        read_keyring_document(path, Domain.EU)


def test_a_retired_id_used_again_is_refused(tmp_path: Path) -> None:
    doc = document(local_entry("eu-1", current=True),
                   retired=(RetiredKey(id="eu-1", wrapper="local", retired_at=WHEN),))
    with pytest.raises(ConfigError, match="repeated: eu-1"):
        write_keyring_document(tmp_path / "eu.keyring.json", doc)


def test_two_current_local_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "eu.keyring.json"
    doc = document(local_entry("eu-1", current=True), local_entry("eu-2", current=True))
    with pytest.raises(ConfigError, match="local has more than one current key: eu-1, eu-2"):
        write_keyring_document(path, doc)
    path.write_bytes(doc.to_json())
    with pytest.raises(SecretError, match="more than one current key: eu-1, eu-2"):
        read_keyring_document(path, Domain.EU)


def test_a_wrapper_the_domain_uses_needs_a_current_key(tmp_path: Path) -> None:
    path = tmp_path / "eu.keyring.json"
    write_keyring_document(path, document(local_entry("eu-1", current=True)))
    assert read_keyring_document(path, Domain.EU, ("local",)).current("local") is not None
    with pytest.raises(SecretError, match="uses wrapper 'aws-kms' but no aws-kms key"):
        read_keyring_document(path, Domain.EU, ("aws-kms", "local"))


def test_key_material_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        local_entry("eu-1", material=base64.b64encode(b"\x01" * 16).decode())


def test_a_kms_key_with_material_is_refused(tmp_path: Path) -> None:
    doc = document(local_entry("eu-1", current=True),
                   KeyEntry(id=KMS_ARN, wrapper="aws-kms", created_at=WHEN,
                            material=generate_domain_key()))
    with pytest.raises(ConfigError, match="a KMS key has none"):
        write_keyring_document(tmp_path / "eu.keyring.json", doc)


def test_another_domains_file_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "us.keyring.json"
    write_keyring_document(path, KeyringDocument(domain=Domain.US,
                                                 keys=(local_entry("us-1", current=True),)))
    with pytest.raises(SecretError, match="belongs to domain 'us', not 'eu'"):
        read_keyring_document(path, Domain.EU)
    with pytest.raises(SecretError, match="regionvault keys init --domain eu"):
        read_keyring_document(tmp_path / "none.json", Domain.EU)


def test_the_json_form_never_shows_key_material_in_repr() -> None:
    material = generate_domain_key()
    entry = local_entry("eu-1", current=True, material=material)
    assert material not in repr(entry)
    assert material not in repr(document(entry))


# --- the keyring source: a rotation reaches running workers ----------------------------------


def managed_config(path: Path) -> Config:
    data = config_data("eu")
    del data["domains"]["eu"]["key"]
    data["domains"]["eu"]["keyring"] = {"file": str(path), "wrappers": ["local"]}
    return parse_config(data, origin="test", env={})


def counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every read of a keyring file by the source."""
    reads: list[Path] = []
    real: Callable[..., KeyringDocument] = keyring_module.read_keyring_document

    def counted(path: Path, *args: Any, **kwargs: Any) -> KeyringDocument:
        reads.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(keyring_module, "read_keyring_document", counted)
    return reads


def test_keyring_source_rereads_the_file_after_a_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "eu.keyring.json"
    old = local_entry("eu-old", current=True)
    write_keyring_document(path, document(old))
    reads = counting_reads(monkeypatch)
    source = KeyringSource(managed_config(path), Domain.EU)
    data_key = new_data_key()
    before = source.current().wrap(data_key, ctx())
    assert [w.key_id for w in before] == ["eu-old"]

    new = local_entry("eu-new", current=True)
    write_keyring_document(path, document(old.model_copy(update={"current": False}), new))
    after = source.current()
    assert [w.key_id for w in after.wrap(data_key, ctx())] == ["eu-new"]
    assert after.unwrap(before, ctx()) == data_key  # the old key still opens old backups
    assert len(reads) == 2


def test_keyring_source_does_not_reread_an_unchanged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "eu.keyring.json"
    write_keyring_document(path, document(local_entry("eu-1", current=True)))
    reads = counting_reads(monkeypatch)
    source = KeyringSource(managed_config(path), Domain.EU)
    first = source.current()
    assert all(source.current() is first for _ in range(5))
    assert reads == [path]


def test_keyring_source_sees_a_removed_file(tmp_path: Path) -> None:
    path = tmp_path / "eu.keyring.json"
    write_keyring_document(path, document(local_entry("eu-1", current=True)))
    source = KeyringSource(managed_config(path), Domain.EU)
    source.current()
    path.unlink()
    with pytest.raises(SecretError, match="does not exist"):
        source.current()
