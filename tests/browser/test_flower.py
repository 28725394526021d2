"""regionvault's Flower on a real stack, through HTTP and through a real browser.

The stack (Redis-protocol server, PostgreSQL, S3 and GCS emulators, a celery worker per
domain, and Flower started by the dev stack as ``regionvault flower``) is this module's own.
The browser is Debian's ``/usr/bin/chromium``, driven by Playwright; Playwright never
downloads a browser here (``make test`` installs the Debian package when it is missing).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import BrowserContext, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from regionvault.devstack.services import free_port
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.journal import BackupRecord, BackupState, Journal, StepState
from regionvault.manifest import Step
from tests.integration.conftest import running_stack

pytestmark = pytest.mark.stack

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@dataclass(frozen=True)
class Flower:
    url: str
    user: str
    password: str
    log: Path

    @property
    def credentials(self) -> dict[str, str]:
        return {"username": self.user, "password": self.password}


@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    with running_stack("rv-browser-", flower=True) as dev:
        yield dev


@pytest.fixture(scope="module")
def flower(stack: DevStack) -> Flower:
    password = (stack.data_dir / "secrets" / "flower-password").read_text().strip()
    return Flower(url=stack.env["REGIONVAULT_FLOWER_URL"],
                  user=stack.env["REGIONVAULT_FLOWER_USER"], password=password,
                  log=stack.logs / "flower.log")


@pytest.fixture(scope="module")
def journal(stack: DevStack) -> Journal:
    assert stack.config is not None
    return Journal.from_url(stack.env.get("REGIONVAULT_RESULT_BACKEND")
                            or stack.config.result_backend or stack.env["REGIONVAULT_BROKER_URL"])


@pytest.fixture()
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


def chromium(playwright: Playwright, profile: Path,
             credentials: dict[str, str] | None = None) -> BrowserContext:
    """Debian's Chromium with a fresh profile (never a browser Playwright downloads)."""
    assert Path(CHROMIUM).exists(), "install Debian's chromium: `make browser`"
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
        http_credentials=credentials)


def browser_status(context: BrowserContext, url: str) -> int:
    """The HTTP status the browser got for ``url`` as a page.

    Chromium may then abandon the navigation (no credentials to answer the challenge with,
    or an empty 401 body from Flower's API), so the status is read from the response event.
    """
    page = context.new_page()
    answers: dict[str, int] = {}
    page.on("response", lambda response: answers.setdefault(response.url, response.status))
    with contextlib.suppress(PlaywrightError):
        page.goto(url)
    page.close()
    return answers[url]


def http(method: str, url: str, *, auth: tuple[str, str] | None = None,
         payload: dict[str, Any] | None = None) -> tuple[int, str]:
    """One request with urllib (no proxies, no cookies): status and body."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if payload is not None:
        request.add_header("Content-Type", "application/json")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def until(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def backup_domain_through_flower(flower: Flower, domain: str) -> list[dict[str, str]]:
    """The README's ad-hoc backup: Flower's HTTP API, basic auth, the domain's fan-out task."""
    status, body = http("POST", f"{flower.url}/api/task/async-apply/regionvault.backup_domain",
                        auth=(flower.user, flower.password), payload={"kwargs": {"domain": domain}})
    assert status == 200, body
    task_id = json.loads(body)["task-id"]

    def finished() -> dict[str, Any] | None:
        status, body = http("GET", f"{flower.url}/api/task/result/{task_id}",
                            auth=(flower.user, flower.password))
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result if result["state"] in ("SUCCESS", "FAILURE") else None

    result = until(finished, f"backup_domain({domain}) {task_id}", timeout=30)
    assert result["state"] == "SUCCESS", result
    started: list[dict[str, str]] = result["result"]
    return started


def test_pages_and_api_answer_401_without_credentials(flower: Flower, playwright: Playwright,
                                                      tmp_path: Path) -> None:
    pages = ["/", "/workers", "/tasks", "/broker", "/backups", "/task/any-task-id"]
    api = [("GET", "/api/workers"), ("GET", "/api/tasks"), ("GET", "/api/task/info/x"),
           ("POST", "/api/task/async-apply/regionvault.backup_domain"),
           ("POST", "/task/any-task-id/retry")]
    for method, path in [("GET", p) for p in pages] + api:
        for auth in (None, (flower.user, "wrong-password"), ("intruder", flower.password)):
            status, _ = http(method, flower.url + path, auth=auth,
                             payload={"kwargs": {"domain": "eu"}} if method == "POST" else None)
            assert status == 401, (method, path, auth and auth[0])
    # ... and the right credentials open them
    for path in ("/backups", "/api/workers"):
        assert http("GET", flower.url + path, auth=(flower.user, flower.password))[0] == 200

    # The same in the browser, with no credentials and with wrong ones.
    for name, credentials in (("anonymous", None),
                              ("intruder", {"username": "intruder", "password": "guess"})):
        context = chromium(playwright, tmp_path / name, credentials)
        try:
            for path in ("/", "/backups", "/api/workers"):
                assert browser_status(context, flower.url + path) == 401, (name, path)
        finally:
            context.close()


def test_ad_hoc_backup_through_flowers_http_api(stack: DevStack, flower: Flower,
                                                journal: Journal) -> None:
    started = backup_domain_through_flower(flower, "au")
    assert stack.config is not None
    assert {s["source"] for s in started} == {
        src.name for src in stack.config.domains[Domain.AU].sources}

    def verified() -> list[BackupRecord] | None:
        records = [journal.get(s["backup_id"]) for s in started]
        done = [r for r in records if r is not None and r.state is BackupState.VERIFIED]
        return done if len(done) == len(started) else None

    for record in until(verified, "the au backups to be verified"):
        assert record.domain == "au"


def test_retry_a_failed_upload_in_the_browser(stack: DevStack, flower: Flower,
                                              journal: Journal, playwright: Playwright,
                                              tmp_path: Path) -> None:
    assert stack.s3 is not None
    stack.s3.stop()  # a real outage: upload retries twice (dev config), then fails
    try:
        started = backup_domain_through_flower(flower, "eu")
        backup_id = next(s["backup_id"] for s in started if s["source"] == "accounts")

        def upload_failed() -> BackupRecord | None:
            record = journal.get(backup_id)
            failed = record is not None and record.steps[Step.UPLOAD].state is StepState.FAILED
            return record if failed else None

        failed = until(upload_failed, f"upload of {backup_id} to fail")
        failed_task = failed.steps[Step.UPLOAD].task_id
        assert failed_task
    finally:
        stack.restart_s3()

    context = chromium(playwright, tmp_path / "profile", flower.credentials)
    try:
        page = context.new_page()
        # the Backups page (from the nav bar) shows the chain and links the failed step
        page.goto(flower.url + "/")
        page.click("#nav-backups")
        page.wait_for_url("**/backups")
        row = page.locator(f'tr[data-backup-id="{backup_id}"]')
        assert row.locator('td[data-step="dump"]').get_attribute("data-state") == "done"
        assert row.locator('td[data-step="upload"]').get_attribute("data-state") == "failed"
        assert row.locator('td[data-step="replicate"]').get_attribute("data-state") == "pending"
        row.locator('td[data-step="upload"] a').click()
        page.wait_for_url(f"**/task/{failed_task}")

        status = page.locator(".detail-row:has(dt:text-is('Status')) .badge")
        assert status.inner_text() == "FAILURE"
        page.click("#task-retry")
        page.wait_for_url(re.compile(r"/task/(?!" + re.escape(failed_task) + r")[0-9a-f-]+$"))
        new_task = page.url.rsplit("/", 1)[1]
        assert page.locator(".task-name-value").inner_text().strip() == "regionvault.upload"

        def succeeded() -> bool:
            page.reload()
            return status.inner_text() == "SUCCESS"

        until(succeeded, f"retried upload {new_task} to succeed", timeout=30)

        # the failed task now says who retried it, and offers no second Retry
        page.goto(f"{flower.url}/task/{failed_task}")
        assert "Retried in Flower by operator" in page.locator("#task-retried").inner_text()
        assert page.locator("#task-retry").count() == 0
        assert page.locator(f'#task-retried a[href="/task/{new_task}"]').count() == 1

        # refusals, with Flower's session and the form's XSRF token
        token = next(c["value"] for c in context.cookies() if c["name"] == "_xsrf")
        again = context.request.post(f"{flower.url}/task/{failed_task}/retry",
                                     form={"_xsrf": token})
        assert again.status == 409 and "was already retried by operator" in again.text()
        not_failed = context.request.post(f"{flower.url}/task/{new_task}/retry",
                                          form={"_xsrf": token})
        assert not_failed.status == 409 and "is SUCCESS, not failed" in not_failed.text()
        no_token = context.request.post(f"{flower.url}/task/{failed_task}/retry")
        assert no_token.status == 403

        # the rest of the chain followed the retried step: the backup is verified
        def verified() -> BackupRecord | None:
            record = journal.get(backup_id)
            return record if record is not None and record.state is BackupState.VERIFIED \
                else None

        record = until(verified, f"backup {backup_id} to be verified after the retry")
        page.goto(f"{flower.url}/backups?domain=eu")
        row = page.locator(f'tr[data-backup-id="{backup_id}"]')
        assert row.locator("[data-backup-state]").inner_text() == "verified"
        assert row.locator('td[data-step="upload"] a').get_attribute("href") == \
            f"/task/{new_task}"
        for step in Step:
            assert row.locator(f'td[data-step="{step.value}"]').get_attribute(
                "data-state") == "done", step
    finally:
        context.close()

    assert record.steps[Step.UPLOAD].task_id == new_task
    # dump and encrypt did not run again
    for step in (Step.DUMP, Step.ENCRYPT):
        assert (record.steps[step].task_id, record.steps[step].at) == \
            (failed.steps[step].task_id, failed.steps[step].at)
    note = re.compile(rf"^\d{{4}}-\d\d-\d\dT\S+ upload retried in Flower by operator: failed "
                      rf"task {failed_task} re-sent as task {new_task} to backup\.eu "
                      r"\(run 2, from step upload\)$")
    assert any(note.match(n) for n in record.notes), record.notes
    log = flower.log.read_text()
    assert f"task {failed_task} (regionvault.upload, backup {backup_id}) retried in Flower by " \
           f"operator" in log
    assert f"re-sent as task {new_task} to backup.eu" in log
    assert flower.password not in log


def test_dev_no_auth_runs_open_with_a_warning(stack: DevStack, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in stack.celery_env().items()
           if k != "REGIONVAULT_FLOWER_BASIC_AUTH" and not k.startswith("FLOWER_")}
    stderr = tmp_path / "flower.err"
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "regionvault_cli", "flower",
             "--dev-no-auth", f"--port={port}"], stdout=err, stderr=subprocess.STDOUT, env=env)
    try:
        def listening() -> bool:
            assert process.poll() is None, stderr.read_text()
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        until(listening, "Flower --dev-no-auth to listen", timeout=30)
        assert "WARNING: Flower runs WITHOUT authentication (--dev-no-auth)" in \
            " ".join(stderr.read_text().split())
        assert http("GET", f"http://127.0.0.1:{port}/backups")[0] == 200
        # Flower's own rule: its HTTP API stays closed without auth unless asked for
        assert http("GET", f"http://127.0.0.1:{port}/api/workers")[0] == 401
    finally:
        process.terminate()
        process.wait(timeout=15)
