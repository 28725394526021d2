"""The expiry sweep of a domain, on beat (see ``regionvault.expiry``)."""

from __future__ import annotations

from typing import Any

from regionvault.expiry import (
    Quarantined,
    RedisSweepLedger,
    SweepIncomplete,
    record_sweep,
    sweep_domain,
)
from workers.app import app
from workers.guard import DomainTask
from workers.journal import journal
from workers.runtime import context_for


# Acknowledged early and never retried: the next sweep is the retry (the effective pii cutoff
# leaves room for one sweep interval), and two sweeps at once do no harm (deletes are
# idempotent). A sweep that could not finish a store fails, so Flower shows it; the metrics
# are recorded first, and the ledger (Redis) last: if it cannot be written the task fails too,
# and compliance reports see the sweep as missing (never the reverse).
@app.task(name="regionvault.expire_domain", base=DomainTask, bind=True, acks_late=False)
def expire_domain(self: Any, *, domain: str) -> dict[str, object]:
    ctx = context_for(domain)
    notes = journal()

    def note(item: Quarantined) -> None:
        # noted on the backup (Flower's backups page); a key outside the layout names no
        # backup: the ledger's summary and the worker's log name it
        if item.backup_id is not None:
            notes.note(item.backup_id, f"expiry quarantined the {item.store} copy "
                                       f"{ctx.url(item.store, item.key)}: {item.reason}; it is "
                                       "removed by the pii rule, aged by its store time")

    report = sweep_domain(ctx, ctx.clock())
    from workers.metrics import record_expiry, record_last_sweeps

    record_expiry(report)
    ledger = RedisSweepLedger(notes.client)
    record_sweep(ledger, report, on_new_quarantine=note)
    record_last_sweeps(domain, ledger.last_sweeps(domain))
    if not report.complete:
        raise SweepIncomplete(report.summary())
    return report.as_dict()
