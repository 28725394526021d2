"""Shell completion: ``regionvault --install-completion`` installs a script that a real shell
sources, and the script completes commands and options by asking the console script itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: the console script as pip installed it (completion is a property of that script's name)
REGIONVAULT = Path(sys.executable).with_name("regionvault")


def _env(home: Path, **extra: str) -> dict[str, str]:
    path = f"{REGIONVAULT.parent}{os.pathsep}{os.environ['PATH']}"
    return {"HOME": str(home), "PATH": path, "LANG": "C.UTF-8", **extra}


def _complete(home: Path, words: list[str]) -> list[str]:
    """What the console script offers for the last of ``words`` (bash's protocol)."""
    result = subprocess.run(
        [str(REGIONVAULT)], capture_output=True, text=True, timeout=60, check=False,
        env=_env(home, _REGIONVAULT_COMPLETE="complete_bash", COMP_WORDS=" ".join(words),
                 COMP_CWORD=str(len(words) - 1)))
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_commands_and_options_complete(tmp_path: Path) -> None:
    assert _complete(tmp_path, ["regionvault", "sta"]) == ["status"]
    assert "restore" in _complete(tmp_path, ["regionvault", "re"])
    assert "flower" in _complete(tmp_path, ["regionvault", "fl"])  # the console script's own
    assert _complete(tmp_path, ["regionvault", "status", "--do"]) == ["--domain"]
    assert "--local" in _complete(tmp_path, ["regionvault", "verify", "--"])


def test_install_completion_writes_a_script_that_bash_uses(tmp_path: Path) -> None:
    # run from bash, as an operator does: the shell to install for is the one it runs in
    installed = subprocess.run(["bash", "-c", f"'{REGIONVAULT}' --install-completion"],
                               capture_output=True, text=True, timeout=60, check=False,
                               env=_env(tmp_path))
    assert installed.returncode == 0, installed.stderr
    script = tmp_path / ".bash_completions" / "regionvault.sh"
    assert script.is_file(), installed.stdout
    assert f"source '{script}'" in (tmp_path / ".bashrc").read_text()

    # a real bash sources what ~/.bashrc names and completes through it
    used = subprocess.run(
        ["bash", "-c", f"source '{script}'; COMP_WORDS=(regionvault retry --); COMP_CWORD=2; "
                       "_regionvault_completion regionvault; printf '%s\\n' \"${COMPREPLY[@]}\""],
        capture_output=True, text=True, timeout=60, check=False, env=_env(tmp_path))
    assert used.returncode == 0, used.stderr
    offered = used.stdout.split()
    assert {"--from", "--wait"} <= set(offered), offered


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o default -F"),
                                               ("zsh", "#compdef regionvault"),
                                               ("fish", "complete --command regionvault")])
def test_each_shells_script_is_printed_for_a_by_hand_install(tmp_path: Path, shell: str,
                                                              marker: str) -> None:
    # what the README gives for zsh and fish: _REGIONVAULT_COMPLETE=source_<shell> regionvault
    shown = subprocess.run([str(REGIONVAULT)], capture_output=True, text=True, timeout=60,
                           check=False, env=_env(tmp_path, _REGIONVAULT_COMPLETE=f"source_{shell}"))
    assert shown.returncode == 0, shown.stderr
    assert marker in shown.stdout and f"complete_{shell}" in shown.stdout, shown.stdout
