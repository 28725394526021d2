"""The environment of child processes is built from an allowlist (``regionvault.childenv``)."""

from __future__ import annotations

import base64
import os

from regionvault.childenv import child_environment

KEY = base64.b64encode(os.urandom(32)).decode()

#: what a worker's environment may look like: its secrets, its settings, and the basics
WORKER_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/home/regionvault",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "LC_CTYPE": "C.UTF-8",
    "TZ": "UTC",
    "TMPDIR": "/var/tmp",
    "REGIONVAULT_KEY_EU": KEY,
    "REGIONVAULT_KEY_EU_PREVIOUS": KEY,
    "REGIONVAULT_CONFIG": "/etc/regionvault/regionvault.yaml",
    "REGIONVAULT_BROKER_URL": "redis://:broker-password@redis:6379/0",
    "REGIONVAULT_DOMAIN": "eu",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "AWS_SESSION_TOKEN": "aws-session",
    "GOOGLE_APPLICATION_CREDENTIALS": "/var/run/secrets/gcp.json",
    "DATABASE_URL": "postgresql://app:db-secret@db/app",
    "SOME_VENDOR_TOKEN": "token",
    # libpq would read these behind the configured DSN's back
    "PGPASSWORD": "inherited-password",
    "PGHOST": "elsewhere.example",
    "PGSSLMODE": "disable",
}


def test_secrets_and_settings_are_not_inherited() -> None:
    env = child_environment(WORKER_ENV)
    assert not [name for name in env if name.startswith("REGIONVAULT_")]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "GOOGLE_APPLICATION_CREDENTIALS", "DATABASE_URL", "SOME_VENDOR_TOKEN"):
        assert name not in env
    assert KEY not in "\0".join(f"{k}={v}" for k, v in env.items())


def test_postgres_settings_come_only_from_the_caller() -> None:
    env = child_environment(WORKER_ENV)
    assert not [name for name in env if name.startswith("PG")]
    env = child_environment(WORKER_ENV, {"PGPASSWORD": "from-the-dsn"})
    assert env["PGPASSWORD"] == "from-the-dsn"
    assert "PGHOST" not in env and "PGSSLMODE" not in env


def test_the_basics_are_kept() -> None:
    env = child_environment(WORKER_ENV)
    assert env == {name: WORKER_ENV[name] for name in
                   ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")}


def test_what_is_given_is_added_on_top() -> None:
    env = child_environment(WORKER_ENV, {"PGPASSWORD": "p", "PGSSLMODE": "verify-full",
                                         "TZ": "Europe/Dublin"})
    assert env["PGPASSWORD"] == "p"
    assert env["PGSSLMODE"] == "verify-full"
    assert env["TZ"] == "Europe/Dublin"
    assert env["PATH"] == WORKER_ENV["PATH"]


def test_inputs_are_not_changed() -> None:
    parent = dict(WORKER_ENV)
    extra = {"PGPASSWORD": "p"}
    env = child_environment(parent, extra)
    env["PATH"] = "/elsewhere"
    assert parent == WORKER_ENV
    assert extra == {"PGPASSWORD": "p"}


def test_an_empty_parent_gives_only_what_is_given() -> None:
    assert child_environment({}) == {}
    assert child_environment({}, {"PGPASSWORD": "p"}) == {"PGPASSWORD": "p"}
