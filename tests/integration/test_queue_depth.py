"""``regionvault_queue_depth``: the worker's exporter reads the length of its domain's queue
(the Redis list KEDA reads) from the domain's broker at every scrape.

Deterministic: the eu worker is told to stop consuming ``backup.eu`` (``cancel_consumer``, as
``celery control cancel_consumer`` does), a known number of messages is published to the queue,
the exporter must report exactly that many; the queue is purged and it must report 0. The worker
then consumes ``backup.eu`` again, so the shared stack is left as it was. A broker that does
not answer leaves the depth out and sets ``regionvault_queue_depth_up`` to 0, without breaking
the scrape.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from regionvault.devstack.services import free_port
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain, queue_name
from workers.metrics import QueueDepthCollector

DOMAIN = Domain.EU
QUEUE = queue_name(DOMAIN)
PUBLISHED = 7


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def _scrape(stack: DevStack) -> str:
    port = stack.metrics_ports[DOMAIN]
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def _depth(stack: DevStack) -> float | None:
    found = _samples(_scrape(stack), "regionvault_queue_depth")
    return found.get((("domain", DOMAIN.value), ("queue", QUEUE)))


@pytest.fixture
def paused_queue(stack: DevStack) -> Iterator[None]:
    """The eu worker consumes nothing from backup.eu for the test; afterwards the queue is
    purged and the worker consumes it again."""
    from workers.app import app_for

    control = app_for(DOMAIN).control
    worker = stack.worker_name(DOMAIN)
    replies = control.cancel_consumer(QUEUE, destination=[worker], reply=True, timeout=10)
    assert replies, f"worker {worker} did not answer cancel_consumer"
    try:
        yield
    finally:
        _purge()
        control.add_consumer(QUEUE, destination=[worker], reply=True, timeout=10)


def _purge() -> None:
    from workers.app import app_for

    with app_for(DOMAIN).connection_for_write() as connection:
        connection.default_channel.queue_purge(QUEUE)


@pytest.mark.stack
def test_the_scraped_depth_is_the_number_of_messages_waiting(
        stack: DevStack, paused_queue: None) -> None:
    from workers.app import app_for

    assert _depth(stack) == 0
    capp = app_for(DOMAIN)
    for i in range(PUBLISHED):
        # routed by its domain argument like every regionvault task; never run (purged below)
        capp.send_task("regionvault.queue_depth_probe", kwargs={"domain": DOMAIN.value, "i": i})
    # publishing is synchronous (the message is in the list when send_task returns); the
    # worker does not consume the queue, so the number stays
    assert _depth(stack) == PUBLISHED
    time.sleep(1)
    assert _depth(stack) == PUBLISHED
    text = _scrape(stack)
    assert _samples(text, "regionvault_queue_depth_up") == {
        (("domain", DOMAIN.value), ("queue", QUEUE)): 1.0}
    # every domain's exporter reports its own queue only
    other = stack.metrics_ports[Domain.US]
    us_text = urllib.request.urlopen(f"http://127.0.0.1:{other}/metrics",
                                     timeout=10).read().decode()
    assert _samples(us_text, "regionvault_queue_depth") == {
        (("domain", "us"), ("queue", "backup.us")): 0.0}

    _purge()
    assert _depth(stack) == 0


def test_a_broker_that_does_not_answer_leaves_the_depth_out_and_the_scrape_whole(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    registry.register(QueueDepthCollector("eu", QUEUE, f"redis://127.0.0.1:{free_port()}/0",
                                          timeout=0.5))
    for _ in range(3):
        text = generate_latest(registry).decode()
        assert _samples(text, "regionvault_queue_depth") == {}
        assert _samples(text, "regionvault_queue_depth_up") == {
            (("domain", "eu"), ("queue", QUEUE)): 0.0}
    # logged once for the outage, not at every scrape
    assert len([r for r in caplog.records if "does not answer" in r.getMessage()]) == 1
