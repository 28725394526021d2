"""``regionvault completion``: shell completion of commands and options, printed or installed.

The shell is named, or taken from ``$SHELL`` (the user's login shell), never guessed from the
parent process: under ``make``, ``sudo`` or a ``bash -c`` that execs, the parent is not the
shell the user types in. The script installed asks ``regionvault`` itself for each
completion (typer's protocol, ``_REGIONVAULT_COMPLETE``), so it stays right across upgrades.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from typer.completion import get_completion_script
from typer.completion import install as install_script

from regionvault.cli.common import app, err, guarded, out
from regionvault.errors import ConfigError

PROG = "regionvault"
COMPLETE_VAR = "_REGIONVAULT_COMPLETE"


class Shell(StrEnum):
    BASH = "bash"
    ZSH = "zsh"
    FISH = "fish"


def login_shell(environ: dict[str, str] | os._Environ[str] = os.environ) -> Shell:
    """The shell ``$SHELL`` names; a clear error when it names none we complete for."""
    name = Path(environ.get("SHELL", "")).name
    try:
        return Shell(name)
    except ValueError:
        raise ConfigError(
            f"cannot tell which shell to complete for (SHELL is {name or 'not set'}): name "
            "it, e.g. regionvault completion bash") from None


@app.command()
def completion(
    shell: Annotated[Shell | None, typer.Argument(
        help="bash, zsh or fish (default: the one $SHELL names)", show_default=False)] = None,
    install: Annotated[bool, typer.Option(
        "--install", help="write the script where the shell loads it, rather than print it")]
    = False,
) -> None:
    """Shell completion: print the script (eval it, or save it), or --install it."""

    def run() -> None:
        chosen = shell or login_shell()
        if not install:
            out.file.write(get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR,
                                                 shell=chosen.value))
            return
        _, path = install_script(shell=chosen.value, prog_name=PROG, complete_var=COMPLETE_VAR)
        err.print(f"{chosen.value} completion installed in {path}; it takes effect in a new "
                  "shell", highlight=False, soft_wrap=True)

    guarded(run)
