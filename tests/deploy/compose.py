"""docker-compose.yml as data, and what the commands in it must resolve to in this package."""

from __future__ import annotations

import importlib
import importlib.metadata
import shlex
import tomllib
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_CONFIG = REPO / "deploy" / "compose" / "regionvault.yaml"
PYPROJECT = REPO / "pyproject.toml"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def scripts() -> dict[str, str]:
    """pyproject's [project.scripts]: command name -> "module:function"."""
    return tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]


def as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


#: shell builtins a command line may use around the program it runs
SHELL_BUILTINS = {"unset"}


def shell_commands(script: str) -> list[list[str]]:
    """The programs a ``sh -c`` script runs, as argv lists (``exec`` dropped, ``unset`` kept
    out): a small reading of the shell, enough for one-line probes and health checks."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {";", "&&", "||", "|"}:
            commands.append([])
        else:
            commands[-1].append(token)
    out = []
    for command in commands:
        if command and command[0] == "exec":
            command = command[1:]
        if command and command[0] not in SHELL_BUILTINS:
            out.append(command)
    return out


def healthcheck_commands(test: str | list[str]) -> list[list[str]]:
    """The commands a Compose health check runs."""
    if isinstance(test, str):
        return shell_commands(test)
    kind, *rest = test
    if kind == "NONE":
        return []
    if kind == "CMD-SHELL":
        return shell_commands(rest[0])
    assert kind == "CMD", f"unknown health check form {kind!r}"
    return [rest]


def check_entry_point(argv: list[str]) -> str:
    """Refuse a command that is neither a console script of this package nor ``celery -A
    workers <subcommand>`` with an importable Celery app and a real celery subcommand; returns
    what the command was found to be."""
    program = Path(argv[0]).name
    if program == "celery":
        assert argv[1:3] == ["-A", "workers"], f"celery must run the regionvault app: {argv}"
        module = importlib.import_module("workers")
        from celery import Celery

        assert isinstance(getattr(module, "app", None), Celery), "workers has no Celery app"
        from celery.bin.celery import celery as celery_cli

        subcommand = argv[3]
        assert subcommand in celery_cli.commands, f"celery has no command {subcommand!r}"
        return f"celery {subcommand}"
    targets = scripts()
    assert program in targets, f"{program!r} is not a [project.scripts] entry point: {argv}"
    module_name, _, function = targets[program].partition(":")
    assert callable(getattr(importlib.import_module(module_name), function))
    if program == "regionvault" and len(argv) > 1 and not argv[1].startswith("-"):
        import typer.main

        from regionvault_cli import app

        commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
        assert argv[1] in commands, f"regionvault has no command {argv[1]!r}"
    return program


def celery_subcommands_installed() -> set[str]:
    """Subcommands that packages add to celery (Flower adds ``flower``)."""
    return {ep.name for ep in importlib.metadata.entry_points(group="celery.commands")}
