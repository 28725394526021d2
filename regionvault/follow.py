"""Follow a backup chain through the result backend and say what each step does."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from regionvault.manifest import STEPS

FINAL_STATES = {"SUCCESS", "FAILURE", "REVOKED", "REJECTED"}


def chain_results(last: Any) -> list[Any]:
    """The AsyncResults of a chain, first step first (a chain's result is its last task)."""
    results = []
    node = last
    while node is not None:
        results.append(node)
        node = node.parent
    return list(reversed(results))


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("detail", ""))
    return str(value)


def follow_chain(last: Any, backup_id: str, console: Console, *, timeout: float,
                 poll: float = 0.5) -> bool:
    """Print step transitions until the chain ends; True only if every step succeeded."""
    results = chain_results(last)
    names = [s.value for s in STEPS][-len(results):]
    seen: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i, result in enumerate(results):
            state = result.state
            if seen.get(i) == state:
                continue
            seen[i] = state
            if state == "SUCCESS":
                console.print(f"  [green]✓[/] {names[i]:<9} {_describe(result.result)}")
            elif state in ("FAILURE", "REVOKED", "REJECTED"):
                console.print(f"  [red]✗[/] {names[i]:<9} {state.lower()}: "
                              f"{_describe(result.result)}", highlight=False)
                console.print(f"[red]backup {backup_id} failed at step {names[i]}[/]")
                return False
            elif state == "RETRY":
                console.print(f"  [yellow]↻[/] {names[i]:<9} retrying: "
                              f"{_describe(result.result)}")
            elif state in ("STARTED", "PROGRESS"):
                console.print(f"  [cyan]…[/] {names[i]:<9} running")
        if results[-1].state == "SUCCESS":
            console.print(f"[green]backup {backup_id} verified[/]")
            return True
        time.sleep(poll)
    console.print(f"[red]backup {backup_id}: still running after {timeout:.0f}s[/]")
    return False
