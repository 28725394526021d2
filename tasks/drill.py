"""The scheduled restore drill of a domain (see ``regionvault.drill``)."""

from __future__ import annotations

from typing import Any

from regionvault.drill import DrillFailed, run_drill
from workers.app import app
from workers.guard import DomainTask
from workers.runtime import context_for


# A drill that fails is reported and raised, so the task fails loudly; it is not retried
# automatically (the next scheduled drill, or an operator, runs it again).
@app.task(name="regionvault.restore_drill", base=DomainTask, bind=True, acks_late=True)
def restore_drill(self: Any, *, domain: str, source: str | None = None) -> dict[str, object]:
    report = run_drill(context_for(domain), [source] if source else None)
    if not report.passed:
        raise DrillFailed(report.summary())
    return {"drill_id": report.drill_id, "domain": domain, "passed": True,
            "report": report.key, "sources": [s.source for s in report.sources]}
