"""Domain keys and per-backup data keys (envelope encryption).

Each backup gets a fresh 256-bit data key. The data key is wrapped (AES-256-GCM) by its domain's
key; the wrapping is bound to the domain and the backup id, so a wrapped key cannot be moved to
another backup and one domain's key cannot open another domain's backups. ``KeyWrapper`` is the
seam where a cloud KMS (AWS KMS in the domain's region) plugs in later; ``LocalKeyring`` holds
keys read from the secrets the configuration points at.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from regionvault.config import DomainConfig, KeyRef
from regionvault.domains import Domain
from regionvault.errors import SecretError, WrongKeyError

KEY_BYTES = 32
_NONCE_BYTES = 12


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


def wrap_context(domain: Domain, backup_id: str, purpose: str) -> bytes:
    """Associated data binding a wrapped key to one domain, one backup and one use."""
    return f"regionvault/v1|{purpose}|{domain.value}|{backup_id}".encode()


class KeyWrapper(Protocol):
    """Wraps and unwraps data keys with one domain's key(s).

    Contract: ``wrap`` uses the domain's current key and records its id in the result.
    ``unwrap`` MUST raise ``WrongKeyError`` (never return garbage) if the key named by
    ``wrapped.key_id`` is not held or does not open the blob under ``context``.
    Key material never appears in an exception, a log line or a repr.
    """

    domain: Domain

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes: ...


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

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        key = self._keys.get(wrapped.key_id)
        if key is None:
            held = ", ".join(sorted(self._keys))
            raise WrongKeyError(
                f"domain {self.domain.value!r} does not hold key {wrapped.key_id!r} "
                f"(holds: {held}); configure it under previous_keys"
            )
        nonce, sealed = wrapped.blob[:_NONCE_BYTES], wrapped.blob[_NONCE_BYTES:]
        try:
            return AESGCM(key).decrypt(nonce, sealed, context)
        except InvalidTag:
            raise WrongKeyError(
                f"key {wrapped.key_id!r} of domain {self.domain.value!r} cannot open this "
                "data key: the key is wrong or the backup belongs to another domain"
            ) from None
