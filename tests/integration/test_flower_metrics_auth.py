"""Flower's ``/metrics`` asks for the same basic auth as its pages; ``/healthcheck`` does not.

A real ``regionvault flower`` process, with ``--basic-auth-file`` as the dev stack and the chart
start it, over HTTP. It needs nothing but a Redis-protocol broker: without REGIONVAULT_CONFIG
the Celery app loads from REGIONVAULT_BROKER_URL alone, so no PostgreSQL, stores or workers.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

from regionvault.devstack.services import free_port, start_redis

pytestmark = pytest.mark.stack

USER = "operator"
PASSWORD = "correct-horse-battery"
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Message
    body: str


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _get(url: str, headers: dict[str, str] | None = None) -> Answer:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(response.status, response.headers, response.read().decode())
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, error.headers, error.read().decode())


@contextlib.contextmanager
def _running(argv: list[str], env: dict[str, str],
             log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env=env, cwd=Path.cwd())
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def flower_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("flower-metrics")
    auth_file = workdir / "flower-basic-auth"
    auth_file.write_text(f"# operators\n{USER}:{PASSWORD}\n")
    auth_file.chmod(0o600)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "flower.log"
    redis = start_redis(workdir / "redis")
    # Nothing of the test session's environment (an integration stack's REGIONVAULT_CONFIG,
    # a developer's FLOWER_* or REGIONVAULT_FLOWER_BASIC_AUTH) decides how this Flower runs.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGIONVAULT_", "FLOWER_"))}
    env.update(REGIONVAULT_BROKER_URL=redis.url, PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "regionvault_cli", "flower",
            "--address=127.0.0.1", f"--port={port}", f"--basic-auth-file={auth_file}"]
    try:
        with _running(argv, env, log_path) as flower:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                with contextlib.suppress(OSError):
                    if _get(f"{url}/healthcheck").status == 200:
                        break
                if flower.poll() is not None:
                    pytest.fail(f"regionvault flower exited with status {flower.returncode} "
                                f"before answering; its log:\n{log_path.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"regionvault flower did not answer /healthcheck within "
                                f"{START_TIMEOUT:.0f}s; its log:\n{log_path.read_text()}")
                time.sleep(0.2)
            yield url
    finally:
        redis.stop()


def test_metrics_without_credentials_are_refused(flower_url: str) -> None:
    answer = _get(f"{flower_url}/metrics")
    assert answer.status == 401, answer.body[:200]
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="flower"'
    assert "# HELP" not in answer.body


@pytest.mark.parametrize(("user", "password"), [
    (USER, "wrong-password"), ("intruder", PASSWORD), (USER, ""),
])
def test_metrics_with_wrong_credentials_are_refused(flower_url: str, user: str,
                                                    password: str) -> None:
    answer = _get(f"{flower_url}/metrics", _basic(user, password))
    assert answer.status == 401, answer.body[:200]
    assert "# HELP" not in answer.body


def test_metrics_with_the_right_credentials_are_prometheus_text(flower_url: str) -> None:
    answer = _get(f"{flower_url}/metrics", _basic(USER, PASSWORD))
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert "# HELP flower_events_total" in answer.body
    assert "# TYPE flower_events_total counter" in answer.body


def test_the_pages_ask_for_the_same_credentials(flower_url: str) -> None:
    assert _get(f"{flower_url}/workers").status == 401
    assert _get(f"{flower_url}/workers", _basic(USER, PASSWORD)).status == 200


def test_healthcheck_stays_open_for_probes(flower_url: str) -> None:
    answer = _get(f"{flower_url}/healthcheck")
    assert (answer.status, answer.body) == (200, "OK")
