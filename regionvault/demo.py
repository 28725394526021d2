"""``regionvault demo``: the whole job on the embedded stack, start to finish.

Starts the stack with sample sources, backs up every source through the real per-domain
workers, restores one backup into a scratch database and compares it with its source row by
row, prints a summary, stops the stack. Exit 0 only if everything held.

The workers are reached through the ``Dispatcher`` the command line was given, connected only
once the stack is up and its endpoints are in this process's environment (the Celery one
reads them when it connects).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from regionvault.catalogue import find_backup
from regionvault.context import DomainContext
from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack
from regionvault.dispatch import Connect, Dispatcher
from regionvault.domains import Domain
from regionvault.follow import follow
from regionvault.manifest import new_backup_id
from regionvault.restore import restore


@dataclass(frozen=True)
class DemoRow:
    domain: str
    source: str
    backup_id: str
    ok: bool
    seconds: float
    size: int = 0
    s3_key: str = "-"
    gcs_key: str = "-"
    verified: bool = False


def run_demo(data_dir: Path | None, out: Console, err: Console, connect: Connect) -> int:
    own_dir = data_dir is None
    root = Path(tempfile.mkdtemp(prefix="rv-demo-")) if own_dir else data_dir
    assert root is not None
    stack = DevStack(data_dir=root, beat=False, flower=False,
                     say=lambda m: err.print(f"[dim]· {m}[/]"))
    started = time.monotonic()
    try:
        stack.start()
        os.environ.update(stack.env)  # the workers' client and the stores read its endpoints
        err.print(f"[dim]· stack up in {time.monotonic() - started:.1f}s[/]")
        rows = _back_up_everything(stack, connect(), out)
        restored_ok = _restore_one(stack, rows, out)
        _summary(rows, out)
        ok = all(r.ok and r.verified for r in rows) and restored_ok
        out.print("[bold green]demo passed[/]" if ok else "[bold red]demo failed[/]")
        return 0 if ok else 1
    finally:
        err.print("[dim]· stopping the stack[/]")
        stack.stop()
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


def _back_up_everything(stack: DevStack, queue: Dispatcher, out: Console) -> list[DemoRow]:
    assert stack.config is not None
    pending = []
    for domain, dcfg in stack.config.domains.items():
        for src in dcfg.sources:
            backup_id = new_backup_id(domain, src.name, DomainContext(stack.config, domain).clock())
            queue.start_run(domain.value, src.name, backup_id, deep_verify=True, note="demo")
            pending.append((domain, src.name, backup_id, time.monotonic()))
            out.print(f"queued {backup_id} in backup.{domain.value}")
    rows = []
    for domain, source, backup_id, t0 in pending:
        out.print(f"[bold]{domain.value}/{source}[/] {backup_id}")
        ok = follow(queue.journal(), backup_id, out, lambda _: None, timeout=600).verified
        rows.append(_row(stack, domain, source, backup_id, ok, time.monotonic() - t0))
    return rows


def _row(stack: DevStack, domain: Domain, source: str, backup_id: str, ok: bool,
         seconds: float) -> DemoRow:
    assert stack.config is not None
    if not ok:
        return DemoRow(domain.value, source, backup_id, ok, seconds)
    copies = find_backup(DomainContext(stack.config, domain), backup_id)
    manifest = copies["s3"]
    return DemoRow(
        domain=domain.value, source=source, backup_id=backup_id, ok=ok, seconds=seconds,
        size=manifest.ciphertext_size,
        s3_key=f"s3://{manifest.s3_bucket}/{manifest.object_key}",
        gcs_key=f"gs://{manifest.gcs_bucket}/{manifest.object_key}" if "gcs" in copies else "-",
        verified=manifest.verified and copies.get("gcs", manifest).verified,
    )


def _restore_one(stack: DevStack, rows: list[DemoRow], out: Console) -> bool:
    assert stack.config is not None and stack.postgres is not None
    row = next((r for r in rows if r.ok and r.domain == "eu"), None)
    if row is None:
        out.print("[red]no verified eu backup to restore[/]")
        return False
    domain = Domain(row.domain)
    scratch = "demo_restore_check"
    stack.postgres.drop_database(scratch)
    stack.postgres.create_database(scratch)
    try:
        t0 = time.monotonic()
        restore(DomainContext(stack.config, domain), row.backup_id, stack.postgres.dsn(scratch),
                from_store="s3")
        source_fp = sample.fingerprint(stack.postgres.dsn(sample.database_name(domain, row.source)))
        restored_fp = sample.fingerprint(stack.postgres.dsn(scratch))
        same = source_fp == restored_fp and bool(source_fp)
        rows_count = sum(count for count, _ in source_fp.values())
        verdict = "[green]identical[/]" if same else "[red]DIFFERENT[/]"
        out.print(f"restored {row.backup_id} into {scratch} in {time.monotonic() - t0:.1f}s: "
                  f"{len(source_fp)} tables, {rows_count} rows, {verdict} to the source")
        return same
    finally:
        stack.postgres.drop_database(scratch)


def _summary(rows: list[DemoRow], out: Console) -> None:
    table = Table(title="regionvault demo")
    for name in ("domain", "source", "size", "time"):
        table.add_column(name, no_wrap=True)
    table.add_column("S3 key", no_wrap=True)
    table.add_column("GCS key", no_wrap=True)
    table.add_column("verified", no_wrap=True)
    for r in rows:
        table.add_row(r.domain, r.source, f"{r.size:,} B", f"{r.seconds:.1f}s", r.s3_key,
                      r.gcs_key, "[green]yes[/]" if r.verified else "[red]no[/]")
    out.print(table)
