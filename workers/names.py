"""Task names: every regionvault task is ``regionvault.<name>``, a step's task is named after
its step (``regionvault.upload``). Routing, the guard, the metrics, the canvas and Flower's
Retry all read names through this module; it imports no Celery."""

from __future__ import annotations

from regionvault.manifest import STEPS, Step

TASK_PREFIX = "regionvault."

#: the step tasks, by task name
STEP_TASKS: dict[str, Step] = {f"{TASK_PREFIX}{s.value}": s for s in STEPS}


def task_name(name: str) -> str:
    """The full name of regionvault's task ``name`` (``discard`` -> ``regionvault.discard``)."""
    return f"{TASK_PREFIX}{name}"


def step_task(step: Step) -> str:
    """The name of the task that runs ``step``."""
    return task_name(step.value)


def step_of(name: str) -> Step | None:
    """The backup step a task runs (``regionvault.upload`` runs upload), or None."""
    return STEP_TASKS.get(name)
