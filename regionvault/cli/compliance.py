"""``regionvault compliance``: evidence for auditors, per domain and store, as a table or as
JSON (``regionvault/compliance/v1``, schema in ``regionvault/schemas/``).

Exit 0 when every domain judged is compliant, 3 when one is not, 2 for bad input (and 1 for
an operation that failed, as elsewhere). With ``--json`` stdout carries the JSON document
only; every message goes to stderr."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

import typer
from rich.markup import escape
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
)
from regionvault.cli.restores import parse_time
from regionvault.compliance import (
    ComplianceReport,
    JudgedObject,
    StoreCompliance,
    compliance_document,
    compliance_report,
)
from regionvault.context import clock_for, utc_now
from regionvault.domains import parse_domain
from regionvault.errors import ConfigError
from regionvault.manifest import MANIFEST_SUFFIX

#: the exit code of a domain that is not compliant (as ``regionvault check``)
EXIT_NOT_COMPLIANT = 3

_OK = "[green]ok[/]"
_NO = "[bold red]NO[/]"


def _age(delta: timedelta | None) -> str:
    return format_age(delta.total_seconds() if delta is not None else None)


def _object(item: JudgedObject | None) -> str:
    if item is None:
        return "none"
    quarantined = ", quarantined" if item.quarantined else ""
    return f"{escape(item.key)} ({_age(item.age)} old{quarantined})"


def _objects(items: tuple[JudgedObject, ...]) -> str:
    if not items:
        return "none"
    shown = "; ".join(_object(o) for o in items[:5])
    return f"{len(items)}: {shown}" + ("; ..." if len(items) > 5 else "")


def _store_table(report: ComplianceReport, s: StoreCompliance) -> Table:
    now = report.as_of
    table = Table("evidence", "found", "", title=f"domain {report.domain}: {s.url}",
                  title_justify="left")
    listed = _OK if s.listed and not s.errors else _NO
    table.add_row("backups judged", f"{s.backups}" + (f"; {escape('; '.join(s.errors))}"
                                                      if s.errors else ""), listed)
    table.add_row("oldest pii object", _object(s.oldest_pii), "")
    table.add_row("objects past their policy", _objects(s.past_policy),
                  _NO if s.past_policy else _OK)
    table.add_row("due for removal by the next sweep", _objects(s.due), "")
    rules = s.rules
    if rules.read:
        required = "; ".join(f"'{r.id}' {r.describe()}" for r in rules.required) or "none"
        found = "; ".join(f"{f.label} ({f.kind.value}, {f.days} d)" for f in rules.found) \
            or "none"
        rules_text = f"required: {escape(required)}\nfound: {escape(found)}"
    else:
        rules_text = f"cannot be read: {escape(rules.error or '')}"
    table.add_row("lifecycle rules", rules_text, _NO if rules.findings or not rules.read else _OK)
    versioning = {None: "unknown", True: "on (or suspended)", False: "off"}[rules.versioned]
    table.add_row("versioning", versioning, "")
    lock = s.object_lock
    if lock is not None:
        if not lock.read:
            lock_text = f"cannot be read: {escape(lock.error or '')}"
        else:
            lock_text = ("enabled" if lock.lock_enabled else "NOT enabled") + (
                f"; backups locked in {lock.mode} mode until their expiry" if lock.mode
                else "; not configured for the domain")
            if lock.default_retention is not None:
                lock_text += f"; default retention {escape(lock.default_retention)}"
        table.add_row("object lock", lock_text,
                      _NO if lock.findings or not lock.read else _OK)
    sweep = s.sweep
    if sweep.last_complete_at is not None:
        sweep_text = (f"{sweep.last_complete_at:%Y-%m-%d %H:%M:%SZ} "
                      f"({_age(now - sweep.last_complete_at)} ago)")
    else:
        sweep_text = "none recorded" + (f" ({escape(sweep.error)})" if sweep.error else "")
    table.add_row("last complete expiry sweep", sweep_text, _OK if sweep.recent else _NO)
    sampled = s.integrity_sampled_at
    sample_text = (f"{sampled:%Y-%m-%d %H:%M:%SZ} ({_age(now - sampled)} ago)"
                   if sampled is not None else "none recorded")
    table.add_row("last integrity sample", sample_text, _OK if s.integrity_recent else _NO)
    keys = "; ".join(f"{k.key_id} ({'held' if k.held else 'NOT HELD'}, {', '.join(k.uses)}, "
                     f"{k.backups} backup{'s' if k.backups != 1 else ''})"
                     for k in s.key_ids) or "none"
    if s.legacy_manifests:
        keys += f"; {s.legacy_manifests} legacy manifests (no MAC)"
    table.add_row("key ids in use", escape(keys),
                  _OK if all(k.held for k in s.key_ids) else _NO)
    quarantined = "; ".join(f"{q.key}: {q.reason}" for q in s.quarantined) or "none"
    untrusted = any(q.key.endswith(MANIFEST_SUFFIX) for q in s.quarantined)
    table.add_row("quarantined", escape(quarantined), _NO if untrusted else "")
    return table


def _print_report(report: ComplianceReport) -> None:
    for store in report.stores.values():
        out.print(_store_table(report, store))
    if report.compliant:
        out.print(f"domain {report.domain}: [green]compliant[/] as of "
                  f"{report.as_of:%Y-%m-%d %H:%M:%SZ}", highlight=False)
        return
    count = len(report.findings)
    out.print(f"domain {report.domain}: [bold red]NOT compliant[/] as of "
              f"{report.as_of:%Y-%m-%d %H:%M:%SZ}, {count} finding{'s' if count > 1 else ''}:",
              highlight=False)
    for finding in report.findings:
        out.print(f"  - {escape(finding.message)}", highlight=False, soft_wrap=True)


@app.command("compliance")
def compliance_command(
    ctx: typer.Context,
    domain: Annotated[str | None, typer.Option(
        "--domain", "-d", help="us, eu or au (default: every configured domain)")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print only the JSON document (schema regionvault/compliance/v1)")]
    = False,
    now: Annotated[str | None, typer.Option(
        "--now", help="judge as of this time (ISO 8601) instead of the workers' clock")] = None,
    integrity_max_age_days: Annotated[float, typer.Option(
        "--integrity-max-age-days", help="oldest the last integrity sample may be")] = 2.0,
    config: ConfigOption = None,
) -> None:
    """Evidence for auditors, per store: the oldest pii object, objects past their policy,
    lifecycle rules found and required, versioning, object lock (where configured), the last
    expiry sweep and integrity sample, the key ids in use. Exit 0 when compliant, 3 when not
    (each finding named)."""

    def run() -> int:
        from regionvault.expiry import RedisSweepLedger
        from regionvault.integrity import RedisReadLedger

        if integrity_max_age_days <= 0:
            raise ConfigError(f"--integrity-max-age-days must be more than 0, got "
                              f"{integrity_max_age_days:g}")
        cfg = config_from(config)
        if now is not None:
            try:
                when = parse_time(now)
            except ConfigError:
                raise ConfigError(f"--now {now!r} is not an ISO 8601 time such as "
                                  "2026-11-28T02:00:00Z") from None
        else:
            when = clock_for(cfg)()  # the clock the sweeps and samples were recorded by
        domains = [parse_domain(domain)] if domain else list(cfg.domains)
        reports = []
        for d in domains:
            client = dispatcher(ctx, d).journal().client  # the ledgers live beside the journal
            reports.append(compliance_report(
                context_for(cfg, d), expiry_ledger=RedisSweepLedger(client),
                integrity_ledger=RedisReadLedger(client), now=when,
                integrity_max_age=timedelta(days=integrity_max_age_days)))
        if as_json:
            document = compliance_document(reports, generated_at=utc_now())
            print(json.dumps(document, indent=2))
        else:
            for report in reports:
                _print_report(report)
        for report in reports if as_json else ():  # the table says it already
            if not report.compliant:
                err.print(f"domain {report.domain} is not compliant: "
                          f"{len(report.findings)} findings", highlight=False)
        return 0 if all(r.compliant for r in reports) else EXIT_NOT_COMPLIANT

    raise typer.Exit(guarded(run))
