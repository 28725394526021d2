"""classify_failure and cause_line of the mysql source against a table of real mariadb-dump,
mariadb client and pymysql output; and DSNs that must be refused without being shown.

Transient only when the server could not be reached or dropped the connection; everything
else, above all a wrong password, is permanent. The cause line is the one a person should
read, and neither a statement the client echoes nor a server message that quotes values
(duplicate keys, syntax errors "near '...'") is ever part of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pymysql
import pytest

from regionvault.errors import ConfigError, SourceError, TransientSourceError
from regionvault.sources.mysql import (
    CAUSE_LIMIT,
    MySQLTarget,
    cause_line,
    classify_failure,
    option_file_text,
    parse_dsn,
    pymysql_failure,
    source_failure,
)

SECRET = "s3cret-row-value"
HIDDEN = "the server's message is not shown: it can quote SQL or row data"


@dataclass(frozen=True)
class Case:
    """A row of the table: the output, its class and the line the message must quote."""

    output: str
    kind: type[SourceError]
    cause: str


DUMP_WRONG_PASSWORD = ('mariadb-dump: Got error: 1045: "Access denied for user \'app\'@'
                       '\'127.0.0.1\' (using password: YES)" when trying to connect')
CLIENT_WRONG_PASSWORD = ("ERROR 1045 (28000): Access denied for user 'app'@'127.0.0.1' "
                         "(using password: YES)")
DUMP_REFUSED = ('mariadb-dump: Got error: 2002: "Can\'t connect to server on \'127.0.0.1\' '
                '(115)" when trying to connect')
CLIENT_NO_SOCKET = ("ERROR 2002 (HY000): Can't connect to local server through socket "
                    "'/run/mysqld/mysqld.sock' (2)")

CASES: dict[str, Case] = {
    # --- permanent: credentials, databases, privileges
    "mariadb-dump wrong password": Case(DUMP_WRONG_PASSWORD, SourceError, DUMP_WRONG_PASSWORD),
    "client wrong password": Case(CLIENT_WRONG_PASSWORD, SourceError, CLIENT_WRONG_PASSWORD),
    "mariadb-dump unknown database": Case(
        'mariadb-dump: Got error: 1049: "Unknown database \'nosuch\'" when selecting the '
        "database", SourceError,
        'mariadb-dump: Got error: 1049: "Unknown database \'nosuch\'" when selecting the '
        "database"),
    "client unknown database": Case(
        "ERROR 1049 (42000): Unknown database 'nosuch'", SourceError,
        "ERROR 1049 (42000): Unknown database 'nosuch'"),
    "no privilege on the database": Case(
        'mariadb-dump: Got error: 1044: "Access denied for user \'app\'@\'%\' to database '
        '\'shop\'" when selecting the database', SourceError,
        'mariadb-dump: Got error: 1044: "Access denied for user \'app\'@\'%\' to database '
        '\'shop\'" when selecting the database'),
    "missing privilege while dumping": Case(
        "mariadb-dump: Couldn't execute 'SHOW CREATE PROCEDURE `p`': SHOW command denied to "
        "user 'app'@'%' for table 'proc' (1142)", SourceError,
        "mariadb-dump: a query failed with error 1142: SHOW command denied to user 'app'@'%' "
        "for table 'proc'"),
    "unknown host": Case(
        'mariadb-dump: Got error: 2005: "Unknown server host \'db.example\' (-2)" when trying '
        "to connect", SourceError,
        'mariadb-dump: Got error: 2005: "Unknown server host \'db.example\' (-2)" when trying '
        "to connect"),
    # --- transient: not reachable, not accepting connections, or the connection dropped
    "mariadb-dump connection refused": Case(DUMP_REFUSED, TransientSourceError, DUMP_REFUSED),
    "client socket missing": Case(CLIENT_NO_SOCKET, TransientSourceError, CLIENT_NO_SOCKET),
    "name server did not answer": Case(
        'mariadb-dump: Got error: 2005: "Unknown server host \'db.example\' (-3)" when trying '
        "to connect", TransientSourceError,
        'mariadb-dump: Got error: 2005: "Unknown server host \'db.example\' (-3)" when trying '
        "to connect"),
    "too many connections": Case(
        "ERROR 1040 (HY000): Too many connections", TransientSourceError,
        "ERROR 1040 (HY000): Too many connections"),
    "gone away during a restore": Case(
        "ERROR 2006 (HY000) at line 311: Server has gone away", TransientSourceError,
        "ERROR 2006 (HY000) at line 311: Server has gone away"),
    "lost connection while dumping a table": Case(
        "mariadb-dump: Error 2013: Lost connection to server during query when dumping table "
        "`orders` at row: 4812", TransientSourceError,
        "mariadb-dump: Error 2013: Lost connection to server during query when dumping table "
        "`orders` at row: 4812"),
    "lost connection in a query of mariadb-dump's own": Case(
        "mariadb-dump: Couldn't execute 'SELECT /*!40001 SQL_NO_CACHE */ * FROM `orders`': "
        "Lost connection to server during query (2013)", TransientSourceError,
        "mariadb-dump: a query failed with error 2013: Lost connection to server during query"),
    "server shutting down": Case(
        "ERROR 1053 (08S01) at line 90: Server shutdown in progress", TransientSourceError,
        "ERROR 1053 (08S01) at line 90: Server shutdown in progress"),
    # --- messages that quote row data or SQL: the error is named, its text is not shown
    "duplicate key, with the statement echoed": Case(
        f"--------------\nINSERT INTO `t` VALUES (1,'{SECRET}')\n--------------\n\n"
        f"ERROR 1062 (23000) at line 57: Duplicate entry '{SECRET}' for key 'email'",
        SourceError,
        f"ERROR 1062 (23000) at line 57: a duplicate value for a unique key ({HIDDEN})"),
    "syntax error near a value": Case(
        "ERROR 1064 (42000) at line 12: You have an error in your SQL syntax; check the manual "
        f"that corresponds to your MariaDB server version for the right syntax to use near "
        f"''{SECRET}' at line 1", SourceError,
        f"ERROR 1064 (42000) at line 12: an SQL syntax error ({HIDDEN})"),
    "a value too long": Case(
        f"ERROR 1406 (22001) at line 40: Data too long for column 'note' at row 3 '{SECRET}'",
        SourceError, f"ERROR 1406 (22001) at line 40: a value too long for its column ({HIDDEN})"),
    "an error number nobody described": Case(
        f"ERROR 1644 (45000) at line 3: {SECRET} raised by a trigger", SourceError,
        f"ERROR 1644 (45000) at line 3 ({HIDDEN})"),
    "mariadb-dump with an error that quotes data": Case(
        f'mariadb-dump: Got error: 1366: "Incorrect string value: \'{SECRET}\'" when dumping',
        SourceError, f"mariadb-dump: Got error: 1366 when dumping: an incorrect value for its "
                     f"column ({HIDDEN})"),
    # --- mixed output: permanent wins; warnings and echoed statements are never the cause
    "permanent wins over transient": Case(
        f"{DUMP_REFUSED}\n{DUMP_WRONG_PASSWORD}", SourceError, DUMP_WRONG_PASSWORD),
    "warnings are not causes": Case(
        f"Warning: mariadb-dump: unknown variable 'loose-x=1'\n{DUMP_REFUSED}",
        TransientSourceError, DUMP_REFUSED),
    "an echoed statement that looks like an error": Case(
        "--------------\nINSERT INTO `t` VALUES (1,'\nERROR 2003 (HY000): Can't connect "
        f"{SECRET}')\n--------------\n\nERROR 1062 (23000) at line 9: Duplicate entry "
        f"'{SECRET}' for key 'PRIMARY'", SourceError,
        f"ERROR 1062 (23000) at line 9: a duplicate value for a unique key ({HIDDEN})"),
    "a program message without an error number": Case(
        "mariadb: unknown option '--frobnicate'", SourceError,
        "mariadb: unknown option '--frobnicate'"),
    "a client error that quotes the statement": Case(
        "ERROR: ASCII '\\0' appeared in the statement, but this is not allowed unless option "
        f"--binary-mode is enabled. Query: 'INSERT INTO t VALUES (\'{SECRET}\')'.",
        SourceError, "ERROR: ASCII '\\0' appeared in the statement, but this is not allowed "
                     "unless option --binary-mode is enabled."),
    "a client error without a number names its cause": Case(
        "ERROR at line 1: Unknown command '\\x'.", SourceError,
        "ERROR at line 1: Unknown command '\\x'."),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_classification_and_cause_line(name: str) -> None:
    case = CASES[name]
    assert classify_failure(case.output) is case.kind
    assert cause_line(case.output) == case.cause
    assert SECRET not in cause_line(case.output)


def test_source_failure_names_the_program_and_quotes_one_line() -> None:
    error = source_failure("mariadb-dump of source 'shop' failed (exit 2)", DUMP_WRONG_PASSWORD)
    assert type(error) is SourceError
    assert str(error) == f"mariadb-dump of source 'shop' failed (exit 2): {DUMP_WRONG_PASSWORD}"


def test_lines_that_are_not_errors_are_never_shown() -> None:
    # a line of somebody's data that the client might print, and nothing else
    output = f"{SECRET}\n  {SECRET} (a),(b);\n"
    assert cause_line(output) == "no error line that can be shown"
    assert classify_failure(output) is SourceError
    assert cause_line("") == "no error output"


def test_a_long_cause_is_clipped() -> None:
    line = "ERROR 1146 (42S02): Table 'shop." + "x" * 1000 + "' doesn't exist"
    shown = cause_line(line)
    assert len(shown) == CAUSE_LIMIT + 3 and shown.endswith("...")


@pytest.mark.parametrize(("exc", "kind", "line"), [
    (pymysql.err.OperationalError(
        1045, "Access denied for user 'app'@'127.0.0.1' (using password: YES)",
        sqlstate="28000"),
     SourceError, "ERROR 1045 (28000): Access denied for user 'app'@'127.0.0.1' "
                  "(using password: YES)"),
    (pymysql.err.OperationalError(
        2003, "Can't connect to MySQL server on '127.0.0.1' ([Errno 111] Connection refused)"),
     TransientSourceError,
     "ERROR 2003: Can't connect to MySQL server on '127.0.0.1' ([Errno 111] Connection refused)"),
    (pymysql.err.IntegrityError(1062, f"Duplicate entry '{SECRET}' for key 'PRIMARY'",
                                sqlstate="23000"),
     SourceError, f"ERROR 1062 (23000): a duplicate value for a unique key ({HIDDEN})"),
    (pymysql.err.InterfaceError(0, ""),  # pymysql's "the connection is already closed"
     TransientSourceError, "ERROR 2013: Lost connection to server during query"),
])
def test_pymysql_errors(exc: pymysql.MySQLError, kind: type[SourceError], line: str) -> None:
    error = pymysql_failure("source 'shop' cannot be read", exc)
    assert type(error) is kind
    assert str(error) == f"source 'shop' cannot be read: {line}"


# --- DSNs -------------------------------------------------------------------------------------

PASSWORD = "p#ss\"w'rd \\;=@:/%é"


def test_a_dsn_is_percent_decoded() -> None:
    target = parse_dsn("mysql://app%40eu:p%23ss%22w%27rd%20%5C%3B%3D%40%3A%2F%25%C3%A9"
                       "@DB.example:3307/shop%2Deu")
    assert target == MySQLTarget(user="app@eu", password=PASSWORD, host="db.example",
                                 port=3307, database="shop-eu")
    assert PASSWORD not in repr(target)


def test_a_dsn_may_name_a_socket_and_mariadb() -> None:
    target = parse_dsn("mariadb://app:pw@localhost/shop?socket=/run/db/db.sock")
    assert (target.socket, target.port, target.database) == ("/run/db/db.sock", 3306, "shop")
    assert parse_dsn("mysql://app:pw@/shop?socket=/s.sock").socket == "/s.sock"


@pytest.mark.parametrize("dsn", [
    "postgresql://app:hunter2@db:5432/shop",
    "mysql://app:hunter2@db:notaport/shop",
    "mysql://app:hunter2@db:3306/",
    "mysql://app:hunter2@db:3306/shop/extra",
    "mysql://:hunter2@db:3306/shop",
    "mysql://app:hunter2@:3306/shop",
    "mysql://app:hunter2@db/shop?sslmode=require",
    "mysql://app:hunter2@db/shop?socket=relative.sock",
    "mysql://app:hunter2%FF@db/shop",
    "mysql://app:hunter2@db/shop#frag",
    "hunter2",
])
def test_a_malformed_dsn_is_refused_without_being_shown(dsn: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_dsn(dsn)
    message = str(caught.value)
    assert "hunter2" not in message and "\n" not in message
    assert message.startswith("a MySQL DSN is malformed (its value is not shown): ")


def test_the_option_file_quotes_what_the_option_reader_unquotes() -> None:
    text = option_file_text(MySQLTarget(user="app", password=PASSWORD, host="db", port=3307,
                                        database="shop"))
    assert text == ('[client]\nuser="app"\npassword="p#ss\\"w\'rd \\\\;=@:/%é"\n'
                    'host="db"\nport=3307\nprotocol=TCP\n')
    by_socket = option_file_text(MySQLTarget(user="app", password="", host="localhost",
                                             port=3306, database="shop", socket="/s.sock"))
    assert by_socket == '[client]\nuser="app"\nsocket="/s.sock"\nprotocol=SOCKET\n'
