"""What every step task does around its core function: check, own, run, record, hand over.

1. Check the arguments agree, the backup is not cancelled, and the message is not stale (of
   an older run than the journal's).
2. Take the backup's lease (waiting while another owner holds it; stepping aside if that
   owner stays alive or is of a newer run) and renew it in the background while working.
3. Run the core step with the lease's fencing token.
4. Record the outcome in the journal, send the next step's message, and only then release
   the lease: a reconciler that sees no lease therefore also sees the step's outcome.

Errors are classified once: transient ones (stores, sources, the broker) are retried by
Celery with backoff for a bounded window, permanent ones fail at once with their cause.

With tracing on (``regionvault.tracing``) the whole of it is the step's span, in the
backup's one trace; the store and source calls of the step nest under it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery.exceptions import Ignore, Reject
from kombu.exceptions import OperationalError

from regionvault import tracing
from regionvault.chain import StepOutcome
from regionvault.config import TaskRetryConfig
from regionvault.context import DomainContext
from regionvault.errors import (
    BackupBusy,
    KeyServiceUnavailable,
    LeaseLost,
    ResidencyError,
    SpoolFull,
    StepOrderError,
    TransientSourceError,
    TransientStoreError,
)
from regionvault.journal import StepState
from regionvault.lease import Heartbeat, Holder, Lease, LeaseStore, Ownership, owner_id
from regionvault.lease import owner_is_dead_here as _dead_here
from regionvault.manifest import BackupRef, Step
from regionvault.progress import Progress, ProgressReport
from workers.canvas import next_step, send_step
from workers.guard import DomainTask
from workers.journal import journal, leases
from workers.runtime import context_for, worker_config

log = logging.getLogger("regionvault.tasks")

#: errors worth another try: the cause may pass (network, 5xx, throttling, a restarting
#: source, the broker or journal briefly away)
TRANSIENT = (TransientStoreError, TransientSourceError, KeyServiceUnavailable, redis.RedisError,
             OperationalError)

#: Options shared by every step task. Retries are decided in ``run_step`` (one layer only);
#: acks_late + reject_on_worker_lost bring a step whose pool process died straight back.
STEP_OPTIONS: dict[str, Any] = {
    "base": DomainTask,
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "max_retries": None,  # bounded by time (retries.window_seconds), not by count
}

PROGRESS_INTERVAL_SECONDS = 1.0
#: the first wait for a lease another owner holds (see ``acquire``)
ACQUIRE_FIRST_PAUSE = 0.01

#: the steps that write the spool (later steps write only to the stores, and verify empties
#: the spool: fencing it there would leave a directory behind)
SPOOL_WRITERS = frozenset({Step.DUMP, Step.ENCRYPT, Step.UPLOAD})

StepBody = Callable[[DomainContext, Ownership, Progress], StepOutcome]


def retry_delay(attempt: int, settings: TaskRetryConfig, *,
                rng: Callable[[], float] = random.random) -> float | None:
    """Seconds to wait before try ``attempt + 1`` (attempt 0 is the first try), or None when
    the backoff of all tries so far would pass the retry window: then the step fails.

    Exponential backoff with jitter in the upper half, so a fleet of workers that met the same
    outage does not come back in lockstep, yet every wait is at least half the schedule."""
    def planned(n: int) -> float:
        return float(min(settings.backoff_seconds * 2 ** n, settings.backoff_max_seconds))

    if sum(planned(n) for n in range(attempt + 1)) > settings.window_seconds:
        return None
    return planned(attempt) * (0.5 + 0.5 * rng())


def agreeing_context(backup_id: str, domain: str, source: str) -> DomainContext:
    """The domain context, after checking that the three arguments agree with each other (the
    backup id names its domain and source)."""
    ref = BackupRef.parse(backup_id)
    if ref.domain.value != domain or ref.source != source:
        raise ResidencyError(
            f"backup {backup_id} is of domain {ref.domain.value!r} and source {ref.source!r}, "
            f"but the task names domain {domain!r} and source {source!r}; refused"
        )
    return context_for(domain)


def checked_context(backup_id: str, domain: str, source: str, run: int = 0) -> DomainContext:
    """The domain context, after checking the three arguments agree with each other, that
    the backup was not cancelled (a cancelled chain's later steps end here, quietly) and that
    the message's run is not stale (a newer run owns the backup: this copy ends here too).
    The journal is read once for both."""
    ctx = agreeing_context(backup_id, domain, source)
    cancelled, current = journal().admission(backup_id)
    if cancelled:
        log.info("backup %s was cancelled: step not run", backup_id)
        raise Ignore()
    # run 0: a step sent by hand, outside any run; the lease alone decides
    if run and current > run:
        log.info("backup %s: run %d owns the backup, this message is of run %d; not run",
                 backup_id, current, run)
        raise Ignore()
    return ctx


def acquire(store: LeaseStore, backup_id: str, owner: str, *, step: Step, run: int,
            floor: int, ttl_ms: int, sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic) -> Lease | Holder:
    """Take the backup's lease, waiting up to two lease lifetimes for another owner's lease
    to expire; the ``Holder`` that keeps it means this copy steps aside.

    A holder of a newer run wins at once; a holder that is a dead process of this host (a
    pool child killed a moment ago) is broken at once instead of waited for."""
    deadline = clock() + 2 * ttl_ms / 1000
    # The usual holder is the step before, which sends this step's message a moment before it
    # releases the lease: the first waits are short, so a hand-over costs milliseconds, and
    # they grow to a tenth of the lease so that a real duplicate polls gently.
    pause = ACQUIRE_FIRST_PAUSE
    while True:
        got = store.acquire(backup_id, owner, ttl_ms, step=step.value, run=run, floor=floor)
        if isinstance(got, Lease):
            return got
        if run and got.run > run:
            return got
        if _dead_here(got.owner):
            store.break_lease(backup_id, got.token)
            continue
        if clock() >= deadline:
            return got
        sleep(pause)
        pause = min(2 * pause, 1.0, ttl_ms / 1000 / 10)


def _let_go(store: LeaseStore, heartbeat: Heartbeat, got: Lease, backup_id: str) -> None:
    """Stop renewing the lease and release it; one that cannot be released expires."""
    heartbeat.stop()
    try:
        store.release(got)
    except redis.RedisError as exc:
        log.warning("lease of %s not released: %s", backup_id, exc)


def progress_reporter(task: Any, heartbeat: Heartbeat | None = None) -> Progress:
    """Forward a step's (or a restore's) progress to the result backend at most once a
    second (metadata only: the backup, the stage, the store, byte counts); stop a step that
    lost its lease at the next report. The first report comes after a second: short work
    writes no progress at all (nothing reads it before then)."""
    started = time.monotonic()
    last = started

    def report(p: ProgressReport) -> None:
        nonlocal last
        if heartbeat is not None:
            heartbeat.confirm()
        now = time.monotonic()
        if now - last >= PROGRESS_INTERVAL_SECONDS and task.request.id:
            last = now
            task.update_state(state="PROGRESS", meta={
                "backup_id": p.backup_id, "step": p.step, "store": p.store, "bytes": p.done,
                "total": p.total, "elapsed": round(now - started, 1)})

    return report


@contextlib.contextmanager
def owning(task: Any, ctx: DomainContext, backup_id: str, step: Step) -> Iterator[Ownership]:
    """Own the backup for work outside any chain run (an operator's verify): take its lease
    as a step sent by hand does (run 0), renew it while the block runs, release it after.
    A backup that another live owner works on is refused (``BackupBusy``), naming it."""
    ttl_ms = int(worker_config().reconcile.lease_seconds * 1000)
    store = leases()
    got = acquire(store, backup_id, owner_id(str(task.request.id or "")), step=step, run=0,
                  floor=ctx.spool.fence(backup_id), ttl_ms=ttl_ms)
    if isinstance(got, Holder):
        raise BackupBusy(
            f"backup {backup_id} is being worked on by {got.owner} (step {got.step} of run "
            f"{got.run}); try again when it is done (regionvault watch {backup_id})")
    heartbeat = Heartbeat(store, got, ttl_ms).start()
    try:
        yield heartbeat.ownership()
    finally:
        _let_go(store, heartbeat, got, backup_id)


def _record(backup_id: str, step: Step, state: StepState, **fields: Any) -> None:
    """Write the journal; a journal that cannot be written never fails the step (the stores
    and the spool are the truth, and the reconciler reads them)."""
    try:
        journal().step(backup_id, step, state, **fields)
    except (redis.RedisError, ValueError) as exc:
        log.warning("journal not updated for %s step %s: %s", backup_id, step.value, exc)


def _note(backup_id: str, text: str) -> None:
    try:
        journal().note(backup_id, text)
    except redis.RedisError as exc:
        log.warning("journal note not written for %s: %s", backup_id, exc)


def _handoff(step: Step, backup_id: str, domain: str, source: str, run: int,
             deep: bool) -> None:
    following = next_step(step)
    if following is None or not run:
        return  # the last step, or a step sent on its own (run 0), outside any run
    try:
        task_id = send_step(following, backup_id, domain, source, run=run, deep_verify=deep)
    except Exception as exc:  # the broker's own errors (kombu, redis) at a step boundary
        log.warning("step %s of backup %s is done, but sending step %s failed (%s); the "
                    "reconciler will send it", step.value, backup_id, following.value, exc)
        _note(backup_id, f"{step.value} done; handing over to {following.value} failed: {exc}")
        return
    try:
        journal().handed_off(backup_id, following, task_id)
    except redis.RedisError as exc:
        log.warning("journal not updated for the handoff of %s: %s", backup_id, exc)


def _next_already_sent(backup_id: str, step: Step) -> bool:
    """Whether this run already sent the step after ``step``: a duplicate that found its work
    done must not start a second copy of the rest of the chain. (A run's claim clears the
    task ids of the steps it will run, so a retry from an earlier step still hands over.)"""
    following = next_step(step)
    if following is None:
        return True
    try:
        record = journal().get(backup_id)
    except redis.RedisError:
        return False  # cannot tell: sending again is harmless, steps are idempotent
    return record is not None and record.steps[following].task_id is not None


def _fail(exc: BaseException, backup_id: str, step: Step, task_id: str,
          rerun: Step | None = None) -> None:
    _record(backup_id, step, StepState.FAILED, detail=str(exc), task_id=task_id, rerun=rerun)
    exc._rv_journaled = True  # type: ignore[attr-defined]  # the failure signal skips it


def run_step(task: Any, step: Step, *, backup_id: str, domain: str, source: str, run: int,
             deep: bool, body: StepBody) -> dict[str, object]:
    """Everything a step task does; ``body`` is the core function."""
    with _step_span(task, step, backup_id, domain, source, run) as sp:
        try:
            return _run_step(task, step, backup_id=backup_id, domain=domain, source=source,
                             run=run, deep=deep, body=body, sp=sp)
        except BaseException:
            if sp.outcome in ("failed", "retry"):
                try:
                    journal().span_failed(backup_id, sp.traceparent)
                except redis.RedisError as exc:
                    log.warning("failed span of %s not recorded: %s", backup_id, exc)
            raise


def _step_span(task: Any, step: Step, backup_id: str, domain: str, source: str,
               run: int) -> contextlib.AbstractContextManager[tracing.Span | tracing.NoSpan]:
    """The span of this attempt of ``step``, in the backup's one trace.

    Why the journal: a backup's steps run in different processes and, across retries and
    resumptions, in different runs started by different senders (beat's fan-out, the command
    line, Flower, the reconciler); only the journal record of the backup is shared by all
    of them. The first traced step records its span there as the backup's trace, every run
    is sent under it (``workers.canvas.start_run``) and within a run each step's message
    carries its predecessor's context (Celery's instrumentation), so a message that arrives
    without the backup's trace (sent by hand) is put back into it here. Each attempt links
    to the last attempt of its step and to the attempt that failed last: a retry or a
    resumption is a new span in the same trace, linked to the one it follows. With tracing
    off: the do-nothing span, and no journal read."""
    if not tracing.active():
        return contextlib.nullcontext(tracing.NO_SPAN)
    trace, last, failed = "", "", ""
    try:
        trace, last, failed = journal().trace_of(backup_id, step)
    except redis.RedisError as exc:  # the trace is for people: the step runs regardless
        log.warning("trace of %s not read: %s", backup_id, exc)
    current = tracing.current_traceparent()  # Celery's span of this message
    parent = None
    links = list(dict.fromkeys(x for x in (failed, last) if x))
    if trace and tracing.trace_id_of(current) != tracing.trace_id_of(trace):
        parent = trace
        if current:
            links.append(current)
    return tracing.span(f"regionvault.step {step.value}", {
        "domain": domain, "source": source, "backup_id": backup_id, "step": step.value,
        "run": run, "attempt": int(task.request.retries or 0)}, parent=parent, links=links)


def _run_step(task: Any, step: Step, *, backup_id: str, domain: str, source: str, run: int,
              deep: bool, body: StepBody, sp: tracing.Span | tracing.NoSpan,
              ) -> dict[str, object]:
    task_id = str(task.request.id or "")
    try:
        ctx = checked_context(backup_id, domain, source, run)
    except redis.RedisError as exc:  # the journal is away: try again, like any transient error
        return _retry_or_fail(task, exc, backup_id, step, task_id, sp)
    except Ignore:
        sp.set(outcome="ignored")  # cancelled, or a stale run's message
        raise
    settings = worker_config().reconcile
    ttl_ms = int(settings.lease_seconds * 1000)
    store = leases()
    try:
        got = acquire(store, backup_id, owner_id(task_id), step=step, run=run,
                      floor=ctx.spool.fence(backup_id), ttl_ms=ttl_ms)
    except redis.RedisError as exc:
        return _retry_or_fail(task, exc, backup_id, step, task_id, sp)
    if isinstance(got, Holder):
        sp.set(outcome="stepped_aside")
        log.info("step %s of backup %s steps aside: %s (step %s, run %d) owns the backup",
                 step.value, backup_id, got.owner, got.step, got.run)
        _note(backup_id, f"a duplicate {step.value} (task {task_id}) stepped aside: "
                         f"{got.step} of run {got.run} is running")
        raise Ignore()
    heartbeat = Heartbeat(store, got, ttl_ms).start()
    try:
        if sp.recording:
            try:
                journal().traced(backup_id, step, sp.traceparent)
            except redis.RedisError as exc:
                log.warning("span of %s step %s not recorded: %s", backup_id, step.value, exc)
        _record(backup_id, step, StepState.RUNNING, task_id=task_id)
        try:
            if step in SPOOL_WRITERS:
                # from here on, an older owner's spool commit is refused, even before ours
                ctx.spool.advance_fence(backup_id, got.token)
            outcome = body(ctx, heartbeat.ownership(),
                           progress_reporter(task, heartbeat))
            heartbeat.confirm()
        except LeaseLost as exc:
            sp.set(outcome="lease_lost")
            log.warning("step %s of backup %s stopped: %s", step.value, backup_id, exc)
            raise Ignore() from exc
        except StepOrderError as exc:
            rerun = Step(exc.rerun_step) if exc.rerun_step else None
            sp.fail(exc)
            _fail(exc, backup_id, step, task_id, rerun)
            raise
        except TRANSIENT as exc:
            return _retry_or_fail(task, exc, backup_id, step, task_id, sp)
        except SpoolFull as exc:  # the spool knows its directory; the step is known here
            named = exc.during(step.value)
            sp.fail(named)
            _fail(named, backup_id, step, task_id)
            raise named from None
        except Exception as exc:
            sp.fail(exc)
            _fail(exc, backup_id, step, task_id)
            raise
        sp.set(outcome="skipped" if outcome.skipped else "done", bytes=outcome.bytes)
        _record(backup_id, step, StepState.DONE, task_id=task_id, detail=outcome.detail)
        if not outcome.skipped or not _next_already_sent(backup_id, step):
            _handoff(step, backup_id, domain, source, run, deep)
    finally:
        _let_go(store, heartbeat, got, backup_id)
    return finish(outcome, domain, source)


def _retry_or_fail(task: Any, exc: BaseException, backup_id: str, step: Step,
                   task_id: str, sp: tracing.Span | tracing.NoSpan = tracing.NO_SPAN,
                   ) -> dict[str, object]:
    delay = retry_delay(int(task.request.retries or 0), worker_config().retries)
    sp.fail(exc, "retry" if delay is not None else "failed")
    if delay is None:
        window = worker_config().retries.window_seconds
        _fail(exc, backup_id, step, task_id)
        log.error("step %s of backup %s failed after retrying for %ds: %s", step.value,
                  backup_id, window, exc)
        raise exc
    retry_at = datetime.now(UTC) + timedelta(seconds=delay)
    _record(backup_id, step, StepState.RETRYING, task_id=task_id,
            detail=f"retrying in {delay:.0f}s: {exc}", retry_at=retry_at)
    try:
        raise task.retry(exc=exc, countdown=delay)
    except Reject as rejected:
        # Celery could not send the retry (the broker is away too) and drops the message.
        # The step is not failed: the journal says it is retrying at retry_at, and the
        # reconciler resumes it once that time and the hand-over grace have passed.
        log.warning("step %s of backup %s: its retry could not be sent (%s); the reconciler "
                    "will resume it", step.value, backup_id, rejected.reason)
        rejected._rv_journaled = True  # not a failure to record (workers/journal.py)
        raise


def finish(outcome: StepOutcome, domain: str, source: str) -> dict[str, object]:
    log.info("step %s of backup %s (domain %s, source %s): %s%s", outcome.step.value,
             outcome.backup_id, domain, source, outcome.detail,
             " (already done)" if outcome.skipped else "")
    return {**outcome.as_dict(), "domain": domain, "source": source}


__all__ = ["STEP_OPTIONS", "agreeing_context", "checked_context", "finish", "owning",
           "progress_reporter", "retry_delay", "run_step"]
