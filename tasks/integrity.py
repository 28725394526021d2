"""The integrity sample of a domain, on beat (see ``regionvault.integrity``)."""

from __future__ import annotations

import logging
from typing import Any

import redis

from regionvault.integrity import RedisReadLedger, SampleFailed, run_sample
from workers.app import app
from workers.guard import DomainTask
from workers.journal import journal
from workers.runtime import context_for

log = logging.getLogger("regionvault.integrity")


# Acknowledged early and never retried: the next scheduled sample is the retry (whatever this
# one did not read is due sooner then), and two samples at once do no harm.
@app.task(name="regionvault.integrity_sample", base=DomainTask, bind=True, acks_late=False)
def integrity_sample(self: Any, *, domain: str) -> dict[str, object]:
    ctx = context_for(domain)
    notes = journal()
    report = run_sample(ctx, RedisReadLedger(notes.client), ctx.clock())
    for mismatch in report.mismatches:
        try:
            notes.note(mismatch.backup_id, f"integrity sample: the {mismatch.store} copy does "
                                           f"not match its manifest: {mismatch.problem}")
        except redis.RedisError as exc:  # the journal is for people; the failure still shows
            log.warning("journal note for %s not written: %s", mismatch.backup_id, exc)
    from workers.metrics import record_integrity

    record_integrity(report)
    if report.mismatches:
        raise SampleFailed(report.summary())
    return report.as_dict()
