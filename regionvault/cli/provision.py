"""Commands about the buckets' own backstops: ``provision`` writes the lifecycle rules that
delete personal data in the stores themselves (and, for a domain with ``object_lock``, makes
the buckets able to lock backups); ``check`` (in ``backups``) reports both with
``report_rules``."""

from __future__ import annotations

from typing import Annotated

import typer

from regionvault import provision as backstops
from regionvault.cli.common import ConfigOption, app, config_from, context_for, err, guarded, out
from regionvault.context import DomainContext
from regionvault.domains import parse_domain
from regionvault.errors import PermanentStoreError
from regionvault.stores.base import LockSettings
from regionvault.stores.lifecycle import Rule

#: the exit code of a bucket that falls short of (or cannot hold) the policy's rules
EXIT_NOT_COMPLIANT = 3


def _shown(rules: tuple[Rule, ...]) -> str:
    return "; ".join(f"'{r.id}' {r.describe()}" for r in rules)


def _lock_shown(mode: str | None, settings: LockSettings) -> str:
    """The lock state of a bucket in a line: what it can do and what regionvault does with it."""
    if not settings.lock_enabled:
        state = "object lock off"
    else:
        state = "object lock on" + (", versioned" if settings.versioned else "")
    if settings.default_retention is not None:
        state += f", default retention {settings.default_retention}"
    if mode is not None:
        state += f"; backups locked in {mode} mode until their expiry"
    return state


def _print_lock(d: str, outcome: backstops.ProvisionOutcome) -> bool:
    """Print what provision did about the bucket's lock; False when it was refused."""
    lock = outcome.lock
    if lock is None:
        return True
    if lock.refused is not None:
        err.print(f"[bold red]error:[/] refused: {lock.refused}", highlight=False,
                  soft_wrap=True)
        return False
    done = ("bucket created with object lock" if lock.created
            else "object lock settings written" if lock.changed
            else "object lock already in place, nothing written")
    shown = f" ({_lock_shown(lock.mode, lock.settings)})" if lock.settings is not None else ""
    out.print(f"domain {d}: {outcome.url}: {done}{shown}", highlight=False, soft_wrap=True)
    return True


@app.command("provision")
def provision_command(
    domain: Annotated[str | None, typer.Option(
        "--domain", "-d", help="us, eu or au (default: every configured domain)")] = None,
    config: ConfigOption = None,
) -> None:
    """Write the lifecycle rules that delete personal data in the domain's buckets (S3 and GCS)
    within the retention ceiling, keeping the buckets' other rules; idempotent. For a domain
    with object_lock, first make each bucket able to lock backups (a missing bucket is
    created so), with no default retention rule.

    Exit 3, naming the bucket, when a bucket cannot hold such rules (S3 MFA delete, a GCS
    retention policy longer than the ceiling, a versioned bucket with retention.pii_days 1);
    the other buckets are still provisioned."""

    def run() -> None:
        cfg = config_from(config)
        domains = [parse_domain(domain)] if domain else list(cfg.domains)
        refused = False
        for d in domains:
            for outcome in backstops.provision(context_for(cfg, d)):
                if outcome.refused is not None:
                    err.print(f"[bold red]error:[/] refused: {outcome.refused}",
                              highlight=False, soft_wrap=True)
                    refused = True
                    continue
                refused = not _print_lock(d.value, outcome) or refused
                state = "written" if outcome.changed else "already in place, nothing written"
                versioned = " (versioned)" if outcome.versioned else ""
                # GCS soft delete is off as well (provision turns it off where it was on).
                soft_delete = "; soft delete off" if outcome.store == "gcs" else ""
                out.print(f"domain {d.value}: {outcome.url}{versioned}: lifecycle rules {state}: "
                          f"{_shown(outcome.rules)}{soft_delete}", highlight=False,
                          soft_wrap=True)
        if refused:
            raise typer.Exit(EXIT_NOT_COMPLIANT)

    guarded(run)


def report_rules(ctx: DomainContext) -> bool:
    """Print what the domain's buckets lack against the policy (stderr) or that they hold it
    (stdout), lifecycle rules and object lock; True when they hold it."""
    findings = backstops.check_rules(ctx)
    for finding in findings:
        err.print(f"[bold red]error:[/] {finding}", highlight=False, soft_wrap=True)
    if not findings:
        out.print(f"domain {ctx.domain.value}: lifecycle rules of both buckets as the policy "
                  "requires", highlight=False)
    return report_locks(ctx) and not findings


def report_locks(ctx: DomainContext) -> bool:
    """Print each bucket's object lock state (stdout) and what it lacks (stderr); True when
    nothing. Silent for a domain without a lock whose buckets lock nothing by default."""
    ok = True
    for role in backstops.STORES:
        try:
            settings = ctx.store(role).lock_settings()
        except PermanentStoreError:
            if ctx.lock_mode is not None:
                raise
            continue  # no lock configured, and lock settings this credential may not read
        findings = backstops.check_lock(ctx, role, settings)
        if ctx.lock_mode is not None or settings.default_retention is not None:
            out.print(f"domain {ctx.domain.value}: {ctx.url(role)}: "
                      f"{_lock_shown(ctx.lock_mode, settings)}", highlight=False,
                      soft_wrap=True)
        for finding in findings:
            err.print(f"[bold red]error:[/] {finding}", highlight=False, soft_wrap=True)
        ok = ok and not findings
    return ok
