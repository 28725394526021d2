"""Acceptance 4: a task for domain eu published to backup.us is refused by the us worker."""

from __future__ import annotations

import time

import pytest

from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.manifest import new_backup_id
from tests.integration.helpers import config_of, context, object_names

pytestmark = pytest.mark.stack


def _wait_for_log(stack: DevStack, domain: Domain, needle: str, timeout: float = 30) -> str:
    log = stack.logs / f"worker-{domain.value}.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if needle in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} never appeared in {log}")


def test_eu_task_published_to_us_queue_is_refused_and_writes_nothing(stack: DevStack) -> None:
    from workers.app import app

    config = config_of(stack)
    before = object_names(stack)
    backup_id = new_backup_id(Domain.EU, "accounts", context(stack, Domain.EU).clock())
    # Publish past the router, straight into the us queue: what a bug or an attacker would do.
    result = app.send_task("regionvault.dump", queue="backup.us", kwargs={
        "backup_id": backup_id, "domain": "eu", "source": "accounts"})

    text = _wait_for_log(stack, Domain.US, f"REFUSED misrouted task regionvault.dump[{result.id}]")
    assert "it is for domain 'eu' but this worker serves domain 'us'" in text
    time.sleep(1.0)  # give a (wrongly) running task the chance to write something
    assert result.state != "SUCCESS"
    assert object_names(stack) == before
    for domain in Domain:  # not run anywhere: no spool trace of the backup in any domain
        assert not config.spool_for(domain).joinpath(backup_id).exists()


def test_task_whose_backup_id_names_another_domain_fails_without_writing(stack: DevStack) -> None:
    from regionvault.errors import ResidencyError
    from regionvault.manifest import Step
    from workers.canvas import step_signature

    before = object_names(stack)
    backup_id = new_backup_id(Domain.EU, "accounts", context(stack, Domain.EU).clock())
    # domain says us (so the us worker accepts it) but the backup id is an eu backup
    sig = step_signature(Step.DUMP, backup_id, "us", "accounts")
    with pytest.raises(ResidencyError, match="refused"):
        sig.apply_async().get(timeout=30)
    assert object_names(stack) == before
    assert not config_of(stack).spool_for(Domain.US).joinpath(backup_id).exists()
