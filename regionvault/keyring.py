"""Domain keys and per-backup data keys (envelope encryption).

Each backup gets a fresh 256-bit data key. The data key is wrapped by every key-encryption key
(KEK) the domain's configuration names, and the manifest keeps every wrapping: any one of them
opens the backup. A wrapping is bound to the domain, the backup id and its purpose, so it
cannot be moved to another backup, and one domain's keys cannot open another domain's backups.

Two ``KeyWrapper`` kinds exist; the seam admits more (GCP Cloud KMS):

- ``local``: a 256-bit key held in the domain (AES-256-GCM, the binding as associated data).
  Always present. In a KMS domain it is the *escrow*: disaster recovery opens the GCS copy
  with it when AWS is gone.
- ``aws-kms``: a KMS key in the domain's own region (``Encrypt``/``Decrypt`` with an
  encryption context naming domain, backup id and purpose).

The local keys also authenticate manifests: each yields, through HKDF-SHA256 with its own
purpose label (``MANIFEST_MAC_LABEL`` and the domain), an HMAC-SHA256 key used for nothing
else. The MAC stays local on purpose: a KMS HMAC key would make the GCS manifests unreadable
exactly when AWS is gone and they are needed.

Where the keys come from (``KeyringSource``): the static ``key``/``previous_keys`` of the
configuration (read once), or a managed keyring file (``keyring.file``) that ``regionvault
keys`` rotates and that every worker re-reads when it changes: one ``stat`` per use, so a
rotation reaches running workers on their next task without a restart.

Key material is kept in ``bytearray``s and zeroised when a keyring is replaced, where Python
allows (a ``bytes`` object read from a file or produced by a library cannot be wiped). It
never appears in an exception, a log line or a repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from regionvault.config import Config, DomainConfig, KeyRef, WrapperName
from regionvault.domains import Domain
from regionvault.errors import ConfigError, KeyServiceUnavailable, SecretError, WrongKeyError

KEY_BYTES = 32
_NONCE_BYTES = 12
#: HKDF ``info`` prefix of the manifest MAC key; the domain follows after ``|``
MANIFEST_MAC_LABEL = b"regionvault manifest mac v1"
KEYRING_FORMAT: Literal["regionvault-keyring/1"] = "regionvault-keyring/1"


# --- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrapContext:
    """What a wrapping is bound to: one domain, one backup, one use."""

    domain: Domain
    backup_id: str
    purpose: str

    def aad(self) -> bytes:
        """Associated data of a local wrapping (the same bytes since the first format)."""
        return wrap_context(self.domain, self.backup_id, self.purpose)

    def kms(self) -> dict[str, str]:
        """Encryption context of a KMS wrapping (logged by CloudTrail: no secret in it)."""
        return {"regionvault:domain": self.domain.value,
                "regionvault:backup-id": self.backup_id,
                "regionvault:purpose": self.purpose}


class Wrapping(BaseModel):
    """A data key encrypted by one key-encryption key; safe to store in a manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: the wrapper that made it: "local" or "aws-kms"
    wrapper: str
    #: the key-encryption key: a local key id, or a KMS key ARN
    key_id: str
    #: base64 of the wrapped key (local: nonce || ciphertext || tag; KMS: its CiphertextBlob)
    blob: str

    def raw(self) -> bytes:
        return base64.b64decode(self.blob)

    @classmethod
    def of(cls, wrapper: str, key_id: str, raw: bytes) -> Wrapping:
        return cls(wrapper=wrapper, key_id=key_id, blob=base64.b64encode(raw).decode("ascii"))


def wrap_context(domain: Domain, backup_id: str, purpose: str) -> bytes:
    """Associated data binding a wrapped key (or a stream) to one domain, backup and use."""
    return f"regionvault/v1|{purpose}|{domain.value}|{backup_id}".encode()


def manifest_mac_key(domain_key: bytes | bytearray, domain: Domain) -> bytes:
    """The HMAC key for manifests of ``domain``, derived from one of its local keys.

    HKDF-SHA256, no salt (the input is already a uniformly random 256-bit key), ``info`` =
    ``b"regionvault manifest mac v1|<domain>"``, 32 bytes.
    """
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=MANIFEST_MAC_LABEL + b"|" + domain.value.encode("ascii"))
    return hkdf.derive(bytes(domain_key))


def new_data_key() -> bytearray:
    return bytearray(os.urandom(KEY_BYTES))


def zeroise(key: bytearray | None) -> None:
    """Overwrite key material in place (what Python allows: a bytearray, not bytes)."""
    if key is not None:
        key[:] = bytes(len(key))


def generate_domain_key() -> str:
    """A new local key, base64, in the form the keyring reads."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


# --- the seam --------------------------------------------------------------------------------


class KeyWrapper(Protocol):
    """One kind of key-encryption key of one domain (local keys, an AWS KMS key, ...).

    Contract:
    - ``wrap`` uses the wrapper's current key and records its id in the result.
    - ``unwrap`` returns the data key as a fresh ``bytearray`` (the caller zeroises it), or
      raises ``WrongKeyError`` if the named key is not held or does not open the blob under
      ``context`` (never garbage), or ``KeyServiceUnavailable`` if the key's service cannot
      be reached (worth another try, or another wrapping).
    - ``holds(key_id)``: whether the wrapper has that key (it may still fail to reach it).
    - Key material never appears in an exception, a log line or a repr.
    """

    name: str
    current_key_id: str

    def key_ids(self) -> tuple[str, ...]: ...

    def holds(self, key_id: str) -> bool: ...

    def wrap(self, data_key: bytes | bytearray, context: WrapContext) -> Wrapping: ...

    def unwrap(self, wrapping: Wrapping, context: WrapContext) -> bytearray: ...


class LocalWrapper:
    """Local 256-bit keys of one domain, held in memory."""

    name = "local"

    def __init__(self, domain: Domain, keys: dict[str, bytearray], current: str) -> None:
        if current not in keys:
            raise ConfigError(f"the current local key {current!r} of domain {domain.value!r} "
                              "is not among its keys")
        self.domain = domain
        self._keys = keys
        self.current_key_id = current

    def __repr__(self) -> str:  # never show key bytes
        return f"LocalWrapper(domain={self.domain.value!r}, key_ids={sorted(self._keys)})"

    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def holds(self, key_id: str) -> bool:
        return key_id in self._keys

    def key(self, key_id: str) -> bytearray:
        key = self._keys.get(key_id)
        if key is None:
            held = ", ".join(sorted(self._keys))
            raise WrongKeyError(
                f"domain {self.domain.value!r} does not hold key {key_id!r} "
                f"(holds: {held}); it was retired or belongs to another domain, or else add "
                "it back (previous_keys for static keys, or the keyring file)")
        return key

    def wrap(self, data_key: bytes | bytearray, context: WrapContext) -> Wrapping:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(self._keys[self.current_key_id]).encrypt(nonce, bytes(data_key),
                                                                context.aad())
        return Wrapping.of(self.name, self.current_key_id, nonce + sealed)

    def unwrap(self, wrapping: Wrapping, context: WrapContext) -> bytearray:
        key = self.key(wrapping.key_id)
        blob = wrapping.raw()
        try:
            return bytearray(AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:],
                                                 context.aad()))
        except InvalidTag:
            raise WrongKeyError(
                f"key {wrapping.key_id!r} of domain {self.domain.value!r} cannot open this "
                "data key: the key is wrong or the backup belongs to another domain") from None

    def wipe(self) -> None:
        for key in self._keys.values():
            zeroise(key)


class Keyring:
    """Every key-encryption key of one domain: wraps each data key with all of its wrappers,
    opens with whichever works, and signs and checks manifests with the local keys."""

    def __init__(self, domain: Domain, wrappers: Sequence[KeyWrapper], local: LocalWrapper,
                 retired: Iterable[str] = ()) -> None:
        if local not in wrappers:
            raise ConfigError(f"the keyring of domain {domain.value!r} needs its local keys")
        self.domain = domain
        self.wrappers = tuple(wrappers)
        self.local = local
        #: ids of keys this keyring knew and retired (``check`` names them as such)
        self.retired = frozenset(retired)

    @classmethod
    def local_only(cls, domain: Domain, keys: dict[str, bytes | bytearray],
                   current: str) -> Keyring:
        """A keyring of local keys only (the static configuration; tests)."""
        # a bytearray is taken as it is, so that wiping the keyring wipes the caller's copy
        held = {k: v if isinstance(v, bytearray) else bytearray(v) for k, v in keys.items()}
        local = LocalWrapper(domain, held, current)
        return cls(domain, (local,), local)

    def __repr__(self) -> str:
        return f"Keyring(domain={self.domain.value!r}, wrappers={list(self.wrappers)})"

    # -- which keys

    def key_ids(self) -> tuple[str, ...]:
        return tuple(k for w in self.wrappers for k in w.key_ids())

    def holds(self, key_id: str) -> bool:
        return any(w.holds(key_id) for w in self.wrappers)

    def current_ids(self) -> dict[str, str]:
        """wrapper name -> its current key id."""
        return {w.name: w.current_key_id for w in self.wrappers}

    def is_current(self, wrappings: Sequence[Wrapping]) -> bool:
        """Whether ``wrappings`` are exactly one per wrapper, each under its current key."""
        wanted = sorted(self.current_ids().items())
        return sorted((w.wrapper, w.key_id) for w in wrappings) == wanted

    # -- data keys

    def wrap(self, data_key: bytes | bytearray, context: WrapContext) -> tuple[Wrapping, ...]:
        """One wrapping per wrapper, each under its current key."""
        return tuple(w.wrap(data_key, context) for w in self.wrappers)

    def unwrap(self, wrappings: Sequence[Wrapping], context: WrapContext) -> bytearray:
        """The data key from the first wrapping a wrapper opens, in the keyring's order.

        A wrapper whose service is away (``KeyServiceUnavailable``) or that does not hold the
        key is passed over for the next wrapping; only when none opens is an error raised,
        naming why each failed. If every failure was a service being away, that is the
        error raised (worth another try)."""
        if not wrappings:
            raise WrongKeyError(f"no wrapping of this data key is left (domain "
                                f"{self.domain.value!r}): nothing can open it")
        failures: list[str] = []
        away = True
        for wrapper in self.wrappers:
            for wrapping in (w for w in wrappings if w.wrapper == wrapper.name):
                try:
                    return wrapper.unwrap(wrapping, context)
                except KeyServiceUnavailable as exc:
                    failures.append(f"{wrapping.wrapper}: {exc}")
                except WrongKeyError as exc:
                    away = False
                    failures.append(f"{wrapping.wrapper}: {exc}")
        unknown = sorted({w.wrapper for w in wrappings} - {w.name for w in self.wrappers})
        if unknown:
            away = False
            failures.append(f"wrapper(s) {', '.join(unknown)} not configured in domain "
                            f"{self.domain.value!r}")
        message = "no wrapping of this data key could be opened: " + "; ".join(failures)
        if away:
            raise KeyServiceUnavailable(message)
        raise WrongKeyError(message)

    def open_all(self, wrappings: Sequence[Wrapping], context: WrapContext) -> bytearray:
        """The data key, after checking that EVERY wrapping opens to the same key (the seal
        and rewrap verify the escrow before relying on it). Raises ``WrongKeyError`` naming
        the wrapping that does not."""
        if not wrappings:
            raise WrongKeyError("no wrapping to open")
        keys = [self._wrapper(w).unwrap(w, context) for w in wrappings]
        first = keys[0]
        try:
            for wrapping, other in zip(wrappings[1:], keys[1:], strict=True):
                if not hmac.compare_digest(first, other):  # no bytes copy of either key
                    raise WrongKeyError(
                        f"the {wrapping.wrapper} wrapping under key {wrapping.key_id!r} opens "
                        "to another data key than the first wrapping")
        finally:
            for other in keys[1:]:
                zeroise(other)
        return first

    def _wrapper(self, wrapping: Wrapping) -> KeyWrapper:
        for wrapper in self.wrappers:
            if wrapper.name == wrapping.wrapper:
                return wrapper
        raise WrongKeyError(f"wrapper {wrapping.wrapper!r} is not configured in domain "
                            f"{self.domain.value!r}")

    # -- manifests

    def manifest_mac(self, data: bytes, key_id: str | None = None) -> tuple[str, bytes]:
        key_id = self.local.current_key_id if key_id is None else key_id
        mac_key = manifest_mac_key(self.local.key(key_id), self.domain)
        return key_id, hmac.new(mac_key, data, hashlib.sha256).digest()

    def verify_manifest_mac(self, data: bytes, key_id: str, mac: bytes) -> bool:
        _, expected = self.manifest_mac(data, key_id)
        return hmac.compare_digest(expected, mac)

    def wipe(self) -> None:
        self.local.wipe()


# --- the keyring file ------------------------------------------------------------------------


class KeyEntry(BaseModel):
    """One key-encryption key in a keyring file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,255}$")
    wrapper: WrapperName
    created_at: datetime
    current: bool = False
    #: local keys only: the 32 bytes, base64
    material: str | None = Field(default=None, repr=False)

    @field_validator("material")
    @classmethod
    def _key_size(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                raw = base64.b64decode(value, validate=True)
            except binascii.Error:
                raw = b""
            if len(raw) != KEY_BYTES:
                raise ValueError(f"material must be {KEY_BYTES} bytes in base64")
        return value


class RetiredKey(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    wrapper: WrapperName
    retired_at: datetime


class KeyringDocument(BaseModel):
    """The keyring file of one domain (JSON, mode 0600, written only by ``regionvault keys``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["regionvault-keyring/1"] = KEYRING_FORMAT
    domain: Domain
    keys: tuple[KeyEntry, ...]
    retired: tuple[RetiredKey, ...] = ()

    def current(self, wrapper: str) -> KeyEntry | None:
        return next((k for k in self.keys if k.wrapper == wrapper and k.current), None)

    def problems(self, wrappers: Sequence[str]) -> list[str]:
        """What makes this document unusable for a domain using ``wrappers``."""
        found: list[str] = []
        ids = [k.id for k in self.keys] + [r.id for r in self.retired]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            found.append(f"key ids must be unique, repeated: {', '.join(repeated)}")
        for key in self.keys:
            if (key.wrapper == "local") != (key.material is not None):
                found.append(f"key {key.id!r}: a local key has material, a KMS key has none")
        for wrapper in ("local", "aws-kms"):
            current = [k.id for k in self.keys if k.wrapper == wrapper and k.current]
            if len(current) > 1:
                found.append(f"{wrapper} has more than one current key: {', '.join(current)}")
            if wrapper in wrappers and not current:
                found.append(f"the domain uses wrapper {wrapper!r} but no {wrapper} key is "
                             "current (run 'regionvault keys rotate')")
        return found

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode() + b"\n"


def read_keyring_document(path: Path, domain: Domain,
                          wrappers: Sequence[str] = ("local",)) -> KeyringDocument:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise SecretError(
            f"the keyring file {path} of domain {domain.value!r} does not exist; create it "
            f"with 'regionvault keys init --domain {domain.value}'") from None
    except OSError as exc:
        raise SecretError(f"the keyring file {path} cannot be read: {exc.strerror}") from None
    try:
        doc = KeyringDocument.model_validate_json(text)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise SecretError(f"the keyring file {path} is invalid: {where}: "
                          f"{str(err['msg']).removeprefix('Value error, ')}") from None
    if doc.domain is not domain:
        raise SecretError(f"the keyring file {path} belongs to domain {doc.domain.value!r}, "
                          f"not {domain.value!r}")
    problems = doc.problems(wrappers)
    if problems:
        raise SecretError(f"the keyring file {path} is invalid: {'; '.join(problems)}")
    return doc


def write_keyring_document(path: Path, doc: KeyringDocument) -> None:
    """Replace the keyring file atomically (a reader sees the old file or the new one, whole;
    a crash leaves one of them), owner-readable only."""
    problems = doc.problems(())
    if problems:
        raise ConfigError(f"refusing to write keyring {path}: {'; '.join(problems)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(doc.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def keyring_lock(path: Path) -> Iterator[None]:
    """Serialise ``regionvault keys`` commands on one keyring file (two rotations racing
    would otherwise both read the old file and one would lose its key)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _material(entry: KeyEntry) -> bytearray:
    assert entry.material is not None
    return bytearray(base64.b64decode(entry.material))


def keyring_from_document(doc: KeyringDocument, wrappers: Sequence[str],
                          kms: Callable[[str, tuple[str, ...]], KeyWrapper] | None) -> Keyring:
    """The keyring a document describes, wrapping with ``wrappers`` (in that order).

    ``kms(current, held)`` builds the AWS KMS wrapper when the domain uses ``aws-kms``. KMS
    keys of a domain that stopped using KMS are not loaded: every backup also carries a
    local wrapping, and ``keys rewrap`` drops the KMS ones."""
    local_keys = {k.id: _material(k) for k in doc.keys if k.wrapper == "local"}
    current_local = doc.current("local")
    if current_local is None:
        raise SecretError(f"the keyring of domain {doc.domain.value!r} has no current local key")
    local = LocalWrapper(doc.domain, local_keys, current_local.id)
    built: list[KeyWrapper] = []
    kms_ids = tuple(k.id for k in doc.keys if k.wrapper == "aws-kms")
    for name in wrappers:
        if name == "local":
            built.append(local)
        elif name == "aws-kms":
            entry = doc.current("aws-kms")
            assert entry is not None  # problems() checked it
            if kms is None:
                raise ConfigError("the aws-kms wrapper needs a KMS client")
            built.append(kms(entry.id, kms_ids))
    return Keyring(doc.domain, built, local, retired=(r.id for r in doc.retired))


def _static_keyring(domain: Domain, refs: Sequence[KeyRef]) -> Keyring:
    return Keyring.local_only(domain, {ref.id: _decode_key(ref, domain) for ref in refs},
                              current=refs[0].id)


def _decode_key(ref: KeyRef, domain: Domain) -> bytearray:
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
    return bytearray(raw)


# --- where a worker gets its keyring ---------------------------------------------------------


class KeyringSource:
    """The current keyring of one domain: built on first use and, for a keyring file, built
    again whenever the file changes (checked with one ``stat`` per call), so that a rotation
    reaches running workers on their next task. The replaced keyring's local keys are wiped
    once no caller can still be using it (they are simply dropped; see ``wipe``)."""

    def __init__(self, config: Config, domain: Domain,
                 kms: Callable[[str, tuple[str, ...]], KeyWrapper] | None = None) -> None:
        """``kms(current, held)`` builds the AWS KMS wrapper of the domain (the composition
        root passes ``regionvault.kms``'s; the keyring does not import boto3)."""
        self._config = config
        self._domain = domain
        self._dcfg: DomainConfig = config.domain(domain)
        self._kms = kms
        self._lock = threading.Lock()
        self._keyring: Keyring | None = None
        self._stamp: tuple[int, int, int] | None = None

    def current(self) -> Keyring:
        keyring_cfg = self._dcfg.keyring
        if keyring_cfg is None:
            with self._lock:
                if self._keyring is None:
                    self._keyring = _static_keyring(self._domain, self._dcfg.all_keys())
                return self._keyring
        try:
            st = keyring_cfg.file.stat()
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        with self._lock:
            if self._keyring is None or stamp != self._stamp or stamp is None:
                doc = read_keyring_document(keyring_cfg.file, self._domain,
                                            keyring_cfg.wrappers)
                # a replaced keyring's key bytes are not wiped here: a step on another thread
                # may still hold it for the rest of its task; they go with the object
                self._keyring = keyring_from_document(doc, keyring_cfg.wrappers, self._kms)
                self._stamp = stamp
            return self._keyring


def keyring_document_for(config: Config, domain: Domain) -> tuple[Path, KeyringDocument | None]:
    """(keyring file, its document or None if it does not exist yet) of a managed domain."""
    dcfg = config.domain(domain)
    if dcfg.keyring is None:
        raise ConfigError(
            f"domain {domain.value!r} uses static keys (key/previous_keys in the "
            "configuration), which change only with the configuration and a restart; to "
            "rotate live, give it a managed keyring: keyring: {file: PATH} and run "
            f"'regionvault keys init --domain {domain.value}'")
    path = dcfg.keyring.file
    if not path.exists():
        return path, None
    return path, read_keyring_document(path, domain, ())
