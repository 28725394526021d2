"""On-call commands: watch a backup, see freshness, retry what failed, cancel what runs."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table

from regionvault.backup_state import gather_facts, next_step
from regionvault.cli.common import (
    ConfigOption,
    app,
    config_from,
    context_for,
    dispatcher,
    err,
    format_age,
    guarded,
    operator,
    out,
)
from regionvault.cli.jsonout import print_document, print_event, status_document
from regionvault.cli.restores import parse_time
from regionvault.config import shown_url
from regionvault.context import DomainContext, utc_now
from regionvault.dispatch import Dispatcher
from regionvault.domains import parse_domain
from regionvault.errors import BackupBusy, ConfigError, NotFound, RegionvaultError
from regionvault.journal import BackupRecord, BackupState, StepState
from regionvault.manifest import STEPS, BackupRef, Step
from regionvault.status import (
    EXIT_CODES,
    AttemptStatus,
    Freshness,
    SourceStatus,
    assess,
    attempt_status,
    attempt_to_show,
    in_flight,
    stuck_after,
    worst,
)


def _age(delta: timedelta | None) -> str:
    return format_age(delta.total_seconds() if delta is not None else None)


@app.command()
def watch(
    ctx: typer.Context,
    backup_id: str,
    timeout: Annotated[float, typer.Option(help="seconds to follow")] = 3600,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print only JSON events, one a line (schema regionvault/event/v1)")]
    = False,
) -> None:
    """Follow a backup's chain live until it is verified, fails or is cancelled (exit 0 only
    if verified). With --json: a ``step`` event per step transition, ``progress`` events
    while a step moves bytes, and an ``end`` event with the final state."""

    def run() -> None:
        from regionvault.follow import follow

        ref = BackupRef.parse(backup_id)
        queue = dispatcher(ctx, ref.domain)
        if queue.journal().get(backup_id) is None:
            raise NotFound(f"backup {backup_id} is not in the journal (finished backups: "
                           f"regionvault show {backup_id})")
        if not follow(queue.journal(), backup_id, err if as_json else out, queue.progress,
                      timeout=timeout, emit=print_event if as_json else None).verified:
            raise typer.Exit(1)

    guarded(run)


@app.command()
def status(
    ctx: typer.Context,
    domain: Annotated[str | None, typer.Option("--domain", "-d")] = None,
    now: Annotated[str | None, typer.Option(
        "--now", help="judge freshness as of this time (ISO 8601), e.g. to test alerts")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print only the JSON document (schema regionvault/status/v1)")] = False,
    config: ConfigOption = None,
) -> None:
    """Freshness per source: exit 0 if all fresh, 3 if any late, 4 if any stuck or failing.

    Stuck: a backup of the source newer than its last verified one is queued or running but
    has not moved for longer than the reconciler needs to resume it, or than the RPO."""

    def run() -> int:
        import redis

        cfg = config_from(config)
        domains = [parse_domain(domain)] if domain else list(cfg.domains)
        rows: list[SourceStatus] = []
        for d in domains:
            dctx = context_for(cfg, d)
            when = parse_time(now) if now else dctx.clock()
            try:
                rows += _domain_status(dispatcher(ctx, d), dctx, when)
            except redis.RedisError as exc:
                # one domain's broker down must not hide the others: its sources are shown
                # unreachable (exit 4) and the command goes on
                err.print(f"[bold red]domain {d.value} unreachable:[/] its broker "
                          f"({shown_url(cfg.backend_for(d))}) did not answer: {exc}",
                          highlight=False, soft_wrap=True)
                rows += [SourceStatus(domain=d.value, source=src.name, rpo=dctx.dcfg.rpo_for(src),
                                      state=Freshness.UNREACHABLE)
                         for src in dctx.dcfg.sources]
        if as_json:
            print_document(status_document(rows, utc_now()))
        else:
            _print_status(rows)
        return EXIT_CODES[worst([r.state for r in rows])]

    code = guarded(run)
    raise typer.Exit(code)


def _domain_status(queue: Dispatcher, dctx: DomainContext, when: datetime) -> list[SourceStatus]:
    """Freshness of every source of one domain, from its stores and its broker's journal."""
    import redis

    from regionvault.catalogue import list_backups

    threshold = stuck_after(dctx.config.reconcile)
    journal, leases = queue.journal(), queue.leases()
    rows = []
    for src in dctx.dcfg.sources:
        verified = [m for m in list_backups(dctx, src.name)
                    if m.verified and m.created_at <= when]
        last = verified[-1] if verified else None
        records = journal.for_source(dctx.domain.value, src.name)
        failures = [r for r in records
                    if r.state is BackupState.FAILED and r.updated_at <= when]
        failure = failures[0] if failures else None
        rpo = dctx.dcfg.rpo_for(src)
        attempts: list[AttemptStatus] = []
        for record in in_flight(records, when):
            try:
                held = leases.holder(record.backup_id)
                holder, known = (held.owner if held else None), True
            except redis.RedisError:
                # judged as if nobody held it: an unknown never hides a stuck backup
                holder, known = None, False
            attempts.append(attempt_status(record, when, rpo=rpo, threshold=threshold,
                                           lease_holder=holder, lease_known=known))
        attempt = attempt_to_show(attempts)
        rows.append(SourceStatus(
            domain=dctx.domain.value, source=src.name, rpo=rpo,
            state=assess(last.created_at if last else None,
                         failure.updated_at if failure else None, rpo, when,
                         newest_attempt_stuck_since=attempt.stuck_since if attempt else None),
            last_verified_id=last.backup_id if last else None,
            last_verified_at=last.created_at if last else None,
            age=(when - last.created_at) if last else None,
            last_failure_id=failure.backup_id if failure else None,
            last_failure_step=failure.error_step.value
            if failure and failure.error_step else None,
            last_failure_error=failure.error if failure else None,
            last_failure_at=failure.updated_at if failure else None,
            newest_attempt=attempt))
    return rows


def _print_status(rows: list[SourceStatus]) -> None:
    color = {Freshness.FRESH: "green", Freshness.LATE: "yellow", Freshness.STUCK: "magenta",
             Freshness.FAILING: "red", Freshness.UNREACHABLE: "red"}

    def attempt_text(a: AttemptStatus | None) -> str:
        """E.g. "upload running, no progress for 14m; nobody holds its lease: ...". """
        if a is None:
            return "-"
        if a.step is None or a.step_state is None:
            where = a.state.value
        else:  # a pending step was handed over and waits for a worker
            verb = "queued" if a.step_state is StepState.PENDING else a.step_state.value
            where = f"{a.step.value} {verb}"
        if not a.stuck and a.step_state is StepState.RETRYING and not a.idle:
            text = f"{where}, waiting out a transient error"
        elif not a.stuck:
            text = f"{where}, last progress {_age(a.idle)} ago"
        elif not a.lease_known:
            text = (f"{where}, no progress for {_age(a.idle)}; its lease could not be read: "
                    "if its owner is dead, the reconciler resumes it by itself")
        elif a.lease_holder is None:
            text = (f"{where}, no progress for {_age(a.idle)}; nobody holds its lease: the "
                    "reconciler resumes it by itself (if it stays stuck, check the domain's "
                    "reconciler)")
        else:
            text = (f"{where}, no progress for {_age(a.idle)}, longer than the RPO; "
                    f"{a.lease_holder} holds its lease but does not move (regionvault cancel "
                    f"{a.backup_id} stops it)")
        if a.resumes:
            text += f"; resumed {a.resumes} time{'s' if a.resumes > 1 else ''} already"
        return f"{text} ({a.backup_id})"

    table = Table("domain", "source", "state", "last verified backup", "age", "RPO",
                  "last failure", "newest attempt")
    for r in rows:
        failure = (f"{r.last_failure_step}: {r.last_failure_error} ({r.last_failure_id})"
                   if r.last_failure_id else "-")
        table.add_row(r.domain, r.source, f"[{color[r.state]}]{r.state.value}[/]",
                      r.last_verified_id or "none", _age(r.age), _age(r.rpo), failure,
                      attempt_text(r.newest_attempt))
    out.print(table)


def _resume_point(ctx: DomainContext, backup_id: str, record: BackupRecord | None,
                  wanted: Step | None) -> Step:
    """Where a retry starts: ``--from`` if given; else what the spool and the stores show
    (the journal can be wrong: a step that asked for an earlier one to run again, a spool lost
    with its disk, a journal wiped by a broker restart)."""
    if record is not None and record.state is BackupState.CANCELLED:
        raise ConfigError(f"backup {backup_id} was cancelled and its data discarded; "
                          "start a new backup instead")
    if wanted is not None:
        return wanted
    step = next_step(gather_facts(ctx, backup_id))
    if step is None:
        raise ConfigError(f"backup {backup_id} finished every step; nothing to retry")
    return step


@app.command()
def retry(
    ctx: typer.Context,
    backup_id: str,
    from_step: Annotated[str | None, typer.Option(
        "--from", help="resume from this step (dump, encrypt, upload, replicate, verify, "
                       "expire) instead of the one the spool and the stores name")] = None,
    wait: Annotated[bool, typer.Option("--wait")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait with --wait")] = 3600,
    config: ConfigOption = None,
) -> None:
    """Resume a failed backup, in its own domain's queue, from the step its state names.

    Refused (exit 3), naming the running chain, while a chain of the backup is queued or
    running: two retries at once start one chain."""

    def run() -> None:
        ref = BackupRef.parse(backup_id)
        cfg = config_from(config)
        dctx = context_for(cfg, ref.domain)
        cfg.source(ref.domain, ref.source)
        wanted = _parse_step(from_step) if from_step else None
        queue = dispatcher(ctx, ref.domain)
        step = _resume_point(dctx, backup_id, queue.journal().get(backup_id), wanted)
        started = queue.start_run(ref.domain.value, ref.source, backup_id, start_at=step,
                                  mode="retry", note=f"retried by {operator()}")
        if not started.accepted:
            claim = started.claim
            raise BackupBusy(
                f"backup {backup_id} is {claim.state or 'busy'}: chain {claim.chain_id} (run "
                f"{claim.run}) owns it; watch it (regionvault watch {backup_id}) or cancel it "
                "first. If its worker died, the reconciler resumes it by itself.")
        out.print(f"backup {backup_id} resumed from step {step.value} in "
                  f"backup.{ref.domain.value} (chain {started.claim.chain_id}, run "
                  f"{started.claim.run})")
        if wait:
            from regionvault.follow import follow

            if not follow(queue.journal(), backup_id, out, queue.progress,
                          timeout=timeout).verified:
                raise typer.Exit(1)

    guarded(run)


def _parse_step(value: str) -> Step:
    try:
        return Step(value)
    except ValueError:
        raise ConfigError(f"--from {value!r} is not a step (steps: "
                          f"{', '.join(s.value for s in STEPS)})") from None


@app.command()
def cancel(
    ctx: typer.Context,
    backup_id: str,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the clean-up")] = 120,
    config: ConfigOption = None,
) -> None:
    """Stop a queued or running backup, discard its partial uploads and spool files."""

    def run() -> None:
        ref = BackupRef.parse(backup_id)
        cfg = config_from(config)
        cfg.source(ref.domain, ref.source)
        queue = dispatcher(ctx, ref.domain)
        record = queue.journal().get(backup_id)
        if record is not None and record.state is BackupState.VERIFIED:
            raise ConfigError(f"backup {backup_id} is verified; cancel stops unfinished "
                              "backups only")
        # First the mark: any step of this backup that starts from now on ends at once.
        queue.journal().cancelled(backup_id, by=operator())
        if record is not None:
            ids = [r.task_id for r in record.steps.values() if r.task_id]
            queue.revoke(ids)  # the step running now is stopped
            err.print(f"revoked {len(ids)} task(s) of backup {backup_id}")
        cleanup = queue.discard(backup_id, ref.domain.value, ref.source)
        try:
            outcome = queue.wait(cleanup, timeout=timeout)
        except TimeoutError:
            raise RegionvaultError(
                f"backup {backup_id} is cancelled, but its clean-up (task {cleanup}) did not "
                f"finish within {timeout:.0f}s; run `regionvault cancel {backup_id}` again "
                "(the reconciler also sweeps what it leaves)") from None
        if not outcome.ok:
            raise RegionvaultError(
                f"backup {backup_id} is cancelled, but its clean-up (task {cleanup}) failed: "
                f"{outcome.error}; run `regionvault cancel {backup_id}` again")
        out.print(f"backup {backup_id} cancelled; {outcome.value['detail']}")

    guarded(run)
