"""``regionvault keys``: a managed keyring's life (init, rotate, rewrap, retire, list), and
``regionvault erase``: crypto-shredding of one backup."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from regionvault.cli.common import (
    ConfigOption,
    app,
    config_from,
    context_for,
    err,
    fail,
    guarded,
    operator,
    out,
)
from regionvault.context import DomainContext
from regionvault.domains import parse_domain
from regionvault.manifest import BackupRef

keys_app = typer.Typer(no_args_is_help=True, help=(
    "A domain's key-encryption keys: rotate them live, rewrap old backups, retire old keys."))
app.add_typer(keys_app, name="keys")

DomainOption = Annotated[str, typer.Option("--domain", "-d", help="us, eu or au")]
EXIT_NOT_DONE = 1


@keys_app.command("init")
def init_cmd(
    domain: DomainOption,
    imports: Annotated[list[str] | None, typer.Option(
        "--import", help="ID=PATH: keep a static key file as a previous key (repeatable)")]
    = None,
    config: ConfigOption = None,
) -> None:
    """Write the domain's first keyring file: a local key, and a KMS key in the domain's
    region if it uses aws-kms."""

    def run() -> None:
        from regionvault import keys

        cfg = config_from(config)
        doc = keys.init(cfg, parse_domain(domain),
                        imports=[keys.read_import(spec) for spec in imports or ()])
        for entry in doc.keys:
            state = "current" if entry.current else "previous"
            out.print(f"{entry.wrapper} key {entry.id} ({state})", highlight=False)

    guarded(run)


@keys_app.command("rotate")
def rotate_cmd(
    domain: DomainOption,
    wrapper: Annotated[list[str] | None, typer.Option(
        "--wrapper", help="rotate only this wrapper's key (local, aws-kms); repeatable")] = None,
    config: ConfigOption = None,
) -> None:
    """Make new keys current. Running workers use them from their next task (no restart);
    older keys stay until retired, so every backup still opens."""

    def run() -> None:
        from regionvault import keys

        fresh = keys.rotate(config_from(config), parse_domain(domain), wrapper or None)
        for name, key_id in fresh.items():
            out.print(f"{name} key {key_id} is now current", highlight=False)
        out.print("workers pick it up on their next task; run 'regionvault keys rewrap "
                  f"--domain {domain}' to move existing backups onto it", highlight=False)

    guarded(run)


@keys_app.command("rewrap")
def rewrap_cmd(
    domain: DomainOption,
    from_key: Annotated[str | None, typer.Option(
        "--from-key", help="only manifests that still name this key")] = None,
    per_second: Annotated[float | None, typer.Option(
        "--per-second", help="at most this many manifests a second (KMS and store quotas)")]
    = None,
    config: ConfigOption = None,
) -> None:
    """Wrap every backup's data key again with the current keys, in both stores, without
    touching the data. Safe to kill and run again; exit 0 only when nothing is left."""

    def run() -> None:
        from regionvault import keys

        ctx = context_for(config_from(config), domain)
        report = keys.rewrap(ctx, from_key=from_key, per_second=per_second,
                             say=lambda line: out.print(line, highlight=False))
        for line in report.left:
            err.print(f"[yellow]left[/]: {line}", highlight=False, soft_wrap=True)
        out.print(f"rewrapped {report.rewrapped}, already current {report.already}, left "
                  f"{len(report.left)}; read back {report.checked} manifests: "
                  f"{report.remaining} still to rewrap", highlight=False)
        if report.remaining or report.left:
            raise typer.Exit(EXIT_NOT_DONE)

    guarded(run)


@keys_app.command("retire")
def retire_cmd(
    key_id: str,
    domain: DomainOption,
    config: ConfigOption = None,
) -> None:
    """Remove a key from the keyring; refused (exit 2) while any manifest still needs it."""

    def run() -> None:
        from regionvault import keys

        out.print(keys.retire(context_for(config_from(config), domain), key_id),
                  highlight=False)

    guarded(run)


@keys_app.command("list")
def list_cmd(domain: DomainOption, config: ConfigOption = None) -> None:
    """The keys of the domain's keyring (ids only, never material)."""

    def run() -> None:
        from regionvault.keyring import keyring_document_for

        path, doc = keyring_document_for(config_from(config), parse_domain(domain))
        if doc is None:
            raise fail(f"domain {domain} has no keyring file at {path}; create it with "
                       f"'regionvault keys init --domain {domain}'", 2)
        table = Table("key id", "wrapper", "state", "created")
        for entry in doc.keys:
            table.add_row(entry.id, entry.wrapper, "current" if entry.current else "previous",
                          entry.created_at.strftime("%Y-%m-%d %H:%M:%SZ"))
        for retired in doc.retired:
            table.add_row(retired.id, retired.wrapper, "retired",
                          retired.retired_at.strftime("%Y-%m-%d %H:%M:%SZ"))
        out.print(table)

    guarded(run)


def report_keys(ctx: DomainContext) -> bool:
    """For ``check``: the current keys, KMS reachable, and every key id the manifests use
    with whether it is held. False if a key in use is not held."""
    from regionvault import keys
    from regionvault.kms import AwsKmsWrapper

    keyring = ctx.keyring
    current = ", ".join(f"{w} {k}" for w, k in keyring.current_ids().items())
    out.print(f"domain {ctx.domain.value}: current keys: {current}", highlight=False)
    for wrapper in keyring.wrappers:
        if isinstance(wrapper, AwsKmsWrapper):  # reachable, and the key still enabled?
            out.print(f"domain {ctx.domain.value}: KMS key {wrapper.current_key_id} is "
                      f"{wrapper.key_state(wrapper.current_key_id)}", highlight=False)

    ok = True
    for use in keys.key_usage(ctx):
        where = ", ".join(f"{n} in {s}" for s, n in sorted(use.copies.items()))
        held = "held" if use.held else ("RETIRED, NOT HELD" if use.retired else "NOT HELD")
        ok = ok and use.held
        out.print(f"domain {ctx.domain.value}: key {use.key_id} in use ({where}): {held}",
                  highlight=False)
    return ok


@app.command()
def erase(
    backup_id: str,
    reason: Annotated[str, typer.Option("--reason", help="why (kept in the erasure record)")],
    config: ConfigOption = None,
) -> None:
    """Crypto-shred one backup: destroy every wrapping of its data key in both clouds, delete
    its objects where the store allows, and keep an erasure record. Irreversible."""

    def run() -> None:
        from regionvault.erasure import erase as erase_backup

        ref = BackupRef.parse(backup_id)
        ctx = context_for(config_from(config), ref.domain)
        outcome = erase_backup(ctx, backup_id, reason=reason, by=operator())
        record = outcome.record
        out.print(f"backup {backup_id} erased on {record.erased_at.isoformat(timespec='seconds')}"
                  f" by {record.by}: {record.reason}", highlight=False)
        for store, what in outcome.manifests.items():
            out.print(f"  {store} manifest: {what}", highlight=False)
        for store, what in outcome.objects.items():
            out.print(f"  {store} object: {what}", highlight=False, soft_wrap=True)

    guarded(run)


__all__ = ["erase", "keys_app", "report_keys"]
