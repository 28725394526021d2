"""The reconciler of a domain, on beat (see ``regionvault.reconcile``)."""

from __future__ import annotations

from typing import Any

from regionvault.manifest import BackupRef, Step
from regionvault.reconcile import Reconciler
from workers.app import app
from workers.canvas import start_run
from workers.guard import DomainTask
from workers.journal import journal, leases
from workers.runtime import context_for


def _resume(backup_id: str, step: Step, *, expected_run: int, note: str) -> bool:
    ref = BackupRef.parse(backup_id)
    started = start_run(ref.domain.value, ref.source, backup_id, start_at=step, mode="resume",
                        expected_run=expected_run, note=note)
    return started.accepted


# Acknowledged early and never retried: the next tick is the retry, and two ticks running at
# once do no harm (every resumption is an atomic claim).
@app.task(name="regionvault.reconcile", base=DomainTask, bind=True, acks_late=False,
          ignore_result=True)
def reconcile(self: Any, *, domain: str) -> dict[str, object]:
    def fan_out(slot: str) -> None:
        from tasks.backup_domain import backup_domain

        backup_domain.apply_async(kwargs={"domain": domain, "slot": slot})

    report = Reconciler(context_for(domain), journal(), leases(), _resume,
                        fan_out=fan_out).tick()
    from workers.metrics import record_reconcile

    record_reconcile(report)
    return report.as_dict()
