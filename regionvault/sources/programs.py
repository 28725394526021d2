"""Running a dump program: its standard output streamed to the caller, in bounded pieces."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

#: what one read of a dump program's output takes at most (memory does not grow with the dump)
READ_SIZE = 1024 * 1024


def pump_stdout(proc: subprocess.Popen[bytes], write: Callable[[bytes], object]) -> int:
    """Pass ``proc``'s standard output to ``write`` piece by piece until it ends, then return
    its exit status. If ``write`` (or anything) fails, the program is killed first: a dump
    must not go on filling a pipe nobody reads, nor outlive the step that started it."""
    assert proc.stdout is not None
    try:
        while chunk := proc.stdout.read(READ_SIZE):
            write(chunk)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    return proc.wait()
