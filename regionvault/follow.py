"""Follow a backup's chain live: each step's state, bytes, rate and elapsed time.

States come from the journal (written by the workers); bytes of the running step come from
what the step reports while it runs (``Dispatcher.progress``). On a terminal the table
redraws in place; elsewhere (CI logs, pipes) each change is printed as a line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from regionvault.context import utc_now
from regionvault.documents import header, schema_id, time_text
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


#: the NDJSON events of ``backup --wait --json`` and ``watch --json``: one line per step
#: transition, progress lines while a step runs, and an ``end`` line with the final state
#: (JSON Schema: ``regionvault/schemas/event.schema.json``)
EVENT_SCHEMA = schema_id("event")

#: where events go (``regionvault.cli.jsonout.print_event`` prints each as a line)
EventSink = Callable[[dict[str, Any]], None]


def _event(kind: str, backup_id: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {**header("event"), "event": kind, "backup_id": backup_id, "at": time_text(at),
            **fields}


def queued_event(backup_id: str, domain: str, source: str, queue: str,
                 at: datetime) -> dict[str, Any]:
    """A backup's chain was handed to its domain's queue."""
    return _event("queued", backup_id, at, domain=domain, source=source, queue=queue)


def step_event(record: BackupRecord, step: Step, size: int, at: datetime) -> dict[str, Any]:
    """A step reached a new state (running, retrying, done, failed, cancelled)."""
    rec = record.steps[step]
    return _event("step", record.backup_id, rec.at or at, step=step.value,
                  state=rec.state.value, detail=rec.detail, backup_state=record.state.value,
                  bytes=size or None)


def progress_event(backup_id: str, step: Step, size: int, elapsed: float,
                   at: datetime) -> dict[str, Any]:
    """Bytes a running step has moved so far."""
    return _event("progress", backup_id, at, step=step.value, bytes=size,
                  elapsed_seconds=elapsed, bytes_per_second=size / elapsed if elapsed else None)


def end_event(backup_id: str, result: FollowResult, at: datetime) -> dict[str, Any]:
    """The last event: verified, failed (at which step, why), cancelled, or timeout."""
    return _event("end", backup_id, at, state=result.state, verified=result.verified,
                  failed_step=result.failed_step.value if result.failed_step else None,
                  error=result.error or None)


def _poll(journal: Journal, backup_id: str, timeout: float, poll: float,
          seen: Callable[[BackupRecord], None]) -> FollowResult:
    """Read the backup's record every ``poll`` seconds, handing each to ``seen``, until it
    ends or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = journal.get(backup_id)
        if record is not None:
            seen(record)
            result = _finished(record)
            if result:
                return result
        time.sleep(poll)
    return FollowResult(False, "timeout")


def follow(journal: Journal, backup_id: str, console: Console, lookup: ProgressLookup, *,
           timeout: float, poll: float = 0.5, emit: EventSink | None = None,
           progress_every: float = 2.0) -> FollowResult:
    """Show the chain until it ends (verified, failed or cancelled) or ``timeout`` passes.

    With ``emit``, the chain is told as events (step transitions, progress at most every
    ``progress_every`` seconds while a step moves bytes, then ``end``) and ``console`` only
    gets the closing sentence."""
    started = time.monotonic()
    if emit is not None:
        result = _poll(journal, backup_id, timeout, poll,
                       _EventTeller(emit, lookup, progress_every).seen)
        emit(end_event(backup_id, result, utc_now()))
    elif console.is_terminal:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            result = _poll(journal, backup_id, timeout, poll, lambda record: live.update(
                render(record, lookup, time.monotonic() - started)))
    else:
        result = _poll(journal, backup_id, timeout, poll, _LineTeller(console, lookup).seen)
    if result.state == "timeout":
        console.print(f"[red]backup {backup_id}: not finished after {timeout:.0f}s[/]")
        return result
    return _report(result, backup_id, console)


class _LineTeller:
    """Each change of a step as a line (CI logs, pipes)."""

    def __init__(self, console: Console, lookup: ProgressLookup) -> None:
        self.console, self.lookup = console, lookup
        self.shown: dict[Step, tuple[StepState, str]] = {}

    def seen(self, record: BackupRecord) -> None:
        for step in STEPS:
            rec = record.steps[step]
            done, _ = _step_bytes(record, step, self.lookup)
            key = (rec.state, rec.detail)
            if self.shown.get(step) != key and rec.state is not StepState.PENDING:
                self.shown[step] = key
                size = f" ({_human(done)})" if done else ""
                self.console.print(f"  {_MARK[rec.state]} {step.value:<9} {rec.state.value}"
                                   f"{size} {rec.detail}", highlight=False, soft_wrap=True)


class _EventTeller:
    """Each step transition as an event, and a running step's bytes now and then."""

    def __init__(self, emit: EventSink, lookup: ProgressLookup, every: float) -> None:
        self.emit, self.lookup, self.every = emit, lookup, every
        self.states: dict[Step, StepState] = {}
        self.last_progress = float("-inf")

    def seen(self, record: BackupRecord) -> None:
        now = utc_now()
        for step in STEPS:
            state = record.steps[step].state
            done, elapsed = _step_bytes(record, step, self.lookup)
            if state is not StepState.PENDING and self.states.get(step) is not state:
                self.states[step] = state
                self.emit(step_event(record, step, done, now))
            elif done and time.monotonic() - self.last_progress >= self.every:
                self.last_progress = time.monotonic()
                self.emit(progress_event(record.backup_id, step, done, elapsed, now))


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
