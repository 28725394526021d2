"""Restore drills: prove, on a schedule, that the newest verified backups restore and hold what
their manifests say.

For each source (or a rotating sample), a drill restores the newest verified backup into a
fresh scratch database on the domain's scratch server (from S3 and from GCS in turn, see
``drill_store``), compares per-table row counts with those recorded at dump time, runs the
source's check query, measures the recovery time (RTO) and the data age (RPO), and drops the
scratch database whatever happened. The report (versioned JSON) goes to both of the domain's
buckets under ``drills/<domain>/``. A drill never connects to a source database.

The manifests a drill relies on (the backup it picks, the row counts it compares) are read
only after their MAC checks out: a forged manifest fails the drill, naming it, and is never
skipped for an older backup in silence; a version-1 manifest (no MAC) is drilled as
unauthenticated legacy, with a warning in the report.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, ValidationError

from regionvault.config import DomainConfig, SourceConfig
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.errors import IntegrityError, RegionvaultError, StoreError, TransientStoreError
from regionvault.restore import RestoreResult, restore, select_backup
from regionvault.sources import ScratchServer, restorer_for, scratch_server_for

REPORT_VERSION = 1
DRILL_PREFIX = "drills/"


class DrillFailed(RegionvaultError):
    """A restore drill ran and at least one source did not pass."""


class CheckResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sql: str
    expected: str
    found: str
    passed: bool


class SourceDrill(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    passed: bool
    backup_id: str | None = None
    backup_created_at: datetime | None = None
    store: str | None = None
    fallback_reason: str | None = None
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    row_counts_expected: dict[str, int] = {}
    row_counts_found: dict[str, int] = {}
    check: CheckResult | None = None
    scratch_database: str
    scratch_dropped: bool = False
    error: str | None = None
    #: e.g. the backup's manifest is an unauthenticated version-1 one
    warning: str | None = None


class DrillReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = REPORT_VERSION
    drill_id: str
    domain: str
    started_at: datetime
    finished_at: datetime
    passed: bool
    sources: list[SourceDrill]

    @property
    def key(self) -> str:
        return f"{DRILL_PREFIX}{self.domain}/{self.drill_id}.json"

    def summary(self) -> str:
        failed = [s for s in self.sources if not s.passed]
        if not failed:
            return f"restore drill {self.drill_id}: {len(self.sources)} sources passed"
        reasons = "; ".join(f"{s.source}: {s.error}" for s in failed)
        return f"restore drill {self.drill_id} failed for {len(failed)} source(s): {reasons}"


def choose_sources(dcfg: DomainConfig, only: Sequence[str] | None, today: datetime,
                   domain: Domain) -> list[SourceConfig]:
    """The sources a drill covers: those asked for, else a sample rotating by day, else all."""
    if only:
        return [dcfg.source(name, domain) for name in only]  # unknown names are refused
    sources = list(dcfg.sources)
    sample = dcfg.drill.sample
    if sample is None or sample >= len(sources):
        return sources
    start = (today.toordinal() * sample) % len(sources)
    return [sources[(start + i) % len(sources)] for i in range(sample)]


def drill_store(names: tuple[str, str], previous: str | None, today: datetime) -> str:
    """The store a source's drill restores from, of its two (``names``: primary, replica):
    the other one than its previous drill used, so that both copies are proven restorable in
    turn; by the date's parity without one."""
    if previous in names:
        return names[1 - names.index(previous)]
    return names[today.toordinal() % len(names)]


def previous_stores(ctx: DomainContext) -> dict[str, str]:
    """The store each source's most recent drill restored from (or tried), by source."""
    try:
        reports = list_reports(ctx)
    except RegionvaultError:
        return {}  # no history to read: drill_store falls back to the date
    found: dict[str, str] = {}
    for report in reports:  # newest first
        for entry in report.sources:
            if entry.store:
                found.setdefault(entry.source, entry.store)
    return found


def _restore_from(ctx: DomainContext, src: SourceConfig, backup_id: str, target: str,
                  store: str) -> RestoreResult:
    """Restore from ``store``; only if it cannot be reached, from the other one. A copy that
    is reached and fails its checks fails the drill: a fallback would hide it."""
    try:
        return restore(ctx, backup_id, target, from_store=store)
    except TransientStoreError as exc:
        names = ctx.placement(src).names
        other = names[1 - names.index(store)]
        result = restore(ctx, backup_id, target, from_store=other)
        return dataclasses.replace(result, fallback_reason=f"{store} was not used: {exc}")


def _compare_counts(expected: dict[str, int], found: dict[str, int]) -> str | None:
    if not expected:
        return "the backup's manifest records no row counts"
    wrong = [f"{t}: manifest {expected.get(t, 'no table')}, restored {found.get(t, 'no table')}"
             for t in sorted(set(expected) | set(found)) if expected.get(t) != found.get(t)]
    if wrong:
        return f"row counts differ in {len(wrong)} table(s): " + ", ".join(wrong[:5])
    return None


def _drill_source(ctx: DomainContext, src: SourceConfig, store: str = "s3") -> SourceDrill:
    t0 = time.monotonic()
    started = ctx.clock()
    scratch = f"rv_drill_{src.name.replace('-', '_')}_{secrets.token_hex(4)}"
    fields: dict[str, object] = {"source": src.name, "scratch_database": scratch}
    server: ScratchServer | None = None
    server_dsn = ""
    created = False
    try:
        server = scratch_server_for(src.kind)
        server_dsn = scratch_server_dsn(ctx, src.kind)
        manifest = select_backup(ctx, src.name, started, role=None)
        backup_id = manifest.backup_id
        fields["backup_id"] = backup_id
        server.create_database(server_dsn, scratch)
        created = True
        target = server.database_dsn(server_dsn, scratch)
        fields["store"] = store  # the report names the store tried, even if it fails
        result = _restore_from(ctx, src, backup_id, target, store)
        found = restorer_for(src.kind, src.name).row_counts(target)
        if result.warning:
            fields["warning"] = result.warning
        fields.update(store=result.store, fallback_reason=result.fallback_reason,
                      backup_created_at=manifest.created_at,
                      row_counts_expected=manifest.row_counts, row_counts_found=found)
        problems = [p for p in [_compare_counts(manifest.row_counts, found)] if p]
        if src.check is not None:
            value = server.scalar(target, src.check.sql)
            check = CheckResult(sql=src.check.sql, expected=src.check.expect, found=value,
                                passed=value == src.check.expect)
            fields["check"] = check
            if not check.passed:
                problems.append(f"check query returned {value!r}, expected {src.check.expect!r}")
        fields["rto_seconds"] = round(time.monotonic() - t0, 3)
        fields["rpo_seconds"] = round((started - manifest.created_at).total_seconds(), 3)
        fields["passed"] = not problems
        fields["error"] = "; ".join(problems) or None
    except RegionvaultError as exc:
        fields.update(passed=False, error=str(exc))
    finally:
        if created and server is not None:
            try:
                server.drop_database(server_dsn, scratch)
                fields["scratch_dropped"] = True
            except RegionvaultError as exc:
                fields.update(passed=False, error=f"{fields.get('error') or 'ok'}; and the "
                              f"scratch database {scratch} could not be dropped: {exc}")
        else:
            fields["scratch_dropped"] = True
    return SourceDrill.model_validate(fields)


def scratch_server_dsn(ctx: DomainContext, kind: str) -> str:
    ref = ctx.dcfg.drill.scratch_for(kind)
    if ref is None:
        where = "drill.scratch_dsn" if kind == "postgres" else f"drill.scratch.{kind}"
        raise RegionvaultError(
            f"domain {ctx.domain.value!r} has no scratch server for {kind} sources: configure "
            f"{where}, the server where drills create and drop their databases")
    return ref.read(f"the drill scratch server DSN ({kind}) of domain {ctx.domain.value!r}")


def run_drill(ctx: DomainContext, sources: Sequence[str] | None = None) -> DrillReport:
    """Drill the chosen sources, store the report in every store, and return it."""
    started = ctx.clock()
    chosen = choose_sources(ctx.dcfg, sources, started, ctx.domain)
    drill_id = f"{started.strftime('%Y%m%dT%H%M%SZ')}.{secrets.token_hex(4)}"
    previous = previous_stores(ctx)
    results = [_drill_source(ctx, src,
                             drill_store(ctx.placement(src).names, previous.get(src.name),
                                         started))
               for src in chosen]
    report = DrillReport(drill_id=drill_id, domain=ctx.domain.value, started_at=started,
                         finished_at=ctx.clock(), passed=all(r.passed for r in results),
                         sources=results)
    write_report(ctx, report)
    return report


def write_report(ctx: DomainContext, report: DrillReport) -> None:
    """Both buckets of the domain; one unreachable cloud must not lose the report."""
    data = report.model_dump_json(indent=2).encode()
    errors = []
    for role in ctx.store_names:
        try:
            ctx.store(role).put_bytes(report.key, data)
        except StoreError as exc:
            errors.append(f"{role}: {exc}")
    if len(errors) == len(ctx.store_names):
        raise TransientStoreError(f"drill report {report.drill_id} could not be stored: "
                                  + "; ".join(errors))


def list_reports(ctx: DomainContext, limit: int = 20) -> list[DrillReport]:
    """The newest drill reports of a domain, newest first (from S3, else GCS, else swift)."""
    prefix = f"{DRILL_PREFIX}{ctx.domain.value}/"
    for role in ctx.store_names:
        store = ctx.store(role)
        try:
            keys = sorted(store.list_keys(prefix), reverse=True)[:limit]
            reports = []
            for key in keys:
                try:
                    reports.append(DrillReport.model_validate_json(store.get_bytes(key)))
                except ValidationError:
                    raise IntegrityError(f"drill report {role}:{key} is malformed") from None
            return reports
        except TransientStoreError:
            continue
    raise TransientStoreError(f"neither store of domain {ctx.domain.value!r} is reachable")
