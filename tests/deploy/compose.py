"""docker-compose.yml as data (alone, or merged with an override file as Compose merges it),
and what the commands in it must resolve to in this package."""

from __future__ import annotations

import importlib
import importlib.metadata
import shlex
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_CONFIG = REPO / "deploy" / "compose" / "regionvault.yaml"
PER_DOMAIN_FILE = REPO / "docker-compose.per-domain-brokers.yml"
PER_DOMAIN_CONFIG = REPO / "deploy" / "compose" / "regionvault.per-domain-brokers.yaml"
PYPROJECT = REPO / "pyproject.toml"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def per_domain_compose() -> dict[str, Any]:
    """docker-compose.yml with docker-compose.per-domain-brokers.yml over it, as
    ``docker compose -f docker-compose.yml -f docker-compose.per-domain-brokers.yml`` sees it."""
    return merge_compose(compose(), load_compose_text(PER_DOMAIN_FILE.read_text()))


# --- Compose's merge of several files (the Compose specification's "Merge" chapter) -----------


class Override:
    """A value tagged ``!override``: it replaces what the earlier files said, whole."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Reset:
    """A value tagged ``!reset``: the attribute is removed from what the earlier files said."""


RESET = _Reset()


class _ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: the !override and !reset tags of override files."""


def _construct_tagged(loader: Any, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_ComposeLoader.add_constructor(
    "!override", lambda loader, node: Override(_construct_tagged(loader, node)))
_ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


def load_compose_text(text: str) -> dict[str, Any]:
    # a SafeLoader that knows two more tags
    return yaml.load(text, Loader=_ComposeLoader)


def _volume_target(entry: Any) -> Any:
    if isinstance(entry, dict):
        return entry["target"]
    parts = str(entry).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _secret_source(entry: Any) -> Any:
    return entry["source"] if isinstance(entry, dict) else entry


def _port_key(entry: Any) -> Any:
    if isinstance(entry, dict):
        return (entry.get("host_ip"), entry["target"], entry.get("published"),
                entry.get("protocol", "tcp"))
    text, _, protocol = str(entry).partition("/")
    parts = text.split(":")
    target = parts[-1]
    published = parts[-2] if len(parts) > 1 else None
    host_ip = parts[-3] if len(parts) > 2 else None
    return (host_ip, target, published, protocol or "tcp")


#: service attributes whose value the later file replaces instead of appending to it
_REPLACED = {("command",), ("entrypoint",), ("healthcheck", "test")}
#: service attributes that are sequences of unique resources, with the key of their uniqueness
_UNIQUE: dict[str, Callable[[Any], Any]] = {
    "volumes": _volume_target, "secrets": _secret_source, "configs": _secret_source,
    "ports": _port_key,
}


def _plain(value: Any) -> Any:
    """A value of an override file without its tags (for what the earlier files lack)."""
    if isinstance(value, Override):
        return _plain(value.value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not RESET}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def merge_compose(base: Any, override: Any, path: tuple[str, ...] = ()) -> Any:
    """``override`` merged into ``base`` by the rules of the Compose specification: mappings
    merge key by key; sequences append, except command, entrypoint and healthcheck.test, which
    are replaced, and volumes, secrets, configs and ports, where an entry replaces the one with
    the same unique key (volume target, secret source, ...); ``!override`` replaces whole,
    ``!reset`` removes. Anything else (a mapping over a sequence, say) is refused rather than
    guessed."""
    if isinstance(override, Override):
        return _plain(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if value is RESET:
                out.pop(key, None)
            elif key in out:
                out[key] = merge_compose(out[key], value, (*path, key))
            else:
                out[key] = _plain(value)
        return out
    if isinstance(base, list) and isinstance(override, list):
        attribute = path[2:] if len(path) > 2 and path[0] == "services" else ()
        if attribute in _REPLACED:
            return _plain(override)
        if len(attribute) == 1 and attribute[0] in _UNIQUE:
            key_of = _UNIQUE[attribute[0]]
            out_list = list(base)
            for entry in _plain(override):
                keys = [key_of(e) for e in out_list]
                if key_of(entry) in keys:
                    out_list[keys.index(key_of(entry))] = entry
                else:
                    out_list.append(entry)
            return out_list
        return [*base, *_plain(override)]
    if isinstance(base, (dict, list)) or isinstance(override, (dict, list)):
        raise AssertionError(f"cannot merge {type(override).__name__} over "
                             f"{type(base).__name__} at {'.'.join(path)}")
    return override


def enabled_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services ``docker compose up`` starts: those of no profile."""
    return {n: s for n, s in doc["services"].items() if not s.get("profiles")}


def env_after_script(env: Mapping[str, str], script: str) -> dict[str, str]:
    """The environment the programs of a one-line ``sh -c`` script see: ``env`` less what
    the script ``unset``s."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out = dict(env)
    tokens = list(lexer)
    for i, token in enumerate(tokens):
        if token == "unset" and (i == 0 or tokens[i - 1] in {";", "&&", "||"}):
            for name in tokens[i + 1:]:
                if name in {";", "&&", "||", "|"}:
                    break
                out.pop(name, None)
    return out


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
