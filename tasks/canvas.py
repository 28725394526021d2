"""The chain of one backup: six immutable signatures in the domain's queue."""

from __future__ import annotations

from celery import chain
from celery.canvas import Signature
from celery.result import AsyncResult

from regionvault.domains import queue_name
from regionvault.manifest import STEPS, Step


def step_signature(step: Step, backup_id: str, domain: str, source: str,
                   *, deep_verify: bool = False) -> Signature:
    from workers.app import app

    kwargs: dict[str, object] = {"backup_id": backup_id, "domain": domain, "source": source}
    if step is Step.VERIFY:
        kwargs["deep"] = deep_verify
    # immutable (.si): a step reads its input from the spool and the stores, never from the
    # previous task's return value, so each can be re-run on its own with the same arguments
    return app.signature(f"regionvault.{step.value}", kwargs=kwargs, immutable=True,
                         queue=queue_name(domain))


def backup_chain(domain: str, source: str, backup_id: str, *, deep_verify: bool = False,
                 start_at: Step = Step.DUMP) -> chain:
    steps = STEPS[STEPS.index(start_at):]
    return chain(*(step_signature(s, backup_id, domain, source, deep_verify=deep_verify)
                   for s in steps))


def enqueue_backup(domain: str, source: str, backup_id: str, *, deep_verify: bool = False,
                   start_at: Step = Step.DUMP, note: str = "") -> AsyncResult:
    """Send a backup's chain (or its rest, from ``start_at``) and journal its task ids."""
    from workers.journal import journal

    result = backup_chain(domain, source, backup_id, deep_verify=deep_verify,
                          start_at=start_at).apply_async()
    steps = STEPS[STEPS.index(start_at):]
    ids: dict[Step, str] = {}
    node: AsyncResult | None = result
    for step in reversed(steps):  # a chain's result is its last task; parents go backwards
        assert node is not None
        ids[step] = str(node.id)
        node = node.parent
    journal().queued(backup_id, ids, note=note)
    return result
