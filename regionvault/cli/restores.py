"""Commands about getting data back: restore, restore drills, disaster recovery."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from regionvault.cli.common import (
    ConfigOption,
    app,
    config_from,
    context_for,
    dispatcher,
    err,
    format_age,
    guarded,
    out,
    still_running,
)
from regionvault.context import DomainContext
from regionvault.dispatch import Dispatcher, NotAReference, RestoreRequest, RestoreTarget
from regionvault.domains import Domain, parse_domain
from regionvault.errors import ConfigError
from regionvault.manifest import BackupRef


def parse_time(value: str) -> datetime:
    """ISO 8601; a time without a zone is UTC."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--at {value!r} is not an ISO 8601 time such as "
                          "2026-11-28T02:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command()
def restore(
    ctx: typer.Context,
    backup_id: Annotated[str | None, typer.Argument(help="a backup id; or use --domain/--source")]
    = None,
    target: Annotated[str, typer.Option(
        "--target", help="where to restore: a restore target of the domain (restore_targets), "
        "or a reference its workers resolve, env:VAR or file:/path; with --local also a DSN")]
    = "",
    domain: Annotated[str | None, typer.Option("--domain", "-d")] = None,
    source: Annotated[str | None, typer.Option("--source", "-s")] = None,
    at: Annotated[str | None, typer.Option(
        "--at", help="newest verified backup at or before this time (ISO 8601, UTC)")] = None,
    from_store: Annotated[str, typer.Option(
        "--from", help="one of the source's two stores (s3, gcs, swift), or auto: its "
        "primary, then its replica")] = "auto",
    clean: Annotated[bool, typer.Option(
        "--clean", help="replace the contents of a non-empty target")] = False,
    local: Annotated[bool, typer.Option(
        "--local", help="restore from this process (a machine inside the domain), not on the "
        "domain's workers")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the workers")] = 4 * 3600,
    config: ConfigOption = None,
) -> None:
    """Fetch, verify, decrypt and restore a backup into a target database (streaming), on
    the domain's own workers (with --local: in this process)."""

    def run() -> None:
        if not target:
            raise ConfigError("--target is required: a restore target of the domain, or "
                              "env:VAR or file:/path (with --local, also a DSN)")
        cfg = config_from(config)
        if backup_id:
            if domain or source or at:
                raise ConfigError("give a backup id, or --domain and --source (and --at), "
                                  "not both")
            ref = BackupRef.parse(backup_id)
            d, src = ref.domain, ref.source
        else:
            if not (domain and source):
                raise ConfigError("give a backup id, or --domain and --source to restore the "
                                  "newest verified backup")
            d, src = parse_domain(domain), source
        cfg.source(d, src)  # unknown domain or source: refused before anything is read
        when = parse_time(at) if at else None
        if local:
            _restore_here(context_for(cfg, d), backup_id, src, target, when, from_store, clean)
            return
        try:
            into = RestoreTarget.parse(target)
        except NotAReference:
            raise ConfigError(
                f"--target is neither a restore target of domain {d.value!r} "
                f"({_configured(cfg.domain(d).restore_targets)}) nor a reference its workers "
                "resolve (env:VAR or file:/path), and a DSN is never sent to the workers (its "
                "value is not shown): give one of those, or restore from a machine inside the "
                "domain with --local") from None
        into.check_configured(cfg.domain(d), d.value)
        request = RestoreRequest(domain=d.value, source=src, target=into, backup_id=backup_id,
                                 at=when, from_store=from_store, clean=clean)
        queue = dispatcher(ctx, d)
        task_id = queue.restore(request)
        err.print(f"restore queued in backup.{d.value} (task {task_id})", highlight=False)
        result = _follow_restore(queue, task_id, timeout, d, selected=not backup_id)
        _print_restored(result["backup_id"], result["store"], result["bytes"],
                        result["plaintext_bytes"], result["seconds"],
                        result.get("fallback_reason"), result.get("warning"))

    guarded(run)


def _configured(targets: Mapping[str, object]) -> str:
    return "configured: " + (", ".join(sorted(targets)) or "none")


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeElapsedColumn(), console=err, transient=True)


def _restore_here(ctx: DomainContext, backup_id: str | None, source: str, target: str,
                  when: datetime | None, from_store: str, clean: bool) -> None:
    """``restore --local``: choose, fetch, decrypt and restore in this process."""
    from regionvault.progress import ProgressReport
    from regionvault.restore import restore as do_restore
    from regionvault.restore import select_backup

    try:  # a restore target's name or a reference, read here; else the DSN itself
        dsn = RestoreTarget.parse(target).read(ctx.dcfg, ctx.domain.value)
    except NotAReference:
        dsn = target
    if backup_id:
        chosen = backup_id
    else:
        role = None if from_store == "auto" else from_store
        chosen = select_backup(ctx, source, when or ctx.clock(), role=role).backup_id
        err.print(f"selected backup {chosen}")
    with _bar() as bar:
        task = bar.add_task("starting", total=None)

        def show(p: ProgressReport) -> None:
            bar.update(task, description=f"{p.step} from {p.store}", completed=p.done,
                       total=p.total)

        result = do_restore(ctx, chosen, dsn, from_store=from_store, clean=clean,
                            progress=show)
    _print_restored(chosen, result.store, result.bytes_read, result.plaintext_bytes,
                    result.seconds, result.fallback_reason, result.warning)


def _follow_restore(queue: Dispatcher, task_id: str, timeout: float, domain: Domain, *,
                    selected: bool) -> Any:
    """Show the restore's progress as the worker reports it, until it ends; what it
    returned (its own error, raised, when it failed)."""
    deadline = time.monotonic() + timeout
    shown = ""
    with _bar() as bar:
        task = bar.add_task("queued", total=None)
        while True:
            report = queue.progress(task_id) or {}
            if selected and report.get("backup_id") and not shown:
                shown = str(report["backup_id"])
                err.print(f"selected backup {shown}")
            if report:
                bar.update(task, description=f"{report.get('step')} from {report.get('store')}",
                           completed=report.get("bytes") or 0, total=report.get("total"))
            try:
                outcome = queue.wait(task_id, timeout=min(1.0, max(deadline - time.monotonic(),
                                                                   0.1)))
                break
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise still_running("the restore", timeout, domain, task_id) from None
    result = outcome.unwrap()
    if selected and not shown:
        err.print(f"selected backup {result['backup_id']}")
    return result


def _print_restored(backup_id: str, store: str, bytes_read: int, plaintext_bytes: int,
                    seconds: float, fallback_reason: str | None, warning: str | None) -> None:
    if fallback_reason:
        err.print(f"[yellow]fell back to GCS[/]: {escape(fallback_reason)}", highlight=False,
                  soft_wrap=True)
    if warning:
        err.print(f"[yellow]warning[/]: {escape(warning)}", highlight=False, soft_wrap=True)
    out.print(f"restored backup {backup_id} from {store}: {bytes_read:,} bytes read, "
              f"{plaintext_bytes:,} bytes of dump, {seconds:.1f}s")


@app.command()
def drill(
    ctx: typer.Context,
    domain: Annotated[str, typer.Option("--domain", "-d")],
    source: Annotated[str | None, typer.Option("--source", "-s")] = None,
    local: Annotated[bool, typer.Option(
        "--local", help="drill from this process (a machine inside the domain), not on the "
        "domain's workers")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the drill")] = 3600,
    config: ConfigOption = None,
) -> None:
    """Run a restore drill now, on the domain's own workers (with --local: in this process),
    and show its report; exit 0 only if it passed."""

    def run() -> None:
        from regionvault.drill import DrillFailed, list_reports, run_drill

        cfg = config_from(config)
        d = parse_domain(domain)
        dctx = context_for(cfg, d)
        if source:
            cfg.source(d, source)
        if local:
            report = run_drill(dctx, [source] if source else None)
            _print_report_sources(report)
            if not report.passed:
                raise DrillFailed(report.summary())
            out.print(f"[green]restore drill {report.drill_id} passed[/]")
            return
        queue = dispatcher(ctx, d)
        task_id = queue.restore_drill(d.value, source)
        err.print(f"restore drill queued in backup.{d.value} (task {task_id})")
        try:
            outcome = queue.wait(task_id, timeout=timeout)
        except TimeoutError:
            raise ConfigError(f"the drill did not finish within {timeout:.0f}s; "
                              f"see task {task_id} in Flower") from None
        reports = list_reports(dctx, limit=1)
        if reports:
            _print_report_sources(reports[0])
        if not outcome.ok:
            raise DrillFailed(outcome.error)
        out.print(f"[green]restore drill {outcome.value['drill_id']} passed[/]")

    guarded(run)


def _print_report_sources(report: object) -> None:
    from regionvault.drill import DrillReport

    assert isinstance(report, DrillReport)
    table = Table("source", "backup", "store", "rows", "check", "RTO", "RPO", "result",
                  title=f"drill {report.drill_id} ({report.domain})")
    for s in report.sources:
        rows_ok = s.row_counts_expected and s.row_counts_expected == s.row_counts_found
        table.add_row(
            s.source, s.backup_id or "-", s.store or "-",
            f"{sum(s.row_counts_found.values()):,} ok" if rows_ok else "[red]differ[/]",
            "-" if s.check is None else ("ok" if s.check.passed else "[red]failed[/]"),
            f"{s.rto_seconds:.1f}s" if s.rto_seconds is not None else "-",
            format_age(s.rpo_seconds),
            "[green]passed[/]" if s.passed else f"[red]failed[/]: {s.error}")
    out.print(table)


@app.command()
def drills(
    domain: Annotated[str | None, typer.Option("--domain", "-d")] = None,
    limit: Annotated[int, typer.Option(help="reports per domain")] = 10,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print only the JSON document (schema regionvault/drills/v1)")] = False,
    config: ConfigOption = None,
) -> None:
    """List recent restore drill reports (read from the domain's buckets)."""

    def run() -> None:
        from regionvault.cli.jsonout import drill_summary, drills_document, print_document
        from regionvault.context import utc_now
        from regionvault.drill import list_reports

        cfg = config_from(config)
        domains = [parse_domain(domain)] if domain else list(cfg.domains)
        reports = [report for d in domains
                   for report in list_reports(context_for(cfg, d), limit=limit)]
        if as_json:
            print_document(drills_document(reports, utc_now()))
            return
        table = Table("drill", "domain", "started", "sources", "max RTO", "max RPO", "result")
        for report in reports:
            max_rto, max_rpo, failed = drill_summary(report)
            table.add_row(report.drill_id, report.domain,
                          report.started_at.strftime("%Y-%m-%d %H:%M:%SZ"),
                          str(len(report.sources)),
                          f"{max_rto:.1f}s" if max_rto is not None else "-",
                          format_age(max_rpo),
                          "[green]passed[/]" if report.passed
                          else f"[red]failed[/]: {', '.join(failed)}")
        out.print(table)

    guarded(run)


@app.command("dr-restore")
def dr_restore(
    domain: Annotated[str, typer.Option("--domain", "-d")],
    target_server: Annotated[str, typer.Option(
        "--target-server", help="DSN of the recovery server (any database on it): "
        "postgresql://... recovers the postgres sources, mysql://... the mysql ones")],
    from_store: Annotated[str, typer.Option(
        "--from", help="the store to read: gcs (or s3, swift)")] = "gcs",
    sources: Annotated[str | None, typer.Option(
        "--sources", help="comma-separated sources (default: all of the domain)")] = None,
    database_template: Annotated[str, typer.Option(
        "--database-template", help="name of each restored database")] = "{source}",
    parallel: Annotated[int, typer.Option(help="sources restored at once")] = 2,
    clean: Annotated[bool, typer.Option("--clean")] = False,
    config: ConfigOption = None,
) -> None:
    """Disaster recovery: restore every source of a domain from one cloud alone."""

    def run() -> None:
        from regionvault.dr import dr_restore as do_dr

        ctx = context_for(config_from(config), parse_domain(domain))
        names = [s.strip() for s in sources.split(",") if s.strip()] if sources else None
        outcomes = do_dr(ctx, server_dsn=target_server, role=from_store, sources=names,
                         database_template=database_template, clean=clean, parallel=parallel,
                         say=lambda m: err.print(m, highlight=False, soft_wrap=True))
        table = Table("source", "backup", "age", "bytes", "time", "database", "result",
                      title=f"disaster recovery of {domain} from {from_store}")
        for o in outcomes:
            table.add_row(o.source, o.backup_id or "-", format_age(o.age_seconds),
                          f"{o.bytes_read:,}", f"{o.seconds:.1f}s", o.database,
                          "[green]restored[/]" if o.ok else f"[red]failed[/]: {o.error}")
        out.print(table)
        if not all(o.ok for o in outcomes):
            raise typer.Exit(1)

    guarded(run)
