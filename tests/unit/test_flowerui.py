"""The pure parts of regionvault's Flower: who may retry what, and where credentials come from.

The browser test (tests/browser) drives the whole thing against a real stack; these pin the
decisions in a table, where every refusal and its HTTP status can be read at a glance. Who may
read ``/metrics`` is pinned the same way, against the real application served in-process
(tests/integration/test_flower_metrics_auth.py checks it on a running ``regionvault flower``).
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from flower.options import default_options
from flower.urls import settings as flower_settings
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from regionvault.domains import Domain
from regionvault.errors import ConfigError
from regionvault.journal import BackupRecord, BackupState, JournalEntry, StepState
from regionvault.manifest import Step
from workers.flowerui.access import (
    ANONYMOUS,
    BASIC_AUTH_ENV,
    basic_auth_from,
    basic_auth_from_file,
    operator_name,
)
from workers.flowerui.app import RegionvaultFlower
from workers.flowerui.retry import (
    RetryMark,
    RetryPlan,
    RetryRefused,
    TaskMeta,
    plan_retry,
    retry_task,
)

BACKUP_ID = "eu.accounts.20261128T020000Z.1a2b3c4d"
KWARGS = {"backup_id": BACKUP_ID, "domain": "eu", "source": "accounts"}
REGISTERED = {"regionvault.upload", "regionvault.backup_domain", "celery.chord_unlock"}


def meta(**changes: Any) -> TaskMeta:
    fields: dict[str, Any] = {"state": "FAILURE", "name": "regionvault.upload", "args": (),
                              "kwargs": dict(KWARGS), "queue": "backup.eu"}
    fields.update(changes)
    return TaskMeta(**fields)


def test_a_failed_step_is_re_sent_as_it_was_to_its_domain_queue() -> None:
    plan = plan_retry("t-1", meta(), REGISTERED)
    assert plan == RetryPlan(task_id="t-1", name="regionvault.upload", args=(), kwargs=KWARGS,
                             domain=Domain.EU, queue="backup.eu")
    assert plan.step is Step.UPLOAD
    assert plan.backup_id == BACKUP_ID


def test_a_failed_fan_out_is_re_sent_too_but_belongs_to_no_backup() -> None:
    plan = plan_retry("t-2", meta(name="regionvault.backup_domain", kwargs={"domain": "au"},
                                  queue=None), REGISTERED)
    assert (plan.queue, plan.step, plan.backup_id) == ("backup.au", None, None)


@pytest.mark.parametrize(("changes", "status", "words"), [
    ({"name": None, "state": "PENDING", "kwargs": None}, 409, "arguments are gone"),
    ({"name": "celery.chord_unlock"}, 400, "not a regionvault task"),
    ({"state": "SUCCESS"}, 409, "is SUCCESS, not failed"),
    ({"state": "RETRY"}, 409, "is RETRY, not failed"),
    ({"kwargs": None}, 409, "arguments of task t-3 (regionvault.upload) are gone"),
    ({"kwargs": {}}, 409, "are gone"),
    ({"kwargs": {**KWARGS, "domain": "moon"}}, 400, "domain 'moon'"),
    ({"kwargs": {**KWARGS, "domain": None}}, 400, "domain None"),
    ({"queue": "backup.us"}, 409, "came from queue 'backup.us', not backup.eu"),
    ({"kwargs": {"domain": "eu", "backup_id": BACKUP_ID}}, 409, "lacks its backup_id or source"),
    ({"name": "regionvault.nonexistent"}, 400, "not registered"),
])
def test_refusals_say_why_with_a_status(changes: dict[str, Any], status: int,
                                        words: str) -> None:
    with pytest.raises(RetryRefused) as refused:
        plan_retry("t-3", meta(**changes), REGISTERED)
    assert refused.value.status == status
    assert words in str(refused.value)


def test_task_meta_reads_what_the_result_backend_stores() -> None:
    stored = {"status": "FAILURE", "result": {"exc_type": "TransientStoreError"},
              "name": "regionvault.upload", "args": [], "kwargs": KWARGS,
              "worker": "eu@host", "retries": 2, "queue": "backup.eu"}
    assert TaskMeta.from_backend(stored) == meta()
    assert TaskMeta.from_backend({"status": "PENDING", "result": None}) == TaskMeta("PENDING")


class _Backend:
    def __init__(self, meta: dict[str, Any] | None) -> None:
        self.meta = meta

    def get_task_meta(self, task_id: str) -> dict[str, Any]:
        if self.meta is None:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        return self.meta


class _App:
    """What ``retry_task`` reads of a Celery app before it sends anything."""

    def __init__(self, meta: dict[str, Any] | None) -> None:
        self.backend = _Backend(meta)
        self.tasks = dict.fromkeys(REGISTERED)


class _Marks:
    def __init__(self, earlier: RetryMark | None = None) -> None:
        self.earlier = earlier

    def get(self, task_id: str) -> RetryMark | None:
        return self.earlier

    def claim(self, mark: RetryMark) -> bool:
        raise AssertionError("a refused retry claims nothing")


class _Journal:
    def __init__(self, record: BackupRecord | None) -> None:
        self.record = record

    def get(self, backup_id: str) -> BackupRecord | None:
        return self.record


FAILED_UPLOAD = {"status": "FAILURE", "name": "regionvault.upload", "args": [],
                 "kwargs": KWARGS, "queue": "backup.eu"}
NOW = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)


def _record(state: BackupState, upload_task: str) -> BackupRecord:
    steps = {step: JournalEntry(step=step, state=StepState.DONE) for step in Step}
    steps[Step.UPLOAD] = JournalEntry(step=Step.UPLOAD, state=StepState.FAILED,
                                      task_id=upload_task)
    return BackupRecord(backup_id=BACKUP_ID, domain="eu", source="accounts", state=state,
                        steps=steps, created_at=NOW, updated_at=NOW)


@pytest.mark.parametrize(("app", "marks", "journal", "status", "words"), [
    (_App(None), _Marks(), _Journal(None), 503, "result backend could not be read"),
    (_App(FAILED_UPLOAD), _Marks(RetryMark("t-9", "t-10", "alice", NOW, "backup.eu")),
     _Journal(None), 409, "already retried by alice at 2026-11-28 02:00:00 UTC as task t-10"),
    (_App(FAILED_UPLOAD), _Marks(), _Journal(_record(BackupState.CANCELLED, "t-9")), 409,
     f"backup {BACKUP_ID} was cancelled"),
    (_App(FAILED_UPLOAD), _Marks(), _Journal(_record(BackupState.QUEUED, "t-11")), 409,
     f"step upload of backup {BACKUP_ID} was sent again since, as task t-11"),
])
def test_retry_task_refuses_before_sending_anything(app: _App, marks: _Marks,
                                                    journal: _Journal, status: int,
                                                    words: str) -> None:
    with pytest.raises(RetryRefused) as refused:
        retry_task(app, "t-9", "bob", marks=marks, journal=journal)
    assert (refused.value.status, words in str(refused.value)) == (status, True), refused.value


# --- credentials -----------------------------------------------------------------------------


def test_basic_auth_file_holds_one_pair_a_line(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.write_text("# operators\noperator:s3cret:with:colons\n\noncall:other\n")
    assert basic_auth_from_file(path) == ["operator:s3cret:with:colons", "oncall:other"]


def test_the_file_wins_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.write_text("from-file:pw\n")
    env = {BASIC_AUTH_ENV: "from-env:pw"}
    assert basic_auth_from(path, env) == ["from-file:pw"]
    assert basic_auth_from(None, env) == ["from-env:pw"]
    assert basic_auth_from(None, {}) == []


@pytest.mark.parametrize(("content", "secret"), [
    ("justapassword\n", "justapassword"), (":n0b0dy\n", "n0b0dy"), ("alice:\n", "alice"),
    (" alice:hunter2\n", "hunter2"),
])
def test_a_bad_line_is_refused_without_echoing_it(tmp_path: Path, content: str,
                                                  secret: str) -> None:
    path = tmp_path / "auth"
    path.write_text(content)
    with pytest.raises(ConfigError) as refused:
        basic_auth_from_file(path)
    assert f"line 1 of {path}" in str(refused.value)
    assert secret not in str(refused.value)


def test_a_missing_or_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the Flower basic-auth file"):
        basic_auth_from_file(tmp_path / "missing")
    (tmp_path / "empty").write_text("# nobody\n")
    with pytest.raises(ConfigError, match="holds no user:password line"):
        basic_auth_from_file(tmp_path / "empty")


def test_the_operator_is_the_oauth_email_else_the_basic_auth_user() -> None:
    header = "Basic " + base64.b64encode(b"operator:pw:x").decode()
    assert operator_name("ops@example.com", header) == "ops@example.com"
    assert operator_name(True, header) == "operator"
    assert operator_name(True, "Basic !!!") == ANONYMOUS
    assert operator_name(True, None) == ANONYMOUS


# --- the command refuses to run open ---------------------------------------------------------


def _flower_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("REGIONVAULT_", "FLOWER_"))}
    return subprocess.run(
        [sys.executable, "-m", "regionvault_cli", "flower", *args],
        capture_output=True, text=True, env={**clean, **(env or {})}, timeout=60, check=False)


def test_flower_without_authentication_refuses_to_start() -> None:
    result = _flower_cli("--port", "1")
    assert result.returncode == 2, result.stderr
    assert "Flower needs authentication" in result.stderr
    assert "--dev-no-auth" in result.stderr
    assert "Traceback" not in result.stderr


def test_flower_refuses_a_password_on_its_command_line(tmp_path: Path) -> None:
    result = _flower_cli("--basic_auth=operator:hunter2")
    assert result.returncode == 2
    assert "not taken on the command line" in result.stderr
    result = _flower_cli("--no-such-option=1", env={BASIC_AUTH_ENV: "operator:pw"})
    assert result.returncode == 2
    assert "'--no-such-option=1' is not a Flower option" in result.stderr


def test_flower_refuses_a_bad_basic_auth_file(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.write_text("hunter2\n")
    result = _flower_cli("--basic-auth-file", str(path))
    assert result.returncode == 2
    assert f"line 1 of {path} is not of the form user:password" in result.stderr
    assert "hunter2" not in result.stderr


# --- /metrics asks for the same credentials as the pages; /healthcheck does not --------------

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing here talks to the broker or the backend


def _basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


async def _fetch(options: dict[str, Any], path: str, headers: dict[str, str]) -> HTTPResponse:
    capp = Celery("rv-unit", broker=UNREACHABLE, backend=UNREACHABLE, set_as_current=False)
    flower_options = SimpleNamespace(**{**default_options.as_dict(), **options})
    app = RegionvaultFlower(capp=capp, options=flower_options, **flower_settings)
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    client = AsyncHTTPClient(force_instance=True)
    try:
        return await client.fetch(f"http://127.0.0.1:{port}{path}", headers=headers,
                                  raise_error=False, follow_redirects=False)
    finally:
        client.close()
        server.stop()
        await server.close_all_connections()
        app.executor.shutdown(wait=False)


BASIC = {"basic_auth": ["operator:pw"]}
OAUTH = {"auth": r".*@example\.com", "oauth2_key": "id"}
OPEN = {"basic_auth": [], "auth": ""}  # --dev-no-auth
PREFIXED = {**BASIC, "url_prefix": "flower"}


@pytest.mark.parametrize(("options", "path", "headers", "status"), [
    pytest.param(BASIC, "/metrics", {}, 401, id="basic-none"),
    pytest.param(BASIC, "/metrics", _basic("operator:wrong"), 401, id="basic-wrong-password"),
    pytest.param(BASIC, "/metrics", _basic("intruder:pw"), 401, id="basic-unknown-user"),
    pytest.param(BASIC, "/metrics", {"Authorization": "Bearer operator:pw"}, 401,
                 id="basic-other-scheme"),
    pytest.param(BASIC, "/metrics", _basic("operator:pw"), 200, id="basic-right"),
    pytest.param(BASIC, "/healthcheck", {}, 200, id="basic-healthcheck"),
    pytest.param(PREFIXED, "/flower/metrics", {}, 401, id="prefixed-none"),
    pytest.param(PREFIXED, "/flower/metrics", _basic("operator:pw"), 200, id="prefixed-right"),
    pytest.param(PREFIXED, "/flower/healthcheck", {}, 200, id="prefixed-healthcheck"),
    # to the login page, like every page
    pytest.param(OAUTH, "/metrics", {}, 302, id="oauth-no-session"),
    pytest.param(OAUTH, "/healthcheck", {}, 200, id="oauth-healthcheck"),
    pytest.param(OPEN, "/metrics", {}, 200, id="dev-no-auth"),
])
def test_metrics_need_the_pages_authentication_and_healthcheck_none(
        options: dict[str, Any], path: str, headers: dict[str, str], status: int) -> None:
    response = asyncio.run(_fetch(options, path, headers))
    body = (response.body or b"").decode()
    assert response.code == status, body[:200]
    if status == 401:
        assert response.headers["WWW-Authenticate"] == 'Basic realm="flower"'
    if status == 302:
        assert response.headers["Location"].startswith("/login?next=")
    if path.endswith("/metrics"):
        assert ("# HELP flower_events_total" in body) == (status == 200)


def test_another_domains_backups_page_is_one_link_whatever_its_flower_url_ends_with() -> None:
    from workers.flowerui.handlers import backups_page

    assert backups_page("https://flower-eu.example.com/flower", "eu") == \
        "https://flower-eu.example.com/flower/backups?domain=eu"
    assert backups_page("https://flower-eu.example.com/flower/", "eu") == \
        "https://flower-eu.example.com/flower/backups?domain=eu"
