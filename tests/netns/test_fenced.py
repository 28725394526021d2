"""Residency at the network layer: each domain's workers live in a namespace that reaches only
that domain's servers.

The residency guard (a worker of domain D refuses tasks of other domains, buckets are checked
to lie in D's regions) is code; these tests show a second defence beneath it. With every domain
fenced, every domain's chain still ends verified; and an eu pool misconfigured to use the us
S3 endpoint, or the us broker, fails with a network error while the us servers see nothing of
it. The same misconfigured connection from the root namespace does reach us: the fence, not a
wrong address, is what stopped it.
"""

from __future__ import annotations

import errno
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from regionvault.devstack.services import ManagedProcess
from regionvault.domains import Domain
from regionvault.journal import BackupState, StepState
from regionvault.manifest import Step
from tests.netns.conftest import SOURCE, FencedStack, s3_requests
from tests.netns.fence import netns_inode_of

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

QUEUED = re.compile(r"backup (\S+) queued in backup\.(\w+)")


def queued_id(output: str) -> str:
    match = QUEUED.search(output)
    assert match, f"no backup id in the CLI's output:\n{output}"
    return match.group(1)


def log_lines(process: ManagedProcess, text: str, *, timeout: float, count: int = 1) -> list[str]:
    """The lines of ``process``'s log that contain ``text``, once there are ``count`` of them
    (or ``timeout`` seconds have passed)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in process.tail(5000).splitlines() if text in line]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_each_domain_runs_fenced_in_its_own_namespace(fenced: FencedStack) -> None:
    fenced.ensure_workers()
    root_namespace = os.stat("/proc/self/ns/net").st_ino
    for domain, servers in fenced.servers.items():
        inode = servers.net.inode()
        assert inode != root_namespace
        for process in [*servers.processes(), fenced.workers[domain]]:
            assert netns_inode_of(process.pid) == inode, (
                f"{process.name} of {domain.value} runs outside namespace {servers.net.netns}")

    others = {d: [o for o in Domain if o is not d] for d in Domain}
    with ThreadPoolExecutor(len(Domain)) as pool:
        seen = dict(zip(Domain, pool.map(
            lambda d: fenced.probe(fenced.config_path, Domain, inside=d), Domain), strict=True))
    for domain in Domain:
        own = seen[domain][domain]
        assert own["broker"]["reached"] and own["broker"]["answer"] == "+PONG", own
        assert own["s3"]["reached"] and own["s3"]["answer"].startswith("HTTP/"), own
        for other in others[domain]:
            for what in ("broker", "s3"):
                attempt = seen[domain][other][what]
                assert not attempt["reached"], (
                    f"from {domain.value}'s namespace the {what} of {other.value} answered: "
                    f"{attempt}")
                assert attempt["errno"] == errno.ENETUNREACH, attempt


def test_every_domain_chain_ends_verified(fenced: FencedStack) -> None:
    fenced.ensure_workers()
    with ThreadPoolExecutor(len(Domain)) as pool:
        runs = dict(zip(Domain, pool.map(
            lambda d: fenced.cli("backup", "--domain", d.value, "--source", SOURCE.name,
                                 "--wait", "--timeout", "150"), Domain), strict=True))
    ids = {}
    for domain, done in runs.items():
        assert done.returncode == 0, (
            f"backup of {domain.value} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            f"\nworker log:\n{fenced.workers[domain].tail(60)}")
        ids[domain] = queued_id(done.stdout)
        assert f"backup {ids[domain]} verified" in done.stdout

    for domain, backup_id in ids.items():
        record = fenced.journal(domain).get(backup_id)
        assert record is not None and record.state is BackupState.VERIFIED, record
        assert all(record.steps[s].state is StepState.DONE for s in Step), record.steps
        # each domain's journal lives on its own broker only
        for other in Domain:
            if other is not domain:
                assert fenced.journal(other).get(backup_id) is None
        listed = fenced.cli("list", "--domain", domain.value)
        assert listed.returncode == 0, listed.stderr
        row = next((line for line in listed.stdout.splitlines() if backup_id in line), "")
        assert "verified" in row, f"{backup_id} is not listed verified:\n{listed.stdout}"


def test_eu_pool_pointed_at_the_us_s3_endpoint_fails_at_the_network_layer(
        fenced: FencedStack) -> None:
    us = fenced.servers[Domain.US]
    misconfigured = fenced.write_config("eu-on-us-s3",
                                        {Domain.EU: {"s3_endpoint_url": us.s3.endpoint}})
    requests_before = s3_requests(us.s3)
    foreign_before = fenced.fence.counter(Domain.US, "foreign")

    # the endpoint the misconfigured eu pool would use, tried from the eu namespace
    inside = fenced.probe(misconfigured, [Domain.EU], inside=Domain.EU)[Domain.EU]["s3"]
    assert inside["url"] == us.s3.endpoint
    assert not inside["reached"] and inside["errno"] == errno.ENETUNREACH, inside

    worker = fenced.start_worker(Domain.EU, misconfigured, label="on-us-s3")
    try:
        fenced.wait_for_worker(Domain.EU)
        started = fenced.cli("backup", "--domain", "eu", "--source", SOURCE.name)
        assert started.returncode == 0, started.stderr
        backup_id = queued_id(started.stdout)
        journal = fenced.journal(Domain.EU)
        deadline = time.monotonic() + 90
        record = journal.get(backup_id)
        while time.monotonic() < deadline and (record is None or record.in_flight):
            time.sleep(0.5)
            record = journal.get(backup_id)
        assert record is not None
        assert record.state is BackupState.FAILED, (record, worker.tail(60))
        # the pool works in its own domain: the source was dumped and encrypted...
        assert record.steps[Step.DUMP].state is StepState.DONE
        assert record.steps[Step.ENCRYPT].state is StepState.DONE
        # ...and the upload could not connect: no answer from any S3, not a refusal by one
        assert record.error_step is Step.UPLOAD, record
        assert "the connection to S3 failed (EndpointConnectionError: Network is unreachable)" \
            in record.error, record.error
        # the worker logs the failed task with its causes (after the journal has it): the
        # connection to the us address never left the namespace
        unreachable = [line for line in log_lines(worker, "[Errno 101] Network is unreachable",
                                                  timeout=15)
                       if f"host='{us.net.address}'" in line]
        assert unreachable, f"no ENETUNREACH to {us.net.address} in:\n{worker.tail(2000)}"
    finally:
        fenced.stop_worker(Domain.EU)

    # nothing reached us: no request in its S3 server's log, no packet of a foreign address
    assert s3_requests(us.s3) == requests_before
    assert fenced.fence.counter(Domain.US, "foreign") == foreign_before == 0

    # control: the same endpoint from the root namespace answers, and its log shows it
    outside = fenced.probe(misconfigured, [Domain.EU], inside=None)[Domain.EU]["s3"]
    assert outside["reached"] and outside["answer"].startswith("HTTP/"), outside
    after_control = s3_requests(us.s3)
    assert after_control[:len(requests_before)] == requests_before
    assert after_control[len(requests_before):] == [us.net.gateway], after_control


def test_eu_pool_pointed_at_the_us_broker_fails_at_the_network_layer(
        fenced: FencedStack) -> None:
    us = fenced.servers[Domain.US]
    misconfigured = fenced.write_config("eu-on-us-broker",
                                        {Domain.EU: {"broker_url": us.broker.url}})
    # one connection of ours, opened by the first INFO and reused: the count it reads
    # afterwards grows only by connections somebody else made
    watcher = redis.Redis(host=us.net.address, port=us.broker.port, socket_timeout=5)
    try:
        connections_before = watcher.info("stats")["total_connections_received"]
        foreign_before = fenced.fence.counter(Domain.US, "foreign")

        inside = fenced.probe(misconfigured, [Domain.EU], inside=Domain.EU)[Domain.EU]["broker"]
        assert inside["url"] == us.broker.url
        assert not inside["reached"] and inside["errno"] == errno.ENETUNREACH, inside

        worker = fenced.start_worker(Domain.EU, misconfigured, label="on-us-broker")
        try:
            deadline = time.monotonic() + 60
            unreachable: list[str] = []
            while time.monotonic() < deadline and worker.alive() and len(unreachable) < 2:
                time.sleep(0.5)
                unreachable = [line for line in worker.tail(2000).splitlines()
                               if "Network is unreachable" in line and us.net.address in line]
            log = worker.tail(2000)
            # tried again and again, and never got through
            assert len(unreachable) >= 2, f"no repeated 'Network is unreachable' in:\n{log}"
            assert "Connected to" not in log, log
        finally:
            fenced.stop_worker(Domain.EU)

        assert watcher.info("stats")["total_connections_received"] == connections_before
        assert fenced.fence.counter(Domain.US, "foreign") == foreign_before == 0

        # control: the same broker URL from the root namespace connects and answers
        outside = fenced.probe(misconfigured, [Domain.EU], inside=None)[Domain.EU]["broker"]
        assert outside["reached"] and outside["answer"] == "+PONG", outside
        assert watcher.info("stats")["total_connections_received"] == connections_before + 1
    finally:
        watcher.close()
