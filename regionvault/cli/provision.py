"""Commands about the buckets' own backstops: ``provision`` writes the lifecycle rules that
delete personal data in the stores themselves; ``check`` (in ``backups``) reports them with
``report_rules``."""

from __future__ import annotations

from typing import Annotated

import typer

from regionvault import provision as backstops
from regionvault.cli.common import ConfigOption, app, config_from, context_for, err, guarded, out
from regionvault.context import DomainContext
from regionvault.domains import parse_domain
from regionvault.stores.lifecycle import Rule

#: the exit code of a bucket that falls short of (or cannot hold) the policy's rules
EXIT_NOT_COMPLIANT = 3


def _shown(rules: tuple[Rule, ...]) -> str:
    return "; ".join(f"'{r.id}' {r.describe()}" for r in rules)


@app.command("provision")
def provision_command(
    domain: Annotated[str | None, typer.Option(
        "--domain", "-d", help="us, eu or au (default: every configured domain)")] = None,
    config: ConfigOption = None,
) -> None:
    """Write the lifecycle rules that delete personal data in the domain's buckets (S3 and GCS)
    within the retention ceiling, keeping the buckets' other rules; idempotent.

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
    (stdout); True when they hold it."""
    findings = backstops.check_rules(ctx)
    for finding in findings:
        err.print(f"[bold red]error:[/] {finding}", highlight=False, soft_wrap=True)
    if not findings:
        out.print(f"domain {ctx.domain.value}: lifecycle rules of both buckets as the policy "
                  "requires", highlight=False)
    return not findings
