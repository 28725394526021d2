"""What every command shares: the Typer app, consoles, error handling, option types, and the
way to the workers (``dispatcher``)."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from regionvault.config import Config, load_config
from regionvault.context import DomainContext
from regionvault.dispatch import Connect, Dispatcher
from regionvault.domains import Domain, parse_domain
from regionvault.errors import RegionvaultError

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


def fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def guarded(fn: Callable[[], T]) -> T:
    """Run a command body, turning the project's errors into one sentence and an exit code."""
    try:
        return fn()
    except RegionvaultError as exc:
        raise fail(str(exc), exc.exit_code) from None


def config_from(path: Path | None) -> Config:
    return load_config(path)


def context_for(config: Config, domain: str | Domain) -> DomainContext:
    d = parse_domain(domain) if isinstance(domain, str) else domain
    config.domain(d)
    return DomainContext(config, d)


_DISPATCHERS = "regionvault.dispatchers"


def dispatcher(ctx: typer.Context, domain: str | Domain) -> Dispatcher:
    """The way to ``domain``'s workers, on that domain's broker (``regionvault.cli.main``
    takes a ``Connect``), connected the first time a command asks: call this only once the
    command has read and checked its configuration."""
    d = parse_domain(domain) if isinstance(domain, str) else domain
    found: dict[Domain, Dispatcher] = ctx.meta.setdefault(_DISPATCHERS, {})
    if d not in found:
        connect: Connect | None = ctx.find_root().obj
        if connect is None:
            raise RuntimeError("this command line was started without a way to the workers; "
                               "run it as `regionvault` (regionvault_cli.main), which gives it "
                               "the Celery one")
        found[d] = connect(d)
    return found[d]


def still_running(what: str, timeout: float, domain: Domain, task_id: str) -> RegionvaultError:
    """The error for work sent to a domain's workers that did not end while we waited: it
    goes on there, and this says where to follow it."""
    return RegionvaultError(
        f"{what} did not finish within {timeout:.0f}s; it is still running on the workers of "
        f"domain {domain.value!r} (task {task_id}, in Flower)")


def operator() -> str:
    """Who runs this command, for the journal's notes."""
    return os.environ.get("REGIONVAULT_OPERATOR") or getpass.getuser()


def format_age(seconds: float | None) -> str:
    """A duration for a table: minutes under an hour, hours under two days, then days."""
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
