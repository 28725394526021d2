"""A private MariaDB server for the developer stack and the tests of the ``mysql`` source.

``start_mariadb`` initialises a data directory of its own with ``mariadb-install-db`` and runs
``mariadbd`` on a free port of 127.0.0.1, with its unix socket in the work directory. Both run
with ``--no-defaults`` (it must be their first option), so ``/etc/mysql/*.cnf`` and
``~/.my.cnf`` are never read: the MariaDB this machine may run on port 3306, with its socket in
``/run/mysqld``, is neither configured nor touched by anything here.

The superuser ``root`` gets a random password before the server accepts its first connection
(``--init-file``), so the server is never open without one, and only ``root@localhost`` (the
socket) and ``root@127.0.0.1`` exist. It is a throw-away server: InnoDB does not flush at
commit and keeps no doublewrite buffer, and the event scheduler is off, so that events created
by tests are dumped and restored but never fire.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from regionvault.devstack.services import (
    HOST,
    DevstackError,
    ManagedProcess,
    ServiceStartError,
    free_port,
    run_setup,
    start_process,
    wait_until,
)

#: where Debian puts the server, which is not on a non-root user's PATH
_SBIN = Path("/usr/sbin")
# Unix socket paths are limited to 108 bytes (sun_path) on Linux; keep a margin.
_MAX_UNIX_SOCKET_PATH = 100


@dataclass(frozen=True)
class MariaDBService:
    """A private ``mariadbd`` on 127.0.0.1 (and a unix socket in its work directory)."""

    port: int
    socket: Path
    data_dir: Path
    process: ManagedProcess
    root_password: str = field(repr=False)
    host: str = HOST
    #: a socket directory made outside the work directory (its path was too long)
    _tmp_socket_dir: Path | None = field(default=None, repr=False)

    def dsn(self, user: str, password: str, database: str) -> str:
        """A ``mysql://`` DSN for this server over TCP, every part percent-encoded."""
        return (f"mysql://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:"
                f"{self.port}/{quote(database, safe='')}")

    def root_dsn(self, database: str = "mysql") -> str:
        return self.dsn("root", self.root_password, database)

    def execute(self, sql: str, args: tuple[Any, ...] | None = None, *,
                database: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement as root (autocommit); return its rows, if any."""
        import pymysql

        try:
            conn = pymysql.connect(host=self.host, port=self.port, user="root",
                                   password=self.root_password, database=database,
                                   charset="utf8mb4", autocommit=True, connect_timeout=10)
        except pymysql.MySQLError as err:
            raise DevstackError(f"cannot connect to the private MariaDB as root: {err}") from None
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        except pymysql.MySQLError as err:
            raise DevstackError(f"SQL on the private MariaDB failed: {err}") from None
        finally:
            conn.close()

    def create_database(self, name: str) -> None:
        self.execute(f"CREATE DATABASE {quote_identifier(name)} "
                     "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)}")

    def create_user(self, name: str, password: str) -> None:
        """A user that may connect from anywhere (``'name'@'%'``) with ``password``."""
        self.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (name, password))

    def grant_database(self, user: str, database: str) -> None:
        """Every privilege on ``database`` (tables, views, routines, triggers, events)."""
        # with arguments, pymysql formats the statement with %: a % in the name is doubled
        target = quote_identifier(database).replace("%", "%%")
        self.execute(f"GRANT ALL PRIVILEGES ON {target}.* TO %s@'%%'", (user,))

    def stop(self, timeout: float = 10) -> None:
        try:
            self.process.stop(timeout)
        finally:
            if self._tmp_socket_dir is not None:
                shutil.rmtree(self._tmp_socket_dir, ignore_errors=True)


def quote_identifier(name: str) -> str:
    """``name`` as a MariaDB identifier: in backquotes, a backquote doubled."""
    return "`" + name.replace("`", "``") + "`"


def mariadb_program(name: str) -> Path:
    """A server-side program (``mariadbd``, ``mariadb-install-db``): PATH, then /usr/sbin."""
    found = shutil.which(name) or shutil.which(name, path=str(_SBIN))
    if found is None:
        raise ServiceStartError(
            f"{name} is not installed: install the Debian package mariadb-server "
            "(apt-get install mariadb-server).",
            service="mariadb",
        )
    return Path(found)


def start_mariadb(workdir: Path, *, timeout: float = 60) -> MariaDBService:
    """Start a private MariaDB with its data in ``workdir/mariadb-data``; logs in ``workdir``.

    Runs ``mariadb-install-db`` (log: ``mariadb-install.log``) unless the data directory holds
    one already, then ``mariadbd`` (log: ``mariadb.log``) on a free port.
    """
    server = mariadb_program("mariadbd")
    install = mariadb_program("mariadb-install-db")
    workdir.mkdir(parents=True, exist_ok=True)
    # mariadbd refuses to run as root unless told to, and a throw-away server in a test's
    # directory has no reason to switch to the system's ``mysql`` user.
    as_root = ["--user=root"] if os.geteuid() == 0 else []

    data_dir = workdir / "mariadb-data"
    if not (data_dir / "mysql").is_dir():
        _install_db(install, data_dir, as_root, log_path=workdir / "mariadb-install.log")

    root_password = secrets.token_urlsafe(18)
    init_file = workdir / "mariadb-init.sql"
    _write_private(init_file, _init_sql(root_password))

    port = free_port()
    socket, tmp_socket_dir = _socket_path(workdir)
    argv: list[str | os.PathLike[str]] = [
        server,
        "--no-defaults",  # first: no /etc/mysql, no ~/.my.cnf, nothing of the machine's server
        *as_root,
        f"--datadir={data_dir}",
        f"--port={port}",
        f"--bind-address={HOST}",
        f"--socket={socket}",
        f"--pid-file={workdir / 'mariadbd.pid'}",
        f"--init-file={init_file}",
        "--skip-name-resolve",
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_unicode_ci",
        "--max-allowed-packet=64M",
        "--event-scheduler=OFF",
        "--innodb-buffer-pool-size=32M",
        "--innodb-flush-log-at-trx-commit=0",
        "--innodb-doublewrite=0",
        "--skip-log-bin",
    ]
    # SIGTERM is mariadbd's normal shutdown; it has no helper processes of its own.
    process = start_process("mariadb", argv, log_path=workdir / "mariadb.log",
                            stop_signal=signal.SIGTERM)
    service = MariaDBService(port=port, socket=socket, data_dir=data_dir, process=process,
                             root_password=root_password, _tmp_socket_dir=tmp_socket_dir)

    def ours() -> bool:
        rows = service.execute("SELECT @@datadir")
        # It must be our server, not one that won the race for the port.
        answered = Path(str(rows[0][0])).resolve() if rows else None
        if answered != data_dir.resolve():
            raise ServiceStartError(
                f"Port {port} answers for another MariaDB ({answered}) rather than {data_dir}; "
                "start it again.",
                service="mariadb",
            )
        return True

    try:
        wait_until(ours, timeout=timeout, what=f"root connects to {HOST}:{port}",
                   process=process)
    except BaseException:
        service.stop()
        raise
    return service


def _install_db(install: Path, data_dir: Path, as_root: list[str], *, log_path: Path) -> None:
    argv = [
        os.fspath(install),
        "--no-defaults",  # must be first, as for the server
        *as_root,
        f"--datadir={data_dir}",
        # a password login for root, set by the server's --init-file
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        "--skip-name-resolve",  # no root@<this host name>: only localhost
    ]
    run_setup("mariadb-install-db", argv, data_dir=data_dir, log_path=log_path,
              service="mariadb")


def _init_sql(root_password: str) -> str:
    # Runs at every start, before the first connection is accepted. --skip-name-resolve
    # matches a TCP login from 127.0.0.1 only against root@127.0.0.1, not root@localhost.
    literal = "'" + root_password.replace("\\", "\\\\").replace("'", "''") + "'"
    return (
        f"ALTER USER 'root'@'localhost' IDENTIFIED BY {literal};\n"
        f"CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY {literal};\n"
        f"ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY {literal};\n"
        "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;\n"
        # mariadb-install-db also makes root@::1 and root@<host name> without a password
        "DELETE FROM mysql.global_priv WHERE User = 'root' "
        "AND Host NOT IN ('localhost', '127.0.0.1');\n"
        "FLUSH PRIVILEGES;\n"
    )


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by us alone (it holds the root password)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _socket_path(workdir: Path) -> tuple[Path, Path | None]:
    """The server's unix socket: in ``workdir`` if the path is short enough."""
    candidate = workdir / "mariadb.sock"
    if len(os.fsencode(candidate)) <= _MAX_UNIX_SOCKET_PATH:
        return candidate, None
    short = Path(tempfile.mkdtemp(prefix="rvmy-"))
    return short / "mariadb.sock", short
