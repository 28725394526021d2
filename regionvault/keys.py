"""Key operations on a managed keyring: init, rotate, rewrap, retire, and what is in use.

- ``init`` writes a domain's first keyring file (a local key, and a KMS key in the domain's
  region when the domain uses ``aws-kms``), optionally importing the static keys it replaces.
- ``rotate`` makes a new key current for each wrapper. Workers re-read the file on their next
  task: no restart. Older keys stay, so every backup still opens.
- ``rewrap`` moves every manifest, in both stores, onto the current keys: it opens the data key
  with any wrapping that works, wraps it again with every current key, checks that each new
  wrapping opens to the same key, re-signs and rewrites the manifest. The data objects are not
  touched. Each manifest copy is rewritten whole (one PUT: atomic per manifest), and a
  manifest already on the current keys is passed over, so a rewrap killed half-way is simply
  run again. It ends by reading every manifest back (``remaining`` counts those still not on
  the current keys).
- ``retire`` removes a key from the keyring, refusing while any manifest in either store still
  names it (run ``rewrap`` first).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from regionvault.config import Config
from regionvault.context import DomainContext, utc_now
from regionvault.domains import Domain
from regionvault.errors import (
    ConfigError,
    KeyInUse,
    KeyServiceUnavailable,
    StoreError,
    WrongKeyError,
)
from regionvault.keyring import (
    KeyEntry,
    KeyringDocument,
    RetiredKey,
    WrapContext,
    generate_domain_key,
    keyring_document_for,
    keyring_lock,
    write_keyring_document,
    zeroise,
)
from regionvault.manifest import BackupRef, Manifest, Step, backup_started, manifest_key
from regionvault.manifest_store import (
    UntrustedManifest,
    data_key_context,
    scan_manifests,
    write_manifest,
)
from regionvault.stores.base import ObjectStore

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _local_key_id(domain: Domain, now: datetime) -> str:
    return f"{domain.value}-{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


def _new_key(config: Config, domain: Domain, wrapper: str, now: datetime) -> KeyEntry:
    if wrapper == "local":
        return KeyEntry(id=_local_key_id(domain, now), wrapper="local", created_at=now,
                        current=True, material=generate_domain_key())
    if wrapper == "aws-kms":
        from regionvault.kms import create_kms_key

        return KeyEntry(id=create_kms_key(config, domain), wrapper="aws-kms", created_at=now,
                        current=True)
    raise ConfigError(f"unknown wrapper {wrapper!r} (wrappers: local, aws-kms)")


def _wrappers(config: Config, domain: Domain) -> tuple[str, ...]:
    keyring = config.domain(domain).keyring
    assert keyring is not None  # keyring_document_for refused a static domain
    return keyring.wrappers


# --- init and rotate -------------------------------------------------------------------------


def read_import(spec: str) -> KeyEntry:
    """``ID=PATH``: a static key file (32 bytes, base64) to keep as a previous local key."""
    key_id, sep, path = spec.partition("=")
    if not sep or not key_id or not path:
        raise ConfigError(f"--import takes ID=PATH (a key id and its key file), got {spec!r}")
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"key file {path} cannot be read: {exc.strerror}") from None
    return KeyEntry(id=key_id, wrapper="local", created_at=utc_now(), material=text)


def init(config: Config, domain: Domain, *, imports: Sequence[KeyEntry] = ()) -> KeyringDocument:
    """Write the first keyring file of ``domain``; refuses to overwrite one."""
    path, existing = keyring_document_for(config, domain)
    with keyring_lock(path):
        if existing is not None or path.exists():
            raise ConfigError(f"the keyring file {path} of domain {domain.value!r} exists "
                              "already; use 'regionvault keys rotate'")
        now = utc_now()
        fresh = tuple(_new_key(config, domain, w, now) for w in _wrappers(config, domain))
        doc = KeyringDocument(domain=domain, keys=(*imports, *fresh))
        write_keyring_document(path, doc)
    return doc


def rotate(config: Config, domain: Domain,
           only: Sequence[str] | None = None) -> dict[str, str]:
    """A new current key for each of the domain's wrappers (or ``only`` these); wrapper ->
    new key id. The previous keys stay in the keyring until retired."""
    path, _ = keyring_document_for(config, domain)
    wrappers = _wrappers(config, domain)
    chosen = tuple(only) if only else wrappers
    unknown = sorted(set(chosen) - set(wrappers))
    if unknown:
        raise ConfigError(f"domain {domain.value!r} does not use wrapper(s) "
                          f"{', '.join(unknown)} (it uses {', '.join(wrappers)})")
    with keyring_lock(path):
        _, doc = keyring_document_for(config, domain)
        if doc is None:
            raise ConfigError(f"domain {domain.value!r} has no keyring file yet: run "
                              f"'regionvault keys init --domain {domain.value}'")
        now = utc_now()
        fresh = {w: _new_key(config, domain, w, now) for w in chosen}
        kept = tuple(k.model_copy(update={"current": False}) if k.wrapper in fresh else k
                     for k in doc.keys)
        write_keyring_document(path, doc.model_copy(
            update={"keys": (*kept, *fresh.values())}))
    return {w: k.id for w, k in fresh.items()}


# --- what manifests need ---------------------------------------------------------------------


def _stores(ctx: DomainContext) -> tuple[ObjectStore, ...]:
    return tuple(ctx.stores())


def _manifests(ctx: DomainContext, store: ObjectStore,
               ) -> Iterator[tuple[str, Manifest | UntrustedManifest]]:
    """(manifest key, manifest) of every manifest of the domain in ``store``."""
    for found in scan_manifests(ctx, store, f"{ctx.domain.value}/", allow_legacy=True):
        if isinstance(found, UntrustedManifest):
            yield found.key, found
        else:
            yield manifest_key(found.domain, found.data_class, found.source,
                               found.backup_id), found


def needs_rewrap(ctx: DomainContext, manifest: Manifest, from_key: str | None) -> bool:
    """Whether a manifest is not yet on the domain's current keys (or, with ``from_key``,
    still names that key)."""
    if from_key is not None:
        return from_key in manifest.key_ids()
    keyring = ctx.keyring
    signed_current = manifest.mac is not None and \
        manifest.mac.key_id == keyring.local.current_key_id
    if manifest.erased:
        return not signed_current
    return not (keyring.is_current(manifest.wrappings) and signed_current)


def _in_flight(ctx: DomainContext, manifest: Manifest) -> bool:
    """A chain may still write this manifest (not verified, started recently): rewriting it
    now could lose the chain's own update, so it is left for a later run."""
    if manifest.erased or Step.VERIFY in manifest.steps:
        return False
    started = backup_started(manifest.backup_id) or manifest.created_at
    window = timedelta(seconds=ctx.config.reconcile.orphan_after_seconds)
    return ctx.clock() - started < window


@dataclass
class RewrapReport:
    rewrapped: int = 0
    already: int = 0
    #: "store key: why" of manifests left alone (in flight, legacy, untrusted, failed)
    left: list[str] = field(default_factory=list)
    #: read back at the end: manifests still not on the current keys (0 = done)
    remaining: int = 0
    checked: int = 0


def rewrap(ctx: DomainContext, *, from_key: str | None = None,
           per_second: float | None = None, say: Say = _quiet) -> RewrapReport:
    """Move every manifest of the domain, in both stores, onto the current keys."""
    report = RewrapReport()
    keyring = ctx.keyring
    if from_key is not None and from_key in keyring.current_ids().values():
        raise ConfigError(f"key {from_key!r} is current in domain {ctx.domain.value!r}: "
                          "rotate first ('regionvault keys rotate'), then rewrap from it")
    pause = 1.0 / per_second if per_second else 0.0
    for store in _stores(ctx):
        for mkey, found in _manifests(ctx, store):
            where = f"{store.name} {mkey}"
            if isinstance(found, UntrustedManifest):
                report.left.append(f"{where}: cannot be trusted ({found.error})")
                continue
            if not needs_rewrap(ctx, found, from_key):
                report.already += 1
                continue
            if found.legacy:
                report.left.append(f"{where}: a legacy version-1 manifest is never re-signed; "
                                   f"it expires on {found.expires_at:%Y-%m-%d}")
                continue
            if _in_flight(ctx, found):
                report.left.append(f"{where}: its chain may still be running; run again later")
                continue
            try:
                rewrapped = _rewrapped(ctx, found)
                write_manifest(ctx, store, mkey, rewrapped)
            except (WrongKeyError, KeyServiceUnavailable, StoreError) as exc:
                report.left.append(f"{where}: {exc}")
                continue
            report.rewrapped += 1
            say(f"rewrapped {where} ({report.rewrapped})")
            if pause:
                time.sleep(pause)
    report.remaining, report.checked = _verify_all(ctx, from_key)
    return report


def _rewrapped(ctx: DomainContext, manifest: Manifest) -> Manifest:
    """``manifest`` with its data key wrapped by the current keys, checked before it is used:
    every new wrapping must open to the key the old ones held."""
    keyring = ctx.keyring
    if manifest.erased:
        return manifest  # nothing to wrap: only the MAC moves to the current key
    context = data_key_context_of(manifest)
    data_key = keyring.unwrap(manifest.wrappings, context)
    try:
        wrappings = keyring.wrap(data_key, context)
        again = keyring.open_all(wrappings, context)
        try:
            if not hmac.compare_digest(again, data_key):  # no bytes copy of either key
                raise WrongKeyError(f"the new wrappings of backup {manifest.backup_id} open to "
                                    "another key; nothing was written")
        finally:
            zeroise(again)
    finally:
        zeroise(data_key)
    return manifest.model_copy(update={"wrappings": wrappings})


def data_key_context_of(manifest: Manifest) -> WrapContext:
    return data_key_context(BackupRef.parse(manifest.backup_id))


def _verify_all(ctx: DomainContext, from_key: str | None) -> tuple[int, int]:
    """(manifests still needing a rewrap, manifests checked), reading both stores again; a
    manifest on the current keys must have every wrapping open to one key."""
    remaining = checked = 0
    for store in _stores(ctx):
        for _, found in _manifests(ctx, store):
            if isinstance(found, UntrustedManifest) or found.legacy:
                continue
            checked += 1
            if needs_rewrap(ctx, found, from_key):
                remaining += 1
            elif not found.erased and from_key is None:
                zeroise(ctx.keyring.open_all(found.wrappings, data_key_context_of(found)))
    return remaining, checked


# --- retire ----------------------------------------------------------------------------------


def users_of(ctx: DomainContext, key_id: str) -> list[str]:
    """"store backup-id" of every manifest copy that names ``key_id`` (a wrapping or its MAC)."""
    users: list[str] = []
    for store in _stores(ctx):
        for _, found in _manifests(ctx, store):
            if not isinstance(found, UntrustedManifest) and key_id in found.key_ids():
                users.append(f"{store.name} {found.backup_id}")
    return users


def retire(ctx: DomainContext, key_id: str, *, kms_deletion_days: int = 7) -> str:
    """Remove ``key_id`` from the keyring once no manifest needs it; what was done."""
    config, domain = ctx.config, ctx.domain
    path, _ = keyring_document_for(config, domain)
    with keyring_lock(path):
        _, doc = keyring_document_for(config, domain)
        if doc is None:
            raise ConfigError(f"domain {domain.value!r} has no keyring file")
        entry = next((k for k in doc.keys if k.id == key_id), None)
        if entry is None:
            held = ", ".join(k.id for k in doc.keys)
            raise ConfigError(f"domain {domain.value!r} holds no key {key_id!r} (holds: {held})")
        if entry.current:
            raise KeyInUse(f"key {key_id!r} is the current {entry.wrapper} key of domain "
                           f"{domain.value!r}: rotate first, then rewrap, then retire it")
        users = users_of(ctx, key_id)
        if users:
            sample = ", ".join(users[:3]) + (" ..." if len(users) > 3 else "")
            raise KeyInUse(
                f"key {key_id!r} is still needed by {len(users)} manifest copies ({sample}); "
                f"run 'regionvault keys rewrap --domain {domain.value} --from-key {key_id}' "
                "first")
        done = f"local key {key_id} removed from the keyring"
        if entry.wrapper == "aws-kms":
            # scheduled before the keyring forgets the key: if KMS is away, nothing changes
            # and the retire can simply be run again (KMS can cancel a scheduled deletion)
            from regionvault.kms import schedule_kms_key_deletion

            when = schedule_kms_key_deletion(config, domain, key_id, kms_deletion_days)
            done = f"KMS key {key_id} removed from the keyring; " + (
                f"KMS deletes it on {when:%Y-%m-%d}" if when is not None
                else "KMS no longer knows it")
        kept = tuple(k for k in doc.keys if k.id != key_id)
        retired = RetiredKey(id=key_id, wrapper=entry.wrapper, retired_at=utc_now())
        write_keyring_document(path, doc.model_copy(
            update={"keys": kept, "retired": (*doc.retired, retired)}))
    return done


# --- what is in use --------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyUsage:
    key_id: str
    #: the keyring holds it (a KMS key may still be unreachable; see ``kms_state``)
    held: bool
    #: it was retired from this keyring (so a manifest naming it cannot be opened with it)
    retired: bool
    #: manifest copies naming it, by store
    copies: dict[str, int]


def key_usage(ctx: DomainContext) -> list[KeyUsage]:
    """Every key id the domain's manifests (both stores) name, and whether it is held."""
    keyring = ctx.keyring
    counts: dict[str, dict[str, int]] = {}
    for store in _stores(ctx):
        for _, found in _manifests(ctx, store):
            if isinstance(found, UntrustedManifest):
                continue
            for key_id in found.key_ids():
                per_store = counts.setdefault(key_id, {})
                per_store[store.name] = per_store.get(store.name, 0) + 1
    return [KeyUsage(key_id=k, held=keyring.holds(k), retired=k in keyring.retired,
                     copies=counts[k]) for k in sorted(counts)]
