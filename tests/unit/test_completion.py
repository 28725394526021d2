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


def test_completion_install_writes_a_script_that_bash_uses(tmp_path: Path) -> None:
    installed = subprocess.run([str(REGIONVAULT), "completion", "bash", "--install"],
                               capture_output=True, text=True, timeout=60, check=False,
                               env=_env(tmp_path))
    assert installed.returncode == 0, installed.stderr
    script = tmp_path / ".bash_completions" / "regionvault.sh"
    assert f"installed in {script}" in installed.stderr
    assert installed.stdout == ""
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
def test_completion_prints_each_shells_script(tmp_path: Path, shell: str, marker: str) -> None:
    shown = subprocess.run([str(REGIONVAULT), "completion", shell], capture_output=True,
                           text=True, timeout=60, check=False, env=_env(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert marker in shown.stdout and f"complete_{shell}" in shown.stdout, shown.stdout
    # nothing was installed: printing is all it does without --install
    assert list(tmp_path.iterdir()) == []


def test_the_shell_defaults_to_the_login_shell_and_an_unknown_one_is_refused(
        tmp_path: Path) -> None:
    zsh = subprocess.run([str(REGIONVAULT), "completion"], capture_output=True, text=True,
                         timeout=60, check=False, env=_env(tmp_path, SHELL="/usr/bin/zsh"))
    assert zsh.returncode == 0, zsh.stderr
    assert "#compdef regionvault" in zsh.stdout

    tcsh = subprocess.run([str(REGIONVAULT), "completion", "--install"], capture_output=True,
                          text=True, timeout=60, check=False, env=_env(tmp_path, SHELL="/bin/tcsh"))
    assert tcsh.returncode == 2
    assert "SHELL is tcsh" in tcsh.stderr and "regionvault completion bash" in tcsh.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written
