"""Issue 9, expiry as its own loop, on the real stack: ``regionvault.expire_domain`` on the
domain's real worker removes pii past the cutoff from both clouds and keeps metadata.

The shared stack's workers cannot be moved in time, so this test runs a stack of its own
whose workers' clock is 30 days ahead (``development_clock_offset_seconds``, honoured only
with ``development: true``). Backups made there carry a ``created_at`` 30 days in the future
while the emulators stamp them with the real time: the sweep trusts the earlier of the two,
so a fresh pii backup is 30 days old to it (past the 29-day ceiling), a metadata one is
within its 365 days.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.manifest import STEPS, new_backup_id
from tests.integration.conftest import running_stack
from tests.integration.helpers import config_of, object_names

pytestmark = pytest.mark.stack

OFFSET = timedelta(days=30)
DOMAIN = Domain.EU


@pytest.fixture(scope="module")
def moved_stack() -> Iterator[DevStack]:
    with running_stack("rv-test-expiry-", config_overrides={
            "development_clock_offset_seconds": int(OFFSET.total_seconds())}) as dev:
        yield dev


def _backup(stack: DevStack, source: str) -> str:
    """A verified backup made on the real workers, step by step without step 6 (lone steps,
    run 0, hand over to nothing): so only the loop can expire it here."""
    url = stack.env["REGIONVAULT_BROKER_URL"]
    control = Celery(broker=url, backend=url, set_as_current=False)
    backup_id = new_backup_id(DOMAIN, source, datetime.now(UTC))
    for step in STEPS[:-1]:
        control.send_task(f"regionvault.{step.value}", kwargs={
            "backup_id": backup_id, "domain": DOMAIN.value, "source": source, "run": 0},
            queue=f"backup.{DOMAIN.value}").get(timeout=60)
    return backup_id


def _holders(stack: DevStack, backup_id: str) -> set[str]:
    return {bucket for bucket, keys in object_names(stack).items()
            if any(backup_id in key for key in keys)}


def _metric(stack: DevStack, name: str, **labels: str) -> float | None:
    port = stack.metrics_ports[DOMAIN]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == {"domain": DOMAIN.value, **labels}:
                return float(sample.value)
    return None


def test_expire_domain_removes_pii_past_the_cutoff_and_keeps_metadata(
        moved_stack: DevStack) -> None:
    config = config_of(moved_stack)
    assert config.development and config.development_clock_offset_seconds == OFFSET.total_seconds()
    dcfg = config.domain(DOMAIN)
    both = {f"s3://{dcfg.s3_bucket}", f"gs://{dcfg.gcs_bucket}"}
    pii = _backup(moved_stack, "ledger")
    metadata = _backup(moved_stack, "catalog")
    # no step 6 ran: both are still there
    assert _holders(moved_stack, pii) == _holders(moved_stack, metadata) == both

    url = moved_stack.env["REGIONVAULT_BROKER_URL"]
    control = Celery(broker=url, backend=url, set_as_current=False)
    started = datetime.now(UTC)
    result = control.send_task("regionvault.expire_domain", kwargs={"domain": DOMAIN.value},
                               queue=f"backup.{DOMAIN.value}")
    outcome = result.get(timeout=60)

    assert outcome["complete"] is True
    for role in ("s3", "gcs"):
        store = outcome["stores"][role]
        assert store["removed"] == {"pii": 1}, store
        assert store["quarantined"] == [] and store["errors"] == []
        assert store["oldest_pii_age_seconds"] is None  # nothing pii is left
    assert _holders(moved_stack, pii) == set()
    assert _holders(moved_stack, metadata) == both

    # the ledger a compliance report reads: each store's last complete sweep, on the moved clock
    swept = redis.Redis.from_url(url, decode_responses=True).hgetall("regionvault:expiry:eu")
    assert set(swept) == {"s3", "gcs"}
    for at in swept.values():
        assert datetime.fromisoformat(at) - started > OFFSET - timedelta(minutes=5)

    # and the worker's metrics
    for role in ("s3", "gcs"):
        assert _metric(moved_stack, "regionvault_expiry_removed_total", store=role,
                       data_class="pii") == 1
        assert _metric(moved_stack, "regionvault_expiry_removed_total", store=role,
                       data_class="metadata") == 0
        assert _metric(moved_stack, "regionvault_oldest_pii_age_seconds", store=role) == 0
        assert (_metric(moved_stack, "regionvault_expiry_last_sweep_timestamp_seconds",
                        store=role) or 0) > started.timestamp()
        assert _metric(moved_stack, "regionvault_expiry_quarantined_total", store=role) == 0
