"""Acceptance 6: the environment of a running ``pg_dump`` (``/proc/PID/environ``) holds no
``REGIONVAULT_KEY`` variable and no key bytes, although the process that starts it holds the
domain key in its own environment.

The dump step runs in this process, in a thread, so its ``pg_dump`` is a child of this
process. It is held running: this test holds an ACCESS EXCLUSIVE lock on the table it must
dump, so pg_dump waits for its ACCESS SHARE lock until the test has read its environment.
(Holding the dump's ``write`` instead would not do: the source reads pg_dump's output 1 MiB at
a time, so with a small database the first write comes after pg_dump has already exited.)
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from regionvault.chain import StepOutcome, dump
from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.manifest import new_backup_id
from tests.integration.helpers import context
from tests.integration.test_no_plaintext import domain_keys, key_forms

# Reads /proc/PID/environ: Linux only, as every machine this project runs on. Without /proc
# the test fails (finding no pg_dump) rather than skipping.
pytestmark = pytest.mark.stack

DOMAIN = Domain.EU
SOURCE = "accounts"
#: a table of the EU accounts source (``sample.SAMPLE_SOURCES``)
TABLE = "customers"


def _children_named(comm: str) -> list[int]:
    """Live processes whose parent is this process and whose command name is ``comm``."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if name == comm and int(ppid) == os.getpid() and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _wait_for_child(comm: str, running: Future[StepOutcome] | None = None,
                    timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running is not None and running.done():
            running.result()  # raises what stopped the dump
            raise AssertionError(f"the dump finished before its {comm} was seen")
        pids = _children_named(comm)
        if pids:
            assert len(pids) == 1, f"more than one {comm} child: {pids}"
            return pids[0]
        time.sleep(0.01)
    raise AssertionError(f"no {comm} child of this process appeared in {timeout}s")


def _variables(environ: bytes) -> dict[bytes, bytes]:
    pairs = (entry.partition(b"=") for entry in environ.split(b"\0") if entry)
    return {name: value for name, _, value in pairs}


def test_running_pg_dump_has_no_key_in_its_environment(stack: DevStack,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert stack.postgres is not None
    domain_key = domain_keys(stack)[DOMAIN][0]
    # The worker's environment as a deployment may give it: the domain key in base64, cloud
    # credentials, regionvault's settings (the stack fixture has already set those).
    monkeypatch.setenv("REGIONVAULT_KEY_EU", base64.b64encode(domain_key).decode())
    aws_secret = f"rv-aws-canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_secret)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", f"/nonexistent/{uuid.uuid4().hex}.json")
    forms = key_forms(domain_key)

    # Positive control: a child that simply inherits this environment shows the key where
    # this test looks, found the way the test finds pg_dump. So the same reading of
    # pg_dump's environment below would see a leak.
    control = subprocess.Popen(["sleep", "30"])
    try:
        control_environ = Path(f"/proc/{_wait_for_child('sleep')}/environ").read_bytes()
    finally:
        control.kill()
        control.wait()
    assert b"REGIONVAULT_KEY_EU" in _variables(control_environ)
    assert forms["base64"] in control_environ
    assert aws_secret.encode() in control_environ

    ctx = context(stack, DOMAIN)
    backup_id = new_backup_id(DOMAIN, SOURCE, ctx.clock())
    dsn = stack.postgres.dsn(sample.database_name(DOMAIN, SOURCE))
    try:
        with psycopg.connect(dsn) as lock, ThreadPoolExecutor(max_workers=1) as pool:
            lock.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
            running = pool.submit(dump, ctx, backup_id)
            try:
                pid = _wait_for_child("pg_dump", running)
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                # still the same process, alive, after the reads: they read its environment
                assert pid in _children_named("pg_dump")
            finally:
                lock.rollback()  # pg_dump gets its lock and the dump goes on
            outcome = running.result(timeout=60)
        assert not outcome.skipped and outcome.bytes > 0, outcome

        # it is the dump step's pg_dump, and its environment was really read
        assert b"--snapshot=" in cmdline
        variables = _variables(environ)
        assert variables.get(b"PATH"), "pg_dump's environment was not read"

        assert not [n for n in variables if n.startswith(b"REGIONVAULT_KEY")]
        assert not [n for n in variables if n.startswith(b"REGIONVAULT_")], sorted(variables)
        assert b"AWS_SECRET_ACCESS_KEY" not in variables
        assert aws_secret.encode() not in environ
        assert b"GOOGLE_APPLICATION_CREDENTIALS" not in variables
        for form, value in forms.items():
            assert value not in environ, f"the EU domain key ({form}) is in pg_dump's environment"
            assert value not in cmdline, f"the EU domain key ({form}) is on pg_dump's command line"
    finally:
        ctx.spool.clean(backup_id)
