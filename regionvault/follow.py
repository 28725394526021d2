"""Follow a backup's chain live: each step's state, bytes, rate and elapsed time.

States come from the journal (written by the workers); bytes of the running step come from
what the step reports while it runs (``Dispatcher.progress``). On a terminal the table
redraws in place; elsewhere (CI logs, pipes) each change is printed as a line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from regionvault.journal import BackupRecord, BackupState, Journal, StepState
from regionvault.manifest import STEPS, Step

#: reads the PROGRESS meta of a task id ({"bytes": n, "elapsed": s}) or None
ProgressLookup = Callable[[str], dict[str, Any] | None]

_MARK = {StepState.PENDING: "[dim]·[/]", StepState.RUNNING: "[cyan]…[/]",
         StepState.RETRYING: "[yellow]↻[/]", StepState.DONE: "[green]✓[/]",
         StepState.FAILED: "[red]✗[/]", StepState.CANCELLED: "[magenta]⊘[/]"}


@dataclass(frozen=True)
class FollowResult:
    verified: bool
    state: str
    failed_step: Step | None = None
    error: str = ""


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _step_bytes(record: BackupRecord, step: Step, lookup: ProgressLookup) -> tuple[int, float]:
    rec = record.steps[step]
    if rec.state is StepState.RUNNING and rec.task_id:
        meta = lookup(rec.task_id) or {}
        return int(meta.get("bytes", 0)), float(meta.get("elapsed", 0.0))
    return 0, 0.0


def render(record: BackupRecord, lookup: ProgressLookup, elapsed: float) -> Table:
    table = Table(title=f"backup {record.backup_id} — {record.state.value} — {elapsed:.0f}s",
                  title_justify="left")
    for column in ("", "step", "state", "bytes", "rate", "detail"):
        table.add_column(column)
    for step in STEPS:
        rec = record.steps[step]
        done, seconds = _step_bytes(record, step, lookup)
        rate = f"{_human(done / seconds)}/s" if done and seconds else ""
        table.add_row(_MARK[rec.state], step.value, rec.state.value,
                      _human(done) if done else "", rate, rec.detail[:90])
    return table


def _finished(record: BackupRecord) -> FollowResult | None:
    if record.state is BackupState.FAILED:
        return FollowResult(False, "failed", record.error_step, record.error)
    if record.state is BackupState.CANCELLED:
        return FollowResult(False, "cancelled")
    expire = record.steps[Step.EXPIRE].state
    if record.steps[Step.VERIFY].state is StepState.DONE and expire is StepState.DONE:
        return FollowResult(True, "verified")
    return None


def follow(journal: Journal, backup_id: str, console: Console, lookup: ProgressLookup, *,
           timeout: float, poll: float = 0.5) -> FollowResult:
    """Show the chain until it ends (verified, failed or cancelled) or ``timeout`` passes."""
    started = time.monotonic()
    deadline = started + timeout
    if console.is_terminal:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while time.monotonic() < deadline:
                record = journal.get(backup_id)
                if record is not None:
                    live.update(render(record, lookup, time.monotonic() - started))
                    result = _finished(record)
                    if result:
                        return _report(result, backup_id, console)
                time.sleep(poll)
    else:
        seen: dict[Step, tuple[StepState, str]] = {}
        while time.monotonic() < deadline:
            record = journal.get(backup_id)
            if record is not None:
                for step in STEPS:
                    rec = record.steps[step]
                    done, _ = _step_bytes(record, step, lookup)
                    key = (rec.state, rec.detail)
                    if seen.get(step) != key and rec.state is not StepState.PENDING:
                        seen[step] = key
                        size = f" ({_human(done)})" if done else ""
                        console.print(f"  {_MARK[rec.state]} {step.value:<9} {rec.state.value}"
                                      f"{size} {rec.detail}", highlight=False, soft_wrap=True)
                result = _finished(record)
                if result:
                    return _report(result, backup_id, console)
            time.sleep(poll)
    console.print(f"[red]backup {backup_id}: not finished after {timeout:.0f}s[/]")
    return FollowResult(False, "timeout")


def _report(result: FollowResult, backup_id: str, console: Console) -> FollowResult:
    if result.verified:
        console.print(f"[green]backup {backup_id} verified[/]")
    elif result.state == "cancelled":
        console.print(f"[magenta]backup {backup_id} was cancelled[/]")
    else:
        step = result.failed_step.value if result.failed_step else "?"
        console.print(f"[red]backup {backup_id} failed at step {step}:[/] {result.error}",
                      highlight=False, soft_wrap=True)
    return result
