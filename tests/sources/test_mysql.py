"""What the mysql source must do beyond the conformance suite, against a private mariadbd.

Routines, triggers, events and views survive a round trip; rows are counted exactly from the
dump, whatever the piece sizes and whatever trigger bodies and sql_modes try to confuse the
counting; the password reaches the programs only through a private option file that is gone
afterwards, never through argv or the environment; a target that holds anything is refused
without ``clean``; a truncated or failing restore says so in one sentence without row data.
"""

from __future__ import annotations

import os
import random
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from regionvault.errors import ConfigError, SourceError, TransientSourceError
from regionvault.sources.base import DumpInfo
from regionvault.sources.mysql import DumpRowCounter, MySQLSource
from tests.sources.kit_mysql import ACCOUNTS, ODD_TABLE, MySQLKit, mysql_kit

NAME = "shop"


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MySQLKit]:
    with mysql_kit(tmp_path_factory.mktemp("mysql")) as started:
        yield started


@pytest.fixture(scope="module")
def seeded(kit: MySQLKit) -> str:
    return kit.seeded("RV-MYSQL-CANARY")


@pytest.fixture(scope="module")
def dumped(kit: MySQLKit, seeded: str) -> tuple[bytes, DumpInfo]:
    plain = bytearray()
    info = kit.open(NAME, seeded).dump(plain.extend)
    return bytes(plain), info


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at:at + size]


def test_routines_triggers_events_and_views_survive_a_round_trip(
        kit: MySQLKit, seeded: str, dumped: tuple[bytes, DumpInfo]) -> None:
    plain, info = dumped
    objects = kit.schema_objects(seeded)
    assert set(objects) == {"event nightly_cleanup", "function account_count",
                            "procedure add_account", "trigger accounts_ai",
                            "view noted_accounts"}
    target = kit.empty_target()
    source = kit.open(NAME, seeded)
    source.check_target(target, dump=info)
    source.restore(_pieces(plain, 64 * 1024), target)
    assert kit.schema_objects(target) == objects
    assert kit.checksums(target) == kit.checksums(seeded)
    assert source.row_counts(target) == kit.expected_rows(seeded) == info.row_counts
    # and they work: the function reads the restored rows, the trigger fires on the procedure
    conn = kit.connect(target)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT account_count()")
            assert cur.fetchone()[0] == ACCOUNTS
            cur.execute("CALL add_account('new@example.com')")
            cur.execute("SELECT COUNT(*) FROM audit")
            assert cur.fetchone()[0] == ACCOUNTS + 1
    finally:
        conn.close()


def test_the_manifest_facts(dumped: tuple[bytes, DumpInfo], kit: MySQLKit,
                            seeded: str) -> None:
    plain, info = dumped
    assert info.row_counts == kit.expected_rows(seeded)
    assert "MariaDB" in info.server_version
    assert info.tool_version.startswith(kit.child_programs[0])
    assert b"RV-MYSQL-CANARY" in plain


@pytest.mark.parametrize("size", [3, 4096, 1024 * 1024, "random"])
def test_rows_are_counted_in_pieces_of_any_size(
        dumped: tuple[bytes, DumpInfo], kit: MySQLKit, seeded: str, size: int | str) -> None:
    plain, _ = dumped
    counter = DumpRowCounter()
    if size == "random":
        rng = random.Random(7)
        at = 0
        while at < len(plain):
            step = rng.choice([1, 2, 3, 17, 511, 65536])
            counter.feed(plain[at:at + step])
            at += step
    else:
        assert isinstance(size, int)
        for piece in _pieces(plain, size):
            counter.feed(piece)
    counter.finish()
    assert counter.failure is None
    assert counter.rows_by_table() == kit.expected_rows(seeded)


def test_a_truncated_dump_is_not_counted(dumped: tuple[bytes, DumpInfo]) -> None:
    plain, _ = dumped
    for cut in (len(plain) // 2, len(plain) - 40):
        counter = DumpRowCounter()
        counter.feed(plain[:cut])
        counter.finish()
        assert counter.rows_by_table() is None
        assert counter.failure in ("the dump ends inside a statement",
                                   "the dump lacks mariadb-dump's closing '-- Dump completed' line")


COMPLETED = b"\n-- Dump completed on 2026-11-30 22:49:06\n"
#: what other dump programs write (Oracle MySQL's mysqldump: one line per INSERT, a column
#: list for generated columns), and what no dump program writes but the client splits right
CRAFTED = (
    b"/*M!999999\\- enable the sandbox mode */ \n-- comment with a quote: it's\n"
    b"/*!40101 SET NAMES utf8mb4 */;\n"
    b"# a hash comment 'with a quote\n"
    b"/* a comment; with (a),(b) and INSERT INTO `t` VALUES (1); */\n"
    b"CREATE TABLE `t` (\n  `a` int, `b` varchar(9) DEFAULT 'x;y'\n);\n"
    b"CREATE TABLE `gen` (`a` int, `b` int AS (`a` * 2));\n"
    b"INSERT INTO `t` VALUES (1,'a'),(2,'it\\'s (a),(b);'),(-3,NULL),(4,0x00FF),(5,1.5e+30);\n"
    b"INSERT INTO `gen` (`a`, `b`) VALUES (1,2),\n(2,4);\n"
    b"DELIMITER ;;\n"
    b"/*!50003 CREATE*/ /*!50003 TRIGGER t_ai AFTER INSERT ON t FOR EACH ROW\n"
    b"BEGIN\n-- it's\nINSERT INTO `gen` VALUES (9, 9);\nINSERT INTO `t` VALUES (7,';;');\n"
    b"END */;;\n"
    b"DELIMITER ;\n"
    b"INSERT INTO `t` VALUES (6,'six');\n" + COMPLETED
)


def _count(data: bytes, size: int = 5) -> DumpRowCounter:
    counter = DumpRowCounter()
    for piece in _pieces(data, size):
        counter.feed(piece)
    counter.finish()
    return counter


def test_rows_of_other_dump_forms_are_counted_and_bodies_are_not_rows() -> None:
    for size in (1, 5, len(CRAFTED)):
        counter = _count(CRAFTED, size)
        assert counter.failure is None
        assert counter.rows_by_table() == {"t": 6, "gen": 2}


@pytest.mark.parametrize(("dump", "why"), [
    (b"CREATE TABLE `t` (`a` int);\nREPLACE INTO `t` VALUES (1);\n" + COMPLETED,
     "a data statement does not have mariadb-dump's form"),
    (b"CREATE TABLE `t` (`a` int);\ninsert into t values (1);\n" + COMPLETED,
     "a data statement does not have mariadb-dump's form"),
    (b"INSERT INTO `t` VALUES (1);\n" + COMPLETED,
     "an INSERT statement fills a table the dump did not create"),
    (b"DELIMITER $$\n" + COMPLETED, "the dump sets a DELIMITER other than ';' or ';;'"),
    (b"CREATE TABLE `t` (`a` int);\nINSERT INTO `t` VALUES ((1));\n" + COMPLETED,
     "a row holds a character that mariadb-dump does not write there"),
    (b"CREATE TABLE `t` (`a` int);\nCREATE TABLE `t` (`a` int);\n" + COMPLETED,
     "the dump creates table 't' twice"),
    (b"CREATE TABLE `t` (`a` int);\nINSERT INTO `t` VALUES (1),(2)",
     "the dump ends inside a statement"),
    (b"CREATE TABLE `t` (`a` int);\n", "the dump lacks mariadb-dump's closing "
                                         "'-- Dump completed' line"),
])
def test_what_the_counter_does_not_understand_is_declined_not_guessed(
        dump: bytes, why: str) -> None:
    counter = _count(dump)
    assert counter.rows_by_table() is None
    assert counter.failure == why


def test_counting_follows_the_sql_modes_triggers_were_made_with(kit: MySQLKit) -> None:
    """Under NO_BACKSLASH_ESCAPES, '\\' is a whole string, and under ANSI_QUOTES "q\\" a
    whole identifier; read with escapes, either would swallow the rest of its trigger and the
    next table's rows. The dump sets each trigger's sql_mode around it, and the client (and so
    the counter) must read its body that way."""
    dsn = kit.dsn(kit.new_database("modes"))
    conn = kit.connect(dsn)
    try:
        with conn.cursor() as cur:
            for table in ("a_first", "b_second", "c_third"):
                cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, note TEXT)")
            cur.execute("SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'")
            cur.execute("CREATE TRIGGER a_first_bi BEFORE INSERT ON a_first FOR EACH ROW "
                        "SET NEW.note = CONCAT(NEW.note, '\\', 'INSERT INTO `c_third` "
                        "VALUES (1, 2);')")
            cur.execute("SET SESSION sql_mode = 'ANSI_QUOTES'")
            cur.execute("CREATE TRIGGER b_second_bi BEFORE INSERT ON b_second FOR EACH ROW "
                        "SET NEW.note = (SELECT 'INSERT INTO `c_third` VALUES (3, 4);' "
                        'AS "q\\")')
            cur.execute("SET SESSION sql_mode = DEFAULT")
            for table, rows in (("a_first", 5), ("b_second", 6), ("c_third", 7)):
                cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)",
                                [(i, f"{table}'\\{i}") for i in range(rows)])
    finally:
        conn.close()
    source = kit.open(NAME, dsn)
    plain = bytearray()
    info = source.dump(plain.extend)
    # the cases are really in the dump, each with its sql_mode
    assert b"CONCAT(NEW.note, '\\', 'INSERT INTO `c_third`" in plain
    assert b'AS "q\\")' in plain
    assert b"sql_mode              = 'NO_BACKSLASH_ESCAPES'" in plain
    assert b"sql_mode              = 'ANSI_QUOTES'" in plain
    assert info.row_counts == {"a_first": 5, "b_second": 6, "c_third": 7}
    byte_by_byte = DumpRowCounter()
    for at in range(len(plain)):
        byte_by_byte.feed(bytes(plain[at:at + 1]))
    byte_by_byte.finish()
    assert byte_by_byte.rows_by_table() == info.row_counts
    target = kit.empty_target()
    source.restore([bytes(plain)], target)
    assert kit.checksums(target) == kit.checksums(dsn)
    assert kit.schema_objects(target) == kit.schema_objects(dsn)


def _children_argv() -> dict[int, bytes]:
    me = os.getpid()
    found: dict[int, bytes] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
            if ppid == me:
                found[int(entry.name)] = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # gone already
    return found


def _option_file_of(program: str) -> Path:
    """The --defaults-file of our running child ``program``."""
    for argv in _children_argv().values():
        args = argv.split(b"\0")
        if os.path.basename(args[0]).decode() == program:
            assert args[1].startswith(b"--defaults-file="), "it must be the first option"
            return Path(args[1].split(b"=", 1)[1].decode())
    raise AssertionError(f"{program} is not running")


def _assert_private(path: Path) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.stat().st_uid == os.getuid()
    # positive control: this file is how the password travels
    text = path.read_text(encoding="utf-8")
    assert text.startswith("[client]\n") and "\npassword=" in text


def test_the_password_travels_in_a_private_option_file_that_is_then_gone(
        kit: MySQLKit, seeded: str, dumped: tuple[bytes, DumpInfo]) -> None:
    assert kit.password is not None
    seen: list[Path] = []

    def write(chunk: bytes) -> None:
        if not seen:  # the dump program is running while it writes to us
            seen.append(_option_file_of(kit.child_programs[0]))
            _assert_private(seen[-1])

    kit.open(NAME, seeded).dump(write)
    plain, _ = dumped

    def chunks() -> Iterator[bytes]:
        for number, piece in enumerate(_pieces(plain, 256 * 1024)):
            if number == 1:  # the client is running while it reads from us
                seen.append(_option_file_of(kit.child_programs[1]))
                _assert_private(seen[-1])
            yield piece

    kit.open(NAME, seeded).restore(chunks(), kit.empty_target())
    assert len(seen) == 2
    for path in seen:
        assert not path.exists() and not path.parent.exists()


@contextmanager
def _watching() -> Iterator[dict[int, tuple[bytes, bytes]]]:
    """The argv and environment of every process on the machine but this one (whose own
    environment a test may have changed), polled while the block runs."""
    seen: dict[int, tuple[bytes, bytes]] = {}
    me = os.getpid()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit() or int(entry.name) == me:
                    continue
                try:
                    argv = Path(f"/proc/{entry.name}/cmdline").read_bytes()
                    environ = Path(f"/proc/{entry.name}/environ").read_bytes()
                except OSError:
                    continue  # gone already, or a kernel thread
                if argv:
                    seen[int(entry.name)] = (argv, environ)
            time.sleep(0.002)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def test_the_password_is_on_no_argv_and_in_no_environment(
        kit: MySQLKit, seeded: str, dumped: tuple[bytes, DumpInfo]) -> None:
    assert kit.password is not None
    plain, _ = dumped
    slow = threading.Event()

    def chunks() -> Iterator[bytes]:
        for piece in _pieces(plain, 64 * 1024):
            yield piece
            if not slow.is_set():
                time.sleep(0.1)  # long enough for the watcher to see the client
                slow.set()

    with _watching() as seen:
        kit.open(NAME, seeded).dump(lambda chunk: time.sleep(0.001))
        kit.open(NAME, seeded).restore(chunks(), kit.empty_target())
    programs = {os.path.basename(argv.split(b"\0", 1)[0]).decode()
                for argv, _ in seen.values()}
    # positive control: both programs were seen running, with the database on their argv
    assert set(kit.child_programs) <= programs, sorted(programs)
    database = seeded.rsplit("/", 1)[1].encode()
    assert any(database in argv for argv, _ in seen.values())
    secret = kit.password.encode()
    for pid, (argv, environ) in seen.items():
        assert secret not in argv, f"the password is on the argv of {pid}"
        assert secret not in environ, f"the password is in the environment of {pid}"
        assert b"MYSQL_PWD" not in environ


def test_a_dropped_connection_is_transient(kit: MySQLKit, seeded: str) -> None:
    killed: list[int] = []

    def write(chunk: bytes) -> None:
        if not killed:  # mariadb-dump is connected and dumping: cut it off, as a failover does
            for (session,) in kit.server.execute(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'rv_kit'"):
                kit.server.execute(f"KILL CONNECTION {int(session)}")
                killed.append(int(session))

    with pytest.raises(TransientSourceError) as caught:
        kit.open(NAME, seeded).dump(write)
    assert killed, "no session of the dump was found to kill"
    assert str(caught.value).startswith("mariadb-dump of source 'shop' failed (exit ")
    assert "\n" not in str(caught.value)


def test_a_target_that_holds_anything_is_refused_without_clean(
        kit: MySQLKit, seeded: str, dumped: tuple[bytes, DumpInfo]) -> None:
    plain, info = dumped
    source = kit.open(NAME, seeded)
    occupied = kit.dsn(kit.new_database("occupied"))
    conn = kit.connect(occupied)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE accounts (id INT PRIMARY KEY)")  # a name the dump has
            cur.execute("INSERT INTO accounts VALUES (42)")
            cur.execute("CREATE TABLE leftover (id INT)")
            cur.execute("CREATE VIEW leftover_view AS SELECT id FROM leftover")
            cur.execute("CREATE PROCEDURE leftover_proc() SELECT 1")
    finally:
        conn.close()
    held = kit.checksums(occupied)
    expected = (f"the target database '{occupied.rsplit('/', 1)[1]}' for source 'shop' is not "
                "empty (it holds 2 tables, 1 view, 1 routine): restore into an empty database, "
                "or pass --clean to replace what it holds")
    with pytest.raises(SourceError) as checked:
        source.check_target(occupied, dump=info)
    assert str(checked.value) == expected
    with pytest.raises(SourceError) as restored:
        source.restore([plain], occupied)
    assert str(restored.value) == expected
    assert kit.checksums(occupied) == held, "a refused restore changed the target"
    source.check_target(occupied, clean=True, dump=info)  # clean: nothing to refuse
    source.restore([plain], occupied, clean=True)
    assert kit.checksums(occupied) == kit.checksums(seeded)
    assert kit.schema_objects(occupied) == kit.schema_objects(seeded)


def test_a_truncated_stream_is_refused_and_a_clean_rerun_replaces_what_it_left(
        kit: MySQLKit, seeded: str, dumped: tuple[bytes, DumpInfo]) -> None:
    plain, _ = dumped
    source = kit.open(NAME, seeded)
    target = kit.empty_target()
    with pytest.raises(SourceError) as caught:
        source.restore(_pieces(plain[:len(plain) // 2], 64 * 1024), target)
    assert str(caught.value) == (
        "the backup of source 'shop' is truncated (it lacks mariadb-dump's closing '-- Dump "
        "completed' line) and was restored only in part: restore a complete backup with "
        "--clean")
    assert not isinstance(caught.value, TransientSourceError)
    # what it left is refused as it stands, and replaced by a clean restore
    with pytest.raises(SourceError, match="--clean"):
        source.check_target(target)
    source.restore(_pieces(plain, 64 * 1024), target, clean=True)
    assert kit.checksums(target) == kit.checksums(seeded)


def test_a_stream_that_fails_its_checks_kills_the_client_uncommitted(
        kit: MySQLKit, seeded: str, dumped: tuple[bytes, DumpInfo]) -> None:
    plain, _ = dumped
    # the dump up to the end of the last table's rows: no DDL after them commits them
    start = plain.index(b"INSERT INTO `" + ODD_TABLE.replace("`", "``").encode() + b"` VALUES")
    prefix = plain[:plain.index(b");\n", start) + 3]

    class StreamBroken(Exception):
        pass

    target = kit.empty_target()
    database = target.rsplit("/", 1)[1]

    def ran_it_all() -> bool:
        # the client has created the last table and is idle: it has run every row it got
        tables = kit.server.execute(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND "
            "TABLE_NAME = %s", (database, ODD_TABLE))
        idle = kit.server.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s AND "
            "COMMAND = 'Sleep'", (database,))
        return bool(tables[0][0]) and bool(idle[0][0])

    def chunks() -> Iterator[bytes]:
        yield from _pieces(prefix, 64 * 1024)
        deadline = time.monotonic() + 30
        while not ran_it_all():
            assert time.monotonic() < deadline, "the client never ran the rows it was given"
            time.sleep(0.01)
        raise StreamBroken  # as restore's SHA-256 check does after the last piece

    with pytest.raises(StreamBroken):
        kit.open(NAME, seeded).restore(chunks(), target)
    programs = {os.path.basename(argv.split(b"\0", 1)[0]).decode()
                for argv in _children_argv().values()}
    assert kit.child_programs[1] not in programs, "the client outlived the failed stream"
    # those rows were sent but never committed: the COMMIT comes only after the checks
    assert kit.open(NAME, seeded).row_counts(target).get(ODD_TABLE, 0) == 0


def test_a_failing_restore_names_the_error_without_row_data(
        kit: MySQLKit, seeded: str, dumped: tuple[bytes, DumpInfo]) -> None:
    plain, _ = dumped
    # a row the server cannot parse: its error message quotes the row "near '...'"
    broken = plain.replace(b",'user2@example.com',", b",'user2@example.com' oops,", 1)
    assert broken != plain
    with pytest.raises(SourceError) as caught:
        kit.open(NAME, seeded).restore([broken], kit.empty_target())
    message = str(caught.value)
    assert message.startswith("mariadb restore of the backup of source 'shop' failed (exit 1): "
                              "ERROR 1064 (42000) at line ")
    assert message.endswith(": an SQL syntax error (the server's message is not shown: it can "
                            "quote SQL or row data)")
    assert "oops" not in message and "User 2" not in message and "\n" not in message
    assert type(caught.value) is SourceError


def test_a_duplicate_key_fails_the_restore_at_the_commit(
        kit: MySQLKit, seeded: str, dumped: tuple[bytes, DumpInfo]) -> None:
    """With the dump's UNIQUE_CHECKS=0, InnoDB loads an empty table in bulk within the
    transaction and finds a duplicate only when the next DDL statement commits it."""
    plain, _ = dumped
    broken = plain.replace(b"'user2@example.com'", b"'user1@example.com'", 1)
    target = kit.empty_target()
    with pytest.raises(SourceError) as caught:
        kit.open(NAME, seeded).restore([broken], target)
    assert "ERROR 1180 (HY000) at line " in str(caught.value)
    assert str(caught.value).endswith(': Got error 1 "Operation not permitted" during COMMIT')
    assert "user1@example.com" not in str(caught.value)
    # the table's rows were rolled back as one: none of them is there
    assert kit.open(NAME, seeded).row_counts(target)["accounts"] == 0


def test_target_connection_failures_are_classified(kit: MySQLKit, seeded: str) -> None:
    source = kit.open(NAME, seeded)
    wrong = kit.wrong_password_dsn(kit.empty_target())
    assert wrong is not None
    with pytest.raises(SourceError) as denied:
        source.check_target(wrong)
    assert type(denied.value) is SourceError
    assert "ERROR 1045 (28000): Access denied for user 'rv_kit'" in str(denied.value)
    with pytest.raises(TransientSourceError):
        source.row_counts(kit.unreachable_dsn())


def test_a_server_older_than_the_dumps_is_refused(kit: MySQLKit, seeded: str) -> None:
    source = kit.open(NAME, seeded)
    target = kit.empty_target()
    newer = DumpInfo(server_version="99.2.1-MariaDB")
    with pytest.raises(SourceError) as caught:
        source.check_target(target, dump=newer)
    assert str(caught.value).startswith(
        "the backup of source 'shop' was dumped from MariaDB 99.2.1-MariaDB and the target "
        "server runs the older 10.")
    assert str(caught.value).endswith(": restore into MariaDB 99.2 or newer")
    # the same or an older release, or the other flavour (numbers do not compare): accepted
    for version in ("10.11.0-MariaDB", "5.5.68-MariaDB", "8.4.3"):
        source.check_target(target, dump=DumpInfo(server_version=version))


def test_a_restore_side_source_has_no_dsn_to_dump() -> None:
    with pytest.raises(ConfigError, match="opened for restoring only"):
        MySQLSource(name=NAME, dsn=None).dump(lambda chunk: None)
