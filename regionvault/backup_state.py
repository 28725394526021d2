"""Where a backup really is, read from what it left: its spool files and its manifests.

The journal says what people and workers last reported; these facts say what exists. When
the two disagree (a step that finished while the broker was down, a journal wiped by a broker
restart, a spool lost with its disk) the facts win: every resumption, by the reconciler, by
``regionvault retry`` or by Flower's Retry, starts at ``next_step(facts)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from regionvault import spool as sp
from regionvault.context import DomainContext
from regionvault.errors import IntegrityError, StoreError
from regionvault.manifest import STEPS, Step, manifest_key


@dataclass(frozen=True)
class BackupFacts:
    """What exists of one backup, as found now."""

    backup_id: str
    #: the spool holds a complete dump (the object and its dump.json, not yet sealed)
    spool_dump: bool
    #: the spool holds the sealed backup and its draft manifest
    spool_backup: bool
    #: any file at all in the backup's spool directory
    spool_dir: bool
    #: the steps the primary (S3) manifest records; None when there is no manifest
    s3_steps: frozenset[Step] | None
    #: the S3 manifest could not be read (store down): the facts are incomplete
    s3_unknown: bool = False

    @property
    def verified(self) -> bool:
        return self.s3_steps is not None and Step.VERIFY in self.s3_steps

    @property
    def finished(self) -> bool:
        return self.s3_steps is not None and Step.EXPIRE in self.s3_steps


def next_step(facts: BackupFacts) -> Step | None:
    """The first step that still has to run, judged from the facts alone (None: all done).

    The stores outrank the spool: once S3 holds a manifest, the spool is no longer needed.
    A spool that lost the dump sends the backup back to ``dump``: a new snapshot under the
    same backup id (the manifest's ``created_at`` is that snapshot's time)."""
    if facts.s3_steps is not None:
        return next((s for s in STEPS if s not in facts.s3_steps), None)
    if facts.spool_backup:
        return Step.UPLOAD
    if facts.spool_dump:
        return Step.ENCRYPT
    return Step.DUMP


def gather_facts(ctx: DomainContext, backup_id: str, manifest_path: str | None = None
                 ) -> BackupFacts:
    """Look at the spool and the primary store's manifest of one backup (no data is read)."""
    from regionvault.manifest_store import read_manifest, resolve

    ref, src = resolve(ctx, backup_id)
    key = manifest_path or manifest_key(ref.domain, src.data_class, ref.source, backup_id)
    steps: frozenset[Step] | None = None
    unknown = False
    try:
        manifest = read_manifest(ctx, ctx.primary(src), key)
        if manifest is not None:
            steps = frozenset(manifest.steps)
    except (StoreError, IntegrityError):  # down, or a manifest that cannot be trusted
        unknown = True
    spool = ctx.spool
    directory = spool.dir_for(backup_id)
    return BackupFacts(
        backup_id=backup_id,
        spool_dump=spool.has_dump(backup_id),
        spool_backup=spool.exists(backup_id, sp.BACKUP_FILE)
        and spool.exists(backup_id, sp.MANIFEST_FILE),
        spool_dir=directory.exists() and any(directory.iterdir()),
        s3_steps=steps, s3_unknown=unknown)
