"""The scheduled entry point: start one backup chain per source of a domain, once per slot.

A scheduled backup's id is derived from (domain, source, schedule slot), and starting it is
an atomic claim of that id in the journal. So a second beat, a beat restarted within the same
minute, or this task delivered twice starts nothing new; and because it is acknowledged late,
a fan-out whose pool process died half-way is delivered again and completes the sources it
skipped; one whose whole worker died is sent again by the reconciler.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from regionvault.schedule import slot_backup_id, slot_of
from workers.app import app
from workers.canvas import start_run
from workers.guard import DomainTask
from workers.journal import journal
from workers.runtime import context_for


@app.task(name="regionvault.backup_domain", base=DomainTask, bind=True, acks_late=True,
          reject_on_worker_lost=True)
def backup_domain(self: Any, *, domain: str, slot: str | None = None) -> list[dict[str, str]]:
    ctx = context_for(domain)
    when = datetime.fromisoformat(slot) if slot else slot_of(ctx.dcfg.schedule, ctx.clock())
    # marked first, cleared last: a fan-out whose worker died half-way is sent again by the
    # reconciler (the message itself would wait for the broker's visibility timeout)
    journal().fanout_started(domain, when.isoformat())
    started = []
    for source in ctx.dcfg.sources:
        backup_id = slot_backup_id(ctx.domain, source.name, when)
        run = start_run(domain, source.name, backup_id, mode="new",
                        note=f"scheduled (slot {when.isoformat()})")
        started.append({"backup_id": backup_id, "source": source.name, "task_id": run.task_id,
                        "started": "yes" if run.accepted else "already started"})
    journal().fanout_done(domain, when.isoformat())
    return started
