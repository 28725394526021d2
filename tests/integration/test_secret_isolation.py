"""Issue 13, acceptance 3: no process holds two domains' secrets.

A whole stack runs (each domain's worker pool, beat and Flower; once on the shared broker,
once with a broker, a beat and a Flower per domain), every domain backs up, restores and is
verified and checked through the real command line, and then every regionvault process of
the stack is inspected while it lives: the workers' main processes and their pool children,
beat, Flower, and a command line that ran ``check`` (every domain), ``verify`` and
``restore`` and waits to be looked at.

A domain's secrets are its DSNs (the contents of its ``secrets/<d>-*.dsn`` files: its
sources and its restore target), its key material (every local key of its keyring file, as
the 32 raw bytes and as the base64 the file stores) and the paths of those files. A process
holds a secret when it is in its environment (``/proc/PID/environ``), its command line, the
files it has open (``/proc/PID/fd``) or anywhere in its memory (``/proc/PID/mem``, every
readable region of ``/proc/PID/maps`` a process can have written: what Python freed but did
not overwrite counts, as it should). Paths are not looked for in memory: every process that
reads the configuration knows where each domain's secrets live, which is no secret.

The scan is shown to find secrets where they are: each domain's worker holds its own
domain's, and a command line that ran ``check --local`` for every domain in its own process
holds all three domains' (which is why ``check`` no longer does that by default).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from tests.integration.conftest import running_stack
from tests.integration.helpers import config_of

pytestmark = pytest.mark.stack

#: read /proc/PID/mem this much at a time
CHUNK = 8 << 20

#: a command line process that runs commands (``argv`` lists) one after the other in the same
#: process, as ``regionvault`` runs one, prints their exit codes, and then waits on stdin
DRIVER = r"""
import json, sys
import regionvault_cli
from regionvault import cli

codes = []
for argv in json.loads(sys.argv[1]):
    try:
        cli.main(regionvault_cli.connect_celery, regionvault_cli.app, argv=argv)
        codes.append(0)
    except SystemExit as exc:
        codes.append(exc.code if isinstance(exc.code, int) else 1)
print("RV-DRIVER-DONE " + json.dumps(codes), flush=True)
sys.stdin.read()
"""
DRIVER_MARK = "RV-DRIVER-DONE "


@dataclass
class Secrets:
    """What one domain's secrets are, as the scan looks for them."""

    domain: Domain
    #: bytes that must not be in a process's memory, environment or command line -> what
    values: dict[bytes, str] = field(default_factory=dict)
    #: files whose path must not be in its environment, command line or open files -> what
    paths: dict[str, str] = field(default_factory=dict)


def domain_secrets(stack: DevStack) -> dict[Domain, Secrets]:
    found = {d: Secrets(d) for d in Domain}
    secrets_dir = stack.data_dir / "secrets"
    for domain, secrets in found.items():
        files = sorted(secrets_dir.glob(f"{domain.value}-*.dsn"))
        assert len(files) >= 2, f"no DSN files of {domain.value} in {secrets_dir}"
        for path in files:
            secrets.values[path.read_text().strip().encode()] = f"the DSN in {path.name}"
            secrets.paths[str(path)] = f"DSN file {path.name}"
    for domain, keyring in sample.keyring_files(stack.data_dir / "keys").items():
        document = json.loads(keyring.read_text())
        local = [k for k in document["keys"] if k["wrapper"] == "local"]
        assert local, f"no local key in {keyring}"
        for key in local:
            found[domain].values[key["material"].encode()] = f"key {key['id']} (base64)"
            found[domain].values[base64.b64decode(key["material"])] = f"key {key['id']} (raw)"
        found[domain].paths[str(keyring)] = f"keyring file {keyring.name}"
    return found


# --- what a process holds ------------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    pid: int
    role: str
    cmdline: bytes
    environ: bytes


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def stack_processes(stack: DevStack) -> list[Process]:
    """Every living process that runs regionvault with this stack's configuration (its
    environment names it), but this test's own."""
    marker = f"REGIONVAULT_CONFIG={stack.env['REGIONVAULT_CONFIG']}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = _read(f"/proc/{entry}/environ")
            cmdline = _read(f"/proc/{entry}/cmdline")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone, or not ours (another user's, or the container's init)
        if marker not in environ.split(b"\0"):
            continue
        found.append(Process(int(entry), "", cmdline, environ))
    parents = {p.pid: p for p in found}
    roles = []
    for process in found:
        ppid = int(_read(f"/proc/{process.pid}/stat").decode().rsplit(")", 1)[1].split()[1])
        roles.append(Process(process.pid, _role(process, parents.get(ppid)), process.cmdline,
                             process.environ))
    return roles


def _role(process: Process, parent: Process | None) -> str:
    argv = process.cmdline.split(b"\0")
    env = dict(v.split(b"=", 1) for v in process.environ.split(b"\0") if b"=" in v)
    domain = env.get(b"REGIONVAULT_DOMAIN", b"").decode()
    if b"worker" in argv and b"celery" in process.cmdline:
        child = parent is not None and parent.cmdline == process.cmdline
        return f"worker {domain} ({'pool child' if child else 'main'})"
    if b"--domain" in argv[:-1]:  # Flower of a domain: `regionvault flower --domain D`
        domain = argv[argv.index(b"--domain") + 1].decode()
    if b"beat" in argv:
        return f"beat {domain}".strip()
    if b"flower" in argv:
        return f"flower {domain}".strip()
    if any(DRIVER_MARK.encode() in a for a in argv):
        return "command line"
    return "other: " + process.cmdline.replace(b"\0", b" ").decode(errors="replace")[:120]


def _memory_regions(pid: int) -> Iterator[tuple[int, int]]:
    """The regions of a process's memory it can have written data into: everything
    readable but the kernel's pages and the read-only mappings of files (program text,
    libraries), which hold what is on disk."""
    for line in _read(f"/proc/{pid}/maps").decode().splitlines():
        fields = line.split(maxsplit=5)
        perms, path = fields[1], (fields[5] if len(fields) > 5 else "")
        if "r" not in perms or path in ("[vvar]", "[vvar_vclock]", "[vsyscall]", "[vdso]"):
            continue
        if "w" not in perms and path.startswith("/"):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        yield start, end


def in_memory(pid: int, needles: list[bytes]) -> set[bytes]:
    """Which of ``needles`` are somewhere in the memory of process ``pid``."""
    found: set[bytes] = set()
    overlap = max(len(n) for n in needles) - 1
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for start, end in _memory_regions(pid):
            tail = b""
            position = start
            while position < end:
                try:
                    mem.seek(position)
                    block = mem.read(min(CHUNK, end - position))
                except OSError:  # a region that went away or cannot be read
                    break
                if not block:
                    break
                window = tail + block
                found.update(n for n in needles if n not in found and n in window)
                tail = window[-overlap:] if overlap else b""
                position += len(block)
            if len(found) == len(needles):
                return found
    return found


def _open_files(pid: int) -> set[str]:
    targets = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
    except OSError:
        pass
    return targets


def holdings(process: Process, secrets: dict[Domain, Secrets]) -> dict[Domain, list[str]]:
    """Each domain whose secrets ``process`` holds, with what and where."""
    needles = [v for s in secrets.values() for v in s.values]
    try:
        memory = in_memory(process.pid, needles)
    except (FileNotFoundError, ProcessLookupError):
        return {}  # it ended (a short-lived helper): it holds nothing any more
    files = _open_files(process.pid)
    held: dict[Domain, list[str]] = {}
    for domain, s in secrets.items():
        found = [f"{what} in memory" for v, what in s.values.items() if v in memory]
        found += [f"{what} in its environment" for v, what in s.values.items()
                  if v in process.environ]
        found += [f"{what} on its command line" for v, what in s.values.items()
                  if v in process.cmdline]
        found += [f"{what} in its environment" for p, what in s.paths.items()
                  if p.encode() in process.environ]
        found += [f"{what} on its command line" for p, what in s.paths.items()
                  if p.encode() in process.cmdline]
        found += [f"{what} open" for p, what in s.paths.items() if p in files]
        if found:
            held[domain] = found
    return held


# --- the stack, busy, and a command line that stays alive ------------------------------------


@pytest.fixture(scope="module", params=["shared-broker", "per-domain-brokers"])
def busy_stack(request: pytest.FixtureRequest) -> Iterator[tuple[DevStack, dict[Domain, str]]]:
    """A stack with beat and Flower, every domain backed up, verified, checked and restored
    through the command line; one verified backup id per domain."""
    options: dict[str, object] = {"beat": True, "flower": True}
    if request.param == "per-domain-brokers":
        options["per_domain_brokers"] = True
    with running_stack(f"rv-isolation-{request.param}-", **options) as dev:
        backups = {}
        for domain in Domain:
            done = regionvault(dev, "backup", "--domain", domain.value, "--all", "--wait",
                               "--timeout", "240")
            assert done.returncode == 0, done.stdout + done.stderr
            ids = re.findall(r"^backup (\S+) queued in ", done.stdout, flags=re.M)
            assert len(ids) == len(config_of(dev).domain(domain).sources), done.stdout
            backups[domain] = ids[0]
        yield dev, backups


def regionvault(stack: DevStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "regionvault_cli", *args],
                          env=stack.celery_env(), capture_output=True, text=True, timeout=600,
                          check=False, cwd=Path.cwd())


@pytest.fixture
def command_line(busy_stack: tuple[DevStack, dict[Domain, str]],
                 tmp_path: Path) -> Iterator[object]:
    """``run(commands)``: a command line process that ran ``commands`` and now waits, alive,
    to be inspected; its pid and the commands' exit codes."""
    stack, _ = busy_stack
    started: list[subprocess.Popen[bytes]] = []

    def run(commands: list[list[str]]) -> tuple[int, list[int]]:
        output = tmp_path / f"command-line-{len(started)}.out"
        with open(output, "wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-c", DRIVER, json.dumps(commands), DRIVER_MARK],
                stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.STDOUT,
                env=stack.celery_env(), cwd=Path.cwd())
        started.append(process)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            text = output.read_text(errors="replace")
            if DRIVER_MARK in text:
                codes = json.loads(text.split(DRIVER_MARK, 1)[1].splitlines()[0])
                assert codes == [0] * len(commands), text
                return process.pid, codes
            assert process.poll() is None, text
            time.sleep(0.2)
        raise AssertionError(f"the command line did not finish: {output.read_text()}")

    try:
        yield run
    finally:
        for process in started:
            process.kill()
            process.wait()


def test_no_process_holds_two_domains_secrets(
        busy_stack: tuple[DevStack, dict[Domain, str]], command_line: object) -> None:
    stack, backups = busy_stack
    commands = [["check"]]
    for backup_id in backups.values():
        commands += [["verify", backup_id, "--deep"],
                     ["restore", backup_id, "--target", "scratch", "--clean"]]
    assert callable(command_line)
    cli_pid, _ = command_line(commands)

    secrets = domain_secrets(stack)
    processes = stack_processes(stack)
    roles = sorted(p.role for p in processes)
    for domain in Domain:
        assert f"worker {domain.value} (main)" in roles, roles
        assert f"worker {domain.value} (pool child)" in roles, roles
    assert any(r.startswith("beat") for r in roles), roles
    assert any(r.startswith("flower") for r in roles), roles
    assert [p.pid for p in processes if p.role == "command line"] == [cli_pid], roles

    held = {p.pid: (p.role, holdings(p, secrets)) for p in processes}
    report = "\n".join(f"  {pid} {role}: " + "; ".join(
        f"{d.value}: {', '.join(what)}" for d, what in found.items())
        for pid, (role, found) in sorted(held.items()))
    # the scan finds what is there: each domain's workers hold that domain's secrets
    for domain in Domain:
        assert any(domain in found for role, found in held.values()
                   if role.startswith(f"worker {domain.value} ")), report
    for _, (role, found) in held.items():
        assert len(found) <= 1, f"{role} holds secrets of {len(found)} domains:\n{report}"
        if role.startswith("worker "):
            assert set(found) <= {Domain(role.split()[1])}, f"{role}:\n{report}"
        else:  # the command line, beat and Flower never need a domain's secrets
            assert not found, f"{role} holds secrets:\n{report}"


#: a process that holds one secret in each of three ways: a DSN in its memory (read from its
#: file, as a source does), a key in its environment, a keyring file open
HOLDER = r"""
import sys
dsn = open(sys.stdin.readline().strip()).read().strip()
keyring = open(sys.stdin.readline().strip(), "rb")
print("holding", flush=True)
sys.stdin.read()
"""


def test_the_scan_finds_a_secret_in_memory_in_the_environment_and_open(
        busy_stack: tuple[DevStack, dict[Domain, str]]) -> None:
    stack, _ = busy_stack
    secrets = domain_secrets(stack)
    us_dsn = next(p for p in secrets[Domain.US].paths if p.endswith("-accounts.dsn"))
    eu_key = next(v for v, what in secrets[Domain.EU].values.items() if "base64" in what)
    au_keyring = next(p for p in secrets[Domain.AU].paths if p.endswith(".keyring.json"))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE,
                              env={"PATH": os.environ["PATH"], "RV_PROBE": eu_key.decode()})
    try:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write(f"{us_dsn}\n{au_keyring}\n".encode())
        holder.stdin.flush()
        assert holder.stdout.readline() == b"holding\n"
        process = Process(holder.pid, "holder", _read(f"/proc/{holder.pid}/cmdline"),
                          _read(f"/proc/{holder.pid}/environ"))
        found = holdings(process, secrets)
    finally:
        holder.kill()
        holder.wait()
    assert found == {
        Domain.US: ["the DSN in us-accounts.dsn in memory"],
        Domain.EU: [f"{secrets[Domain.EU].values[eu_key]} in memory",
                    f"{secrets[Domain.EU].values[eu_key]} in its environment"],
        Domain.AU: [f"keyring file {Path(au_keyring).name} open"],
    }, found


def test_a_command_line_that_checks_every_domain_itself_holds_them_all(
        busy_stack: tuple[DevStack, dict[Domain, str]], command_line: object) -> None:
    """The control: ``check --local`` for every domain in one process (what ``check`` did
    before it ran on each domain's workers) is seen holding all three domains' secrets."""
    stack, _ = busy_stack
    assert callable(command_line)
    cli_pid, _ = command_line([["check", "--local"]])
    [process] = [p for p in stack_processes(stack) if p.pid == cli_pid]
    found = holdings(process, domain_secrets(stack))
    assert set(found) == set(Domain), found
    for domain in Domain:
        assert any("in memory" in what for what in found[domain]), found
