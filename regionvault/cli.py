"""The ``regionvault`` command line.

Errors are one sentence on stderr and a non-zero exit: 2 for bad input or configuration,
1 for an operation that failed. The CLI calls the core directly, and the Celery app only to
enqueue work and wait for it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from regionvault.config import Config, load_config
from regionvault.context import DomainContext
from regionvault.domains import Domain, parse_domain
from regionvault.errors import ConfigError, RegionvaultError
from regionvault.manifest import BackupRef, Manifest, new_backup_id

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Region-pinned, client-side encrypted database backups.")
# Piped output (scripts, CI logs) gets wide lines rather than tables cut at 80 columns.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="configuration file (else REGIONVAULT_CONFIG)"),
]


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def guarded(fn: Callable[[], T]) -> T:
    """Run a command body, turning the project's errors into one sentence and an exit code."""
    try:
        return fn()
    except RegionvaultError as exc:
        raise _fail(str(exc), exc.exit_code) from None


def _config(path: Path | None) -> Config:
    return load_config(path)


def _context(config: Config, domain: str | Domain) -> DomainContext:
    d = parse_domain(domain) if isinstance(domain, str) else domain
    config.domain(d)
    return DomainContext(config, d)


# --- backup ----------------------------------------------------------------------------------


@app.command()
def backup(
    domain: Annotated[str, typer.Option("--domain", "-d", help="us, eu or au")],
    source: Annotated[str, typer.Option("--source", "-s", help="a source of that domain")],
    wait: Annotated[bool, typer.Option("--wait", help="follow the chain until it ends")] = False,
    deep: Annotated[bool, typer.Option("--deep", help="verify by reading both copies")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait with --wait")] = 3600,
    config: ConfigOption = None,
) -> None:
    """Start an ad-hoc backup of one source (in the domain's own queue)."""

    def run() -> None:
        cfg = _config(config)
        d = parse_domain(domain)
        cfg.source(d, source)  # unknown domain or source: refused before anything is sent
        from tasks.canvas import backup_chain

        backup_id = new_backup_id(d, source, DomainContext(cfg, d).clock())
        result = backup_chain(d.value, source, backup_id, deep_verify=deep).apply_async()
        out.print(f"backup {backup_id} queued in backup.{d.value}")
        if wait:
            from regionvault.follow import follow_chain

            ok = follow_chain(result, backup_id, out, timeout=timeout)
            if not ok:
                raise typer.Exit(1)

    guarded(run)


@app.command()
def check(
    domain: Annotated[str | None, typer.Option("--domain", "-d")] = None,
    config: ConfigOption = None,
) -> None:
    """Preflight: configuration valid, keys and DSNs readable, buckets in their regions."""

    def run() -> None:
        from regionvault.keyring import LocalKeyring
        from regionvault.sources import open_source

        cfg = _config(config)
        domains = [parse_domain(domain)] if domain else list(cfg.domains)
        for d in domains:
            ctx = _context(cfg, d)
            LocalKeyring.from_config(d, ctx.dcfg)
            for src in ctx.dcfg.sources:
                open_source(d, src)  # reads the DSN: a missing secret fails here
            ctx.ensure_resident("s3")
            ctx.ensure_resident("gcs")
            out.print(f"domain {d.value}: keys, {len(ctx.dcfg.sources)} source DSNs and both "
                      "buckets ok")

    guarded(run)


# --- catalogue -------------------------------------------------------------------------------


def _manifest_row(m: Manifest) -> list[str]:
    return [m.backup_id, m.domain.value, m.source, m.data_class.value, m.state(),
            f"{m.ciphertext_size:,}", m.created_at.strftime("%Y-%m-%d %H:%M:%SZ"),
            m.expires_at.strftime("%Y-%m-%d")]


@app.command("list")
def list_backups(
    domain: Annotated[str | None, typer.Option("--domain", "-d")] = None,
    source: Annotated[str | None, typer.Option("--source", "-s")] = None,
    config: ConfigOption = None,
) -> None:
    """List backups by reading the manifests in the stores (S3, else GCS)."""

    def run() -> None:
        from regionvault.catalogue import list_backups as catalogue

        cfg = _config(config)
        domains = [parse_domain(domain)] if domain else list(cfg.domains)
        if source and not domain:
            raise ConfigError("--source needs --domain (source names are per domain)")
        table = Table("backup id", "domain", "source", "class", "state", "bytes", "created",
                      "expires")
        for d in domains:
            ctx = _context(cfg, d)
            for manifest in catalogue(ctx, source):
                table.add_row(*_manifest_row(manifest))
        out.print(table)

    guarded(run)


@app.command()
def show(backup_id: str, config: ConfigOption = None) -> None:
    """Show a backup's manifest as each store holds it."""

    def run() -> None:
        from regionvault.catalogue import find_backup

        ref = BackupRef.parse(backup_id)
        ctx = _context(_config(config), ref.domain)
        copies = find_backup(ctx, backup_id)
        for store, manifest in copies.items():
            out.print(f"[bold]{store}[/]: {manifest.state()}")
            out.print_json(manifest.model_dump_json(exclude={"wrapped_data_key"}))

    guarded(run)


@app.command()
def verify(
    backup_id: str,
    deep: Annotated[bool, typer.Option("--deep", help="read both copies back")] = False,
    config: ConfigOption = None,
) -> None:
    """Verify a backup's two copies against its manifest (run here, not on a worker)."""

    def run() -> None:
        from regionvault import chain

        ref = BackupRef.parse(backup_id)
        outcome = chain.verify(_context(_config(config), ref.domain), backup_id, deep=deep)
        out.print(f"backup {backup_id} verified: {outcome.detail}")

    guarded(run)


@app.command()
def restore(
    backup_id: str,
    target: Annotated[str, typer.Option("--target", help="DSN of the database to restore into")],
    from_store: Annotated[str, typer.Option("--from", help="s3 or gcs")] = "s3",
    config: ConfigOption = None,
) -> None:
    """Fetch, verify, decrypt and restore a backup into a target database."""

    def run() -> None:
        from regionvault.restore import restore as do_restore

        if from_store not in ("s3", "gcs"):
            raise ConfigError(f"--from must be s3 or gcs, not {from_store!r}")
        ref = BackupRef.parse(backup_id)
        ctx = _context(_config(config), ref.domain)
        started = time.monotonic()
        result = do_restore(ctx, backup_id, target, from_store=from_store)
        out.print(f"restored backup {backup_id} from {result.store}: "
                  f"{result.bytes_read:,} bytes read, {result.plaintext_bytes:,} bytes of dump, "
                  f"{time.monotonic() - started:.1f}s")

    guarded(run)


# --- the embedded stack ----------------------------------------------------------------------


def _stay_until_signal() -> None:
    stop = {"now": False}

    def handler(signum: int, _: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop["now"]:
        time.sleep(0.5)


@app.command()
def dev(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="where the stack keeps its state")]
    = Path(".rv-dev"),
    config: ConfigOption = None,
) -> None:
    """Run the embedded stack in the foreground until Ctrl-C or SIGTERM."""
    from regionvault.devstack.stack import DevStack

    def run() -> None:
        stack = DevStack(data_dir=data_dir, config_file=config,
                         say=lambda m: err.print(f"[dim]{m}[/]"))
        stack.start()
        try:
            out.print(f"\n[bold green]regionvault dev stack is up[/]; environment in "
                      f"{stack.env_file}:")
            for key, value in sorted(stack.env.items()):
                if "PASSWORD" not in key:
                    out.print(f"  {key}={value}", highlight=False)
            out.print(f"\n  source {stack.env_file}   # then: regionvault list\n"
                      "Ctrl-C stops everything.")
            _stay_until_signal()
        finally:
            err.print("stopping the stack")
            stack.stop()

    guarded(run)


@app.command()
def demo(
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Start the embedded stack, back up every sample source, restore one, print a summary."""
    from regionvault.demo import run_demo

    code = guarded(lambda: run_demo(data_dir, out, err))
    raise typer.Exit(code)


def main() -> None:
    # Celery must find the same configuration as the CLI when the CLI enqueues.
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            os.environ["REGIONVAULT_CONFIG"] = str(Path(argv[i + 1]).resolve())
    app()


if __name__ == "__main__":
    main()
