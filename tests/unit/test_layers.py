"""The dependency rules of the layout, read from the source with ``ast`` (nothing is imported).

1. The core (``regionvault/``) imports no Celery (``celery``, ``kombu``, ``billiard``,
   ``flower``), and neither ``tasks`` nor ``workers``: it is a library the Celery side calls.
2. No import circles among the modules of ``regionvault/``, ``tasks/`` and ``workers/`` (and
   the top-level ``beat_schedule`` and ``regionvault_cli``).
3. ``workers/`` never imports ``tasks/``: tasks import the app, and the app finds the tasks
   by Celery's own ``imports``/``include`` strings.

And the core's command line runs on a ``Dispatcher`` that is not Celery's: it reaches the
workers through that seam alone, and only after it has checked its input.

Every ``import`` counts, wherever it is written: at module level, inside a function (a lazy
import is still a dependency), under ``if TYPE_CHECKING``. Relative imports are resolved. A
package's ``__init__`` is a module of its own (``workers`` is ``workers/__init__.py``);
importing ``workers.app`` is an edge to ``workers.app``, not to ``workers``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from regionvault.dispatch import Dispatcher, RestoreRequest, Started, TaskResult
from regionvault.domains import Domain
from regionvault.journal import ClaimMode, Journal
from regionvault.lease import LeaseStore, RedisLeaseStore
from regionvault.manifest import Step
from tests.unit import config_data

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("regionvault", "tasks", "workers")
#: modules outside the packages, in the graph too (the beat schedule, the console script)
TOP_LEVEL_MODULES = ("beat_schedule", "regionvault_cli")

#: what the core must not import, by top-level name
CELERY_FAMILY = frozenset({"celery", "kombu", "billiard", "flower"})
NOT_IN_CORE = CELERY_FAMILY | {"tasks", "workers"}


@dataclass(frozen=True)
class Import:
    """One import statement's target, as the importing module names it (resolved)."""

    module: str  # the importing module, e.g. "regionvault.cli.common"
    path: Path
    line: int
    target: str  # what it imports, absolute, e.g. "workers.journal" or "celery.result"

    def describe(self, root: Path) -> str:
        return f"{self.module} ({self.path.relative_to(root)}:{self.line}) imports {self.target}"


def modules_under(root: Path) -> dict[str, Path]:
    """Every module of the checked packages: dotted name -> file."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    for name in TOP_LEVEL_MODULES:
        if (root / f"{name}.py").is_file():
            found[name] = root / f"{name}.py"
    return found


def _package_of(module: str, path: Path) -> str:
    """The package a relative import in ``module`` starts from."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imports_of(module: str, path: Path, known: Mapping[str, Path]) -> Iterator[Import]:
    """Every import written in ``path``, at any depth, with its target made absolute.

    ``from a.b import c`` targets ``a.b.c`` when that is a module, else ``a.b`` (``c`` is a
    name defined in ``a.b``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(module, path).split(".")
                up = node.level - 1
                if up >= len(package):
                    raise AssertionError(f"{path}:{node.lineno}: a relative import above the "
                                         "top-level package")
                base = package[:len(package) - up]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            for alias in node.names:
                candidate = f"{stem}.{alias.name}"
                target = candidate if alias.name != "*" and candidate in known else stem
                yield Import(module, path, node.lineno, target)


def _ours(target: str, known: Mapping[str, Path]) -> str | None:
    """The module of the checked packages that ``target`` is (or is a name inside), if any."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in known:
            return name
    return None


def import_graph(root: Path) -> tuple[dict[str, list[Import]], dict[str, Path]]:
    known = modules_under(root)
    return {m: list(imports_of(m, p, known)) for m, p in known.items()}, known


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def core_violations(root: Path) -> list[str]:
    graph, _ = import_graph(root)
    return [i.describe(root) for module, found in graph.items() if _top(module) == "regionvault"
            for i in found if _top(i.target) in NOT_IN_CORE]


def workers_violations(root: Path) -> list[str]:
    graph, _ = import_graph(root)
    return [i.describe(root) for module, found in graph.items() if _top(module) == "workers"
            for i in found if _top(i.target) == "tasks"]


def cycles(root: Path) -> list[list[Import]]:
    """The import circles, one per back edge a depth-first search meets (each circle once,
    whichever module it is entered from)."""
    graph, known = import_graph(root)
    edges: dict[str, list[tuple[str, Import]]] = {}
    for module, found in graph.items():
        targets: dict[str, Import] = {}
        for imp in found:
            dest = _ours(imp.target, known)
            if dest is not None and dest != module and dest not in targets:
                targets[dest] = imp
        edges[module] = sorted(targets.items())
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    stack: list[tuple[str, Import | None]] = []
    found_cycles: list[list[Import]] = []
    seen: set[frozenset[str]] = set()

    def visit(module: str) -> None:
        color[module] = grey
        for dest, imp in edges[module]:
            stack.append((dest, imp))
            if color[dest] == grey:
                start = next(i for i, (m, _) in enumerate(stack) if m == dest)
                circle = [step for _, step in stack[start + 1:] if step is not None]
                key = frozenset(i.module for i in circle)
                if key not in seen:
                    seen.add(key)
                    found_cycles.append(circle)
            elif color[dest] == white:
                visit(dest)
            stack.pop()
        color[module] = black

    for module in sorted(graph):
        if color[module] == white:
            stack.append((module, None))
            visit(module)
            stack.pop()
    return found_cycles


def describe_cycle(circle: list[Import], root: Path) -> str:
    names = " -> ".join([*(i.module for i in circle), circle[0].module])
    return f"{names}: " + "; ".join(i.describe(root) for i in circle)


# --- the rules, on this checkout ---------------------------------------------------------------


def test_the_core_imports_no_celery_tasks_or_workers() -> None:
    found = core_violations(ROOT)
    assert not found, ("the core (regionvault/) must not import Celery, tasks or workers:\n  "
                       + "\n  ".join(found))


def test_workers_never_import_tasks() -> None:
    found = workers_violations(ROOT)
    assert not found, ("workers/ must not import tasks/ (the app finds tasks by Celery's "
                       "'imports' strings):\n  " + "\n  ".join(found))


def test_no_import_circles() -> None:
    found = [describe_cycle(c, ROOT) for c in cycles(ROOT)]
    assert not found, "import circles:\n  " + "\n  ".join(found)


# --- the checker itself, on a small tree made for it ---------------------------------------------


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    _write(tmp_path, {
        "regionvault/__init__.py": "",
        "regionvault/a.py": "from . import b\n",
        # a lazy import, and a relative one two levels up, still count
        "regionvault/b.py": "def f():\n    from .sub.c import thing\n",
        "regionvault/sub/__init__.py": "",
        "regionvault/sub/c.py": ("from .. import a\n"
                                 "def g():\n    from celery.result import AsyncResult\n"),
        "regionvault/d.py": "import workers.app\nfrom typing import Any\n",
        "tasks/__init__.py": "from tasks import t\n",
        "tasks/t.py": "from workers.app import app\n",
        "workers/__init__.py": "from workers.app import app\n",
        "workers/app.py": "def later():\n    import tasks.t\n",
    })
    return tmp_path


def test_the_checker_finds_lazy_and_relative_imports(tree: Path) -> None:
    graph, _ = import_graph(tree)
    assert [i.target for i in graph["regionvault.a"]] == ["regionvault.b"]
    assert [i.target for i in graph["regionvault.b"]] == ["regionvault.sub.c"]
    assert [i.target for i in graph["regionvault.sub.c"]] == ["regionvault.a",
                                                               "celery.result"]


def test_the_checker_names_the_offending_module_and_import(tree: Path) -> None:
    core = core_violations(tree)
    assert any(v.startswith("regionvault.sub.c (regionvault/sub/c.py:3) imports celery.result")
               for v in core), core
    assert any("regionvault.d (regionvault/d.py:1) imports workers.app" in v for v in core)
    assert workers_violations(tree) == ["workers.app (workers/app.py:2) imports tasks.t"]


def test_the_checker_finds_circles_through_lazy_imports(tree: Path) -> None:
    found = {frozenset(i.module for i in c) for c in cycles(tree)}
    assert frozenset({"regionvault.a", "regionvault.b", "regionvault.sub.c"}) in found
    assert frozenset({"tasks.t", "workers.app"}) in found
    # a package __init__ importing its own submodule is not a circle
    assert not any(c <= {"tasks", "tasks.t"} and "tasks" in c for c in found)
    (text,) = [describe_cycle(c, tree) for c in cycles(tree)
               if {i.module for i in c} == {"tasks.t", "workers.app"}]
    assert "workers.app (workers/app.py:2) imports tasks.t" in text


# --- the core's command line runs on any Dispatcher (here one without Celery) ----------------


class _FakeWorkers:
    """A ``Dispatcher`` that records what it is asked, over a real journal."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def journal(self) -> Journal:
        return self._journal

    def leases(self) -> LeaseStore:
        return RedisLeaseStore(self._journal.client)

    def start_run(self, domain: str, source: str, backup_id: str, *, start_at: Step = Step.DUMP,
                  mode: ClaimMode = "new", deep_verify: bool = False,
                  note: str = "") -> Started:
        self.calls.append(("start_run", (domain, source, backup_id, start_at, mode)))
        claim = self._journal.claim(backup_id, start_at, mode=mode)
        if not claim.accepted:
            return Started(claim)
        self._journal.handed_off(backup_id, start_at, f"task-{start_at.value}")
        return Started(claim, f"task-{start_at.value}")

    def progress(self, task_id: str) -> dict[str, Any] | None:
        return None

    def revoke(self, task_ids: Sequence[str]) -> None:
        self.calls.append(("revoke", tuple(task_ids)))

    def discard(self, backup_id: str, domain: str, source: str) -> str:
        self.calls.append(("discard", (backup_id, domain, source)))
        return "task-discard"

    def restore_drill(self, domain: str, source: str | None) -> str:
        self.calls.append(("restore_drill", (domain, source)))
        return "task-drill"

    def verify(self, backup_id: str, domain: str, source: str, *, deep: bool) -> str:
        self.calls.append(("verify", (backup_id, domain, source, deep)))
        return "task-verify"

    def check(self, domain: str, *, within: float) -> str:
        self.calls.append(("check", (domain, within)))
        return "task-check"

    def restore(self, request: RestoreRequest) -> str:
        self.calls.append(("restore", (request,)))
        return "task-restore"

    def wait(self, task_id: str, *, timeout: float) -> TaskResult:
        return TaskResult(task_id, ok=True, value={"detail": "nothing was left"})


@pytest.fixture
def fake_workers(redis_url: str) -> Iterator[_FakeWorkers]:
    journal = Journal.from_url(redis_url)
    journal.client.flushdb()
    yield _FakeWorkers(journal)
    journal.client.flushdb()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "regionvault.yaml"
    path.write_text(yaml.safe_dump(config_data("eu")))
    return path


def _run(workers: _FakeWorkers, *args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from regionvault.cli import app

    connected: list[Domain] = []

    def connect(domain: Domain) -> Dispatcher:
        connected.append(domain)
        return workers

    result = CliRunner().invoke(app, list(args), obj=connect)
    assert len(connected) == len(set(connected)), f"connected more than once: {connected}"
    if not connected:
        workers.calls.append(("never connected", ()))
    return result.exit_code, result.output


def test_backup_and_cancel_go_through_the_dispatcher(fake_workers: _FakeWorkers,
                                                     config_file: Path) -> None:
    code, output = _run(fake_workers, "backup", "--domain", "eu", "--source", "accounts",
                        "--config", str(config_file))
    assert code == 0, output
    [(name, (domain, source, backup_id, start_at, mode))] = fake_workers.calls
    assert (name, domain, source, start_at, mode) == ("start_run", "eu", "accounts", Step.DUMP,
                                                      "new")
    assert f"backup {backup_id} queued in backup.eu" in output

    fake_workers.calls.clear()
    code, output = _run(fake_workers, "cancel", str(backup_id), "--config", str(config_file))
    assert code == 0, output
    assert fake_workers.calls == [("revoke", ("task-dump",)),
                                  ("discard", (backup_id, "eu", "accounts"))]
    assert f"backup {backup_id} cancelled; nothing was left" in output


def test_bad_input_is_refused_before_the_workers_are_reached(fake_workers: _FakeWorkers,
                                                             config_file: Path) -> None:
    code, output = _run(fake_workers, "backup", "--domain", "eu", "--source", "billing",
                        "--config", str(config_file))
    assert code == 2, output
    assert "source 'billing' is not configured in domain 'eu'" in output
    assert fake_workers.calls == [("never connected", ())]
