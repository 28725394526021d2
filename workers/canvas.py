"""How a backup's steps are sent: one message at a time, each step handing over to the next.

There is no Celery ``chain`` here on purpose. A step records itself done in the journal and
only then sends the next step's message (``handoff``). If that send fails (broker outage at a
step boundary), the step stays done and the per-domain reconciler sends the next step again:
the message is the fast path, the reconcile loop is the guarantee.

Every message of a chain carries the backup's *run*: the number of the chain run that owns
the backup. Starting a run is an atomic claim in the journal (``Journal.claim``), so two
retries racing, a second beat for the same slot, or the reconciler and an operator at the
same instant start at most one run; a message of an older run is stale and exits without
doing anything. A step sent with run 0 (by hand, or by a test) runs on its own: it takes
the lease like any step but hands over to nothing.

Messages are sent by task name (``workers.names``), so this module, like the rest of
``workers``, needs none of the task modules: the step tasks, the reconciler, the CLI (through
``workers.dispatch``) and Flower's Retry all start runs here.
"""

from __future__ import annotations

from celery.canvas import Signature

from regionvault import tracing
from regionvault.dispatch import Started
from regionvault.domains import queue_name
from regionvault.journal import ClaimMode
from regionvault.manifest import STEPS, Step
from workers.names import step_task

__all__ = ["Started", "next_step", "send_step", "start_run", "step_signature"]


def step_signature(step: Step, backup_id: str, domain: str, source: str, *, run: int = 0,
                   deep_verify: bool = False) -> Signature:
    from workers.app import app_for

    kwargs: dict[str, object] = {"backup_id": backup_id, "domain": domain, "source": source,
                                 "run": run}
    if deep_verify:
        kwargs["deep"] = True
    # immutable (.si): a step reads its input from the spool and the stores, never from the
    # previous task's return value, so each can be re-run on its own with the same arguments
    # on the domain's own broker (a worker's own app; the CLI's client app for the domain)
    return app_for(domain).signature(step_task(step), kwargs=kwargs, immutable=True,
                                     queue=queue_name(domain))


def send_step(step: Step, backup_id: str, domain: str, source: str, *, run: int,
              deep_verify: bool = False, task_id: str | None = None,
              headers: dict[str, str] | None = None) -> str:
    """Send one step's message; its task id. ``headers``: extra message headers (the
    backup's ``traceparent``, see ``start_run``)."""
    options: dict[str, object] = {"task_id": task_id}
    if headers:
        options["headers"] = headers
    result = step_signature(step, backup_id, domain, source, run=run,
                            deep_verify=deep_verify).apply_async(**options)
    return str(result.id)


def next_step(step: Step) -> Step | None:
    index = STEPS.index(step)
    return STEPS[index + 1] if index + 1 < len(STEPS) else None


def start_run(domain: str, source: str, backup_id: str, *, start_at: Step = Step.DUMP,
              mode: ClaimMode = "new", expected_run: int = 0, deep_verify: bool = False,
              note: str = "", task_id: str | None = None) -> Started:
    """Claim the backup for a new run from ``start_at`` and send that step's message."""
    from workers.journal import journal as journal_of

    journal = journal_of(domain)
    claim = journal.claim(backup_id, start_at, mode=mode, expected_run=expected_run)
    if not claim.accepted:
        return Started(claim)
    # One trace per backup: a run continues the trace the backup's first traced step
    # started (kept in the journal, returned by the claim), whoever starts the run: the
    # command line (untraced: the header carries it), the reconciler, Flower's Retry. A
    # backup not traced yet starts a trace of its own, never a child of the sender's (a
    # fan-out would otherwise put every source of the domain in one trace).
    with tracing.sending_under(claim.trace) as headers:
        task_id = send_step(start_at, backup_id, domain, source, run=claim.run,
                            deep_verify=deep_verify, task_id=task_id, headers=headers)
    journal.handed_off(backup_id, start_at, task_id)
    if note:
        journal.note(backup_id, f"{note} (run {claim.run}, from step {start_at.value})")
    return Started(claim, task_id)
