"""Erasure of one backup (crypto-shredding): unreadable everywhere at once.

A backup's bytes may sit where they cannot be deleted yet (an Object-Locked bucket, a copy
being replicated), but they are ciphertext under the backup's own data key, and that key
exists only wrapped, in the backup's manifests. Erasure therefore:

1. rewrites every manifest copy, in both clouds, without any wrapping and with an erasure
   record (id, time, who, reason; no data), signed like any manifest;
2. removes the older versions of those manifests where the bucket keeps versions (an older
   version still holds the wrappings);
3. deletes the data objects where the store allows it; a locked object stays until its lock
   ends (the backup's expiry), unreadable, and expiry removes it then.

After step 1 no key the system holds opens the backup: the domain keys only ever wrapped the
data key, and every wrapping is gone. A later restore fails with "erased on DATE".
Erasure is idempotent: run again, it keeps the first record and finishes what was left.
"""

from __future__ import annotations

from dataclasses import dataclass

from regionvault.context import DomainContext
from regionvault.errors import BackupBusy, ConfigError, NotFound, ObjectLocked
from regionvault.manifest import Erasure, Manifest, Step
from regionvault.manifest_store import keys_of, read_manifest, resolve, write_manifest


@dataclass(frozen=True)
class ErasureOutcome:
    record: Erasure
    #: store -> what happened to its manifest copy and its object
    manifests: dict[str, str]
    objects: dict[str, str]


def erase(ctx: DomainContext, backup_id: str, *, reason: str, by: str) -> ErasureOutcome:
    """Crypto-shred ``backup_id`` in both stores (see the module docstring)."""
    reason = reason.strip()
    if not reason:
        raise ConfigError("an erasure needs a reason (--reason TEXT): it is kept in the record")
    ref, src = resolve(ctx, backup_id)
    okey, mkey = keys_of(ref, src)
    copies: dict[str, Manifest] = {}
    for store in ctx.stores():
        manifest = read_manifest(ctx, store, mkey)
        if manifest is not None:
            copies[store.name] = manifest
    if not copies:
        raise NotFound(f"backup {backup_id} has no manifest in s3 or gcs of domain "
                       f"{ctx.domain.value!r}: nothing to erase")
    record = next((m.erasure for m in copies.values() if m.erasure is not None), None)
    if record is None:
        unfinished = [m for m in copies.values() if Step.VERIFY not in m.steps]
        if len(copies) < 2 or unfinished:
            raise BackupBusy(
                f"backup {backup_id} is not verified in both stores yet: its chain may still "
                "be writing it; cancel it ('regionvault cancel') or wait for it to end, then "
                "erase")
        record = Erasure(erased_at=ctx.clock(), by=by, reason=reason)
    manifests: dict[str, str] = {}
    for name, manifest in copies.items():
        store = ctx.store(name)
        erased = manifest.model_copy(update={"wrappings": (), "erasure": record})
        write_manifest(ctx, store, mkey, erased)
        dropped = store.delete_noncurrent_versions(mkey)
        manifests[name] = "erasure record written" + (
            f", {dropped} older version(s) removed" if dropped else "")
    objects: dict[str, str] = {}
    for store in ctx.stores():
        try:
            store.delete(okey)
            objects[store.name] = "deleted"
        except ObjectLocked as exc:
            objects[store.name] = f"kept, unreadable: {exc}"
    return ErasureOutcome(record=record, manifests=manifests, objects=objects)
