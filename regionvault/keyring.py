"""Domain keys and per-backup data keys (envelope encryption).

Each backup gets a fresh 256-bit data key. The data key is wrapped (AES-256-GCM) by its domain's
key; the wrapping is bound to the domain and the backup id, so a wrapped key cannot be moved to
another backup and one domain's key cannot open another domain's backups. ``KeyWrapper`` is the
seam where a cloud KMS (AWS KMS in the domain's region) plugs in later; ``LocalKeyring`` holds
keys read from the secrets the configuration points at.

The same domain keys authenticate manifests: each key yields, through HKDF-SHA256 with its own
purpose label (``MANIFEST_MAC_LABEL`` and the domain), an HMAC-SHA256 key that is used for
nothing else, so the MAC key is never the key that wraps data keys. A manifest records the id
of the key that signed it; a key moved to ``previous_keys`` keeps verifying what it signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from regionvault.config import DomainConfig, KeyRef
from regionvault.domains import Domain
from regionvault.errors import SecretError, WrongKeyError

KEY_BYTES = 32
_NONCE_BYTES = 12
#: HKDF ``info`` prefix of the manifest MAC key; the domain follows after ``|``
MANIFEST_MAC_LABEL = b"regionvault manifest mac v1"


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted by a domain key; safe to store in a manifest."""

    key_id: str
    blob: bytes  # nonce || ciphertext || tag

    def encoded(self) -> str:
        return base64.b64encode(self.blob).decode("ascii")

    @classmethod
    def decode(cls, key_id: str, encoded: str) -> WrappedKey:
        return cls(key_id=key_id, blob=base64.b64decode(encoded))


def manifest_mac_key(domain_key: bytes, domain: Domain) -> bytes:
    """The HMAC key for manifests of ``domain``, derived from one of its domain keys.

    HKDF-SHA256, no salt (the input is already a uniformly random 256-bit key), ``info`` =
    ``b"regionvault manifest mac v1|<domain>"``, 32 bytes.
    """
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=MANIFEST_MAC_LABEL + b"|" + domain.value.encode("ascii"))
    return hkdf.derive(domain_key)


def wrap_context(domain: Domain, backup_id: str, purpose: str) -> bytes:
    """Associated data binding a wrapped key to one domain, one backup and one use."""
    return f"regionvault/v1|{purpose}|{domain.value}|{backup_id}".encode()


class KeyWrapper(Protocol):
    """Wraps and unwraps data keys, and signs and checks manifests, with one domain's key(s).

    Contract: ``wrap`` uses the domain's current key and records its id in the result.
    ``unwrap`` MUST raise ``WrongKeyError`` (never return garbage) if the key named by
    ``wrapped.key_id`` is not held or does not open the blob under ``context``.
    ``manifest_mac`` returns ``(key id, MAC)`` over ``data`` under the MAC key of the current
    key (or of ``key_id``); ``verify_manifest_mac`` returns whether ``mac`` is that MAC under
    the key named by ``key_id``, current or previous, and MUST raise ``WrongKeyError`` naming
    the held ids when that key is not held. The MAC key is never a key that wraps data keys
    (a KMS implementation would use a KMS HMAC key, GenerateMac/VerifyMac).
    Key material never appears in an exception, a log line or a repr.
    """

    domain: Domain

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes: ...

    def manifest_mac(self, data: bytes, key_id: str | None = None) -> tuple[str, bytes]: ...

    def verify_manifest_mac(self, data: bytes, key_id: str, mac: bytes) -> bool: ...


def new_data_key() -> bytes:
    return os.urandom(KEY_BYTES)


def generate_domain_key() -> str:
    """A new domain key, base64, in the form the keyring reads."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def _decode_key(ref: KeyRef, domain: Domain) -> bytes:
    text = ref.secret.read(f"key {ref.id!r} of domain {domain.value!r}")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != KEY_BYTES:
        raise SecretError(
            f"key {ref.id!r} of domain {domain.value!r} in {ref.secret.describe()} "
            f"must be {KEY_BYTES} bytes in base64"
        )
    return raw


class LocalKeyring:
    """Keys of one domain held in memory, read from the configured secrets on first use."""

    def __init__(self, domain: Domain, keys: dict[str, bytes], current: str) -> None:
        self.domain = domain
        self._keys = keys
        self._current = current

    @classmethod
    def from_config(cls, domain: Domain, dcfg: DomainConfig) -> LocalKeyring:
        keys = {ref.id: _decode_key(ref, domain) for ref in dcfg.all_keys()}
        return cls(domain, keys, current=dcfg.key.id)

    def __repr__(self) -> str:  # never show key bytes
        return f"LocalKeyring(domain={self.domain.value!r}, key_ids={sorted(self._keys)})"

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(self._keys[self._current]).encrypt(nonce, data_key, context)
        return WrappedKey(key_id=self._current, blob=nonce + sealed)

    def _key(self, key_id: str) -> bytes:
        key = self._keys.get(key_id)
        if key is None:
            held = ", ".join(sorted(self._keys))
            raise WrongKeyError(
                f"domain {self.domain.value!r} does not hold key {key_id!r} "
                f"(holds: {held}); configure it under previous_keys"
            )
        return key

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        key = self._key(wrapped.key_id)
        nonce, sealed = wrapped.blob[:_NONCE_BYTES], wrapped.blob[_NONCE_BYTES:]
        try:
            return AESGCM(key).decrypt(nonce, sealed, context)
        except InvalidTag:
            raise WrongKeyError(
                f"key {wrapped.key_id!r} of domain {self.domain.value!r} cannot open this "
                "data key: the key is wrong or the backup belongs to another domain"
            ) from None

    def manifest_mac(self, data: bytes, key_id: str | None = None) -> tuple[str, bytes]:
        key_id = self._current if key_id is None else key_id
        mac_key = manifest_mac_key(self._key(key_id), self.domain)
        return key_id, hmac.new(mac_key, data, hashlib.sha256).digest()

    def verify_manifest_mac(self, data: bytes, key_id: str, mac: bytes) -> bool:
        _, expected = self.manifest_mac(data, key_id)
        return hmac.compare_digest(expected, mac)
