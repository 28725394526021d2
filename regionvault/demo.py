"""``regionvault demo``: the whole job on the embedded stack, start to finish.

Starts the stack with sample sources (PostgreSQL in every domain, and in au the Autopilot
Journeys sources: MariaDB and Bigtable, kept on Cloud Files and GCS), backs up every source
through the real per-domain workers, restores one backup of each kind into a fresh database
and compares it with its source table by table, prints a summary, stops the stack. Exit 0
only if everything held.

The workers are reached through the ``Dispatcher`` the command line was given, connected only
once the stack is up and its endpoints are in this process's environment (the Celery one
reads them when it connects).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from regionvault.catalogue import find_backup
from regionvault.config import read_source_dsn
from regionvault.context import DomainContext
from regionvault.devstack import journeys, sample
from regionvault.devstack.stack import DevStack
from regionvault.dispatch import Connect
from regionvault.domains import Domain
from regionvault.follow import follow
from regionvault.manifest import new_backup_id
from regionvault.restore import restore
from regionvault.sources import KINDS


@dataclass(frozen=True)
class DemoRow:
    domain: str
    source: str
    kind: str
    backup_id: str
    ok: bool
    seconds: float
    size: int = 0
    primary: str = "-"
    replica: str = "-"
    verified: bool = False


def run_demo(data_dir: Path | None, out: Console, err: Console, connect: Connect) -> int:
    own_dir = data_dir is None
    root = Path(tempfile.mkdtemp(prefix="rv-demo-")) if own_dir else data_dir
    assert root is not None
    stack = DevStack(data_dir=root, beat=False, flower=False, journeys=True,
                     say=lambda m: err.print(f"[dim]· {m}[/]"))
    started = time.monotonic()
    try:
        stack.start()
        os.environ.update(stack.env)  # the workers' client and the stores read its endpoints
        err.print(f"[dim]· stack up in {time.monotonic() - started:.1f}s[/]")
        rows = _back_up_everything(stack, connect, out)
        restored_ok = _restore_one_of_each_kind(stack, rows, out)
        _summary(rows, out)
        ok = all(r.ok and r.verified for r in rows) and restored_ok
        out.print("[bold green]demo passed[/]" if ok else "[bold red]demo failed[/]")
        return 0 if ok else 1
    finally:
        err.print("[dim]· stopping the stack[/]")
        stack.stop()
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


def _back_up_everything(stack: DevStack, connect: Connect, out: Console) -> list[DemoRow]:
    assert stack.config is not None
    pending = []
    for domain, dcfg in stack.config.domains.items():
        for src in dcfg.sources:
            backup_id = new_backup_id(domain, src.name, DomainContext(stack.config, domain).clock())
            connect(domain).start_run(domain.value, src.name, backup_id, deep_verify=True,
                                      note="demo")
            pending.append((domain, src.name, backup_id, time.monotonic()))
            out.print(f"queued {backup_id} in backup.{domain.value}")
    rows = []
    for domain, source, backup_id, t0 in pending:
        out.print(f"[bold]{domain.value}/{source}[/] {backup_id}")
        ok = follow(connect(domain).journal(), backup_id, out, lambda _: None,
                    timeout=600).verified
        rows.append(_row(stack, domain, source, backup_id, ok, time.monotonic() - t0))
    return rows


def _row(stack: DevStack, domain: Domain, source: str, backup_id: str, ok: bool,
         seconds: float) -> DemoRow:
    assert stack.config is not None
    ctx = DomainContext(stack.config, domain)
    src = stack.config.source(domain, source)
    if not ok:
        return DemoRow(domain.value, source, src.kind, backup_id, ok, seconds)
    placement = ctx.placement(src)
    copies = find_backup(ctx, backup_id)
    manifest = copies[placement.primary]
    replica = copies.get(placement.replica)
    return DemoRow(
        domain=domain.value, source=source, kind=src.kind, backup_id=backup_id, ok=ok,
        seconds=seconds, size=manifest.ciphertext_size,
        primary=ctx.url(placement.primary, manifest.object_key),
        replica=ctx.url(placement.replica, manifest.object_key) if replica else "-",
        verified=manifest.verified and replica is not None and replica.verified,
    )


@dataclass(frozen=True)
class _Target:
    """A fresh database (or Bigtable instance) to restore into, and how to read it back."""

    dsn: str
    fingerprint: Callable[[str], dict[str, tuple[int, str]]]
    drop: Callable[[], None]


def _target_for(stack: DevStack, kind: str) -> _Target:
    assert stack.postgres is not None
    if kind == "postgres":
        postgres = stack.postgres
        postgres.drop_database("demo_restore_check")
        postgres.create_database("demo_restore_check")
        return _Target(postgres.dsn("demo_restore_check"), sample.fingerprint,
                       lambda: postgres.drop_database("demo_restore_check"))
    if kind == "mysql":
        assert stack.mariadb is not None
        mariadb = stack.mariadb
        mariadb.drop_database("demo_restore_check")
        mariadb.create_database("demo_restore_check")
        return _Target(mariadb.root_dsn("demo_restore_check"), journeys.fingerprint_mysql,
                       lambda: mariadb.drop_database("demo_restore_check"))
    assert kind == "bigtable" and stack.bigtable is not None
    bigtable = stack.bigtable
    # the emulator holds an instance as soon as it is named, and loses it when it stops
    return _Target(bigtable.dsn(journeys.BIGTABLE_PROJECT, f"demo-restore-{os.getpid()}"),
                   lambda dsn: journeys.fingerprint_bigtable(bigtable, dsn), lambda: None)


def _source_dsn(stack: DevStack, row: DemoRow) -> str:
    assert stack.config is not None
    return read_source_dsn(stack.config.source(Domain(row.domain), row.source),
                           Domain(row.domain))


def _restore_one_of_each_kind(stack: DevStack, rows: list[DemoRow], out: Console) -> bool:
    """Restore the first verified backup of each kind (from its primary store, so the
    Journeys ones come from Cloud Files) and compare it with its source table by table."""
    assert stack.config is not None
    ok = True
    for kind in KINDS:
        row = next((r for r in rows if r.ok and r.kind == kind), None)
        if row is None:
            out.print(f"[red]no verified {kind} backup to restore[/]")
            ok = False
            continue
        domain = Domain(row.domain)
        ctx = DomainContext(stack.config, domain)
        placement = ctx.placement(stack.config.source(domain, row.source))
        target = _target_for(stack, kind)
        try:
            t0 = time.monotonic()
            restore(ctx, row.backup_id, target.dsn, from_store=placement.primary)
            source_fp = target.fingerprint(_source_dsn(stack, row))
            restored_fp = target.fingerprint(target.dsn)
            same = source_fp == restored_fp and bool(source_fp)
            rows_count = sum(count for count, _ in source_fp.values())
            verdict = "[green]identical[/]" if same else "[red]DIFFERENT[/]"
            out.print(f"restored {kind} backup {row.backup_id} from {placement.primary} in "
                      f"{time.monotonic() - t0:.1f}s: {len(source_fp)} tables, {rows_count} "
                      f"rows, {verdict} to the source")
            ok = ok and same
        finally:
            target.drop()
    return ok


def _summary(rows: list[DemoRow], out: Console) -> None:
    table = Table(title="regionvault demo")
    # the short columns never wrap; the long object keys fold instead, so that a narrow
    # terminal or a pipe cuts no domain or source name short
    for name in ("domain", "source", "kind", "size", "time"):
        table.add_column(name, no_wrap=True, min_width=len(name))
    table.add_column("primary copy", overflow="fold")
    table.add_column("replica copy", overflow="fold")
    table.add_column("verified", no_wrap=True)
    for r in rows:
        table.add_row(r.domain, r.source, r.kind, f"{r.size:,} B", f"{r.seconds:.1f}s",
                      r.primary, r.replica, "[green]yes[/]" if r.verified else "[red]no[/]")
    out.print(table)
