"""Acceptance 1: three domains, every chain verified, objects only in their domain's buckets,
a restore reproduces the source's rows exactly."""

from __future__ import annotations

import pytest

from regionvault.catalogue import find_backup
from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.manifest import STEPS, BackupRef, Step
from regionvault.restore import restore
from tests.integration.helpers import config_of, context, object_names, wait_for_step

pytestmark = pytest.mark.stack


def test_scheduled_backup_of_every_domain_is_verified_and_stays_in_its_domain(
        stack: DevStack) -> None:
    from tasks.backup_domain import backup_domain

    config = config_of(stack)
    started: dict[Domain, list[dict[str, str]]] = {}
    for domain in Domain:  # what beat sends: backup_domain(domain) in backup.<domain>
        started[domain] = backup_domain.apply_async(kwargs={"domain": domain.value}).get(
            timeout=60)
    for domain, chains in started.items():
        assert {c["source"] for c in chains} == {s.name for s in config.domain(domain).sources}
        assert len(chains) >= 2
        for c in chains:
            wait_for_step(c["backup_id"], Step.EXPIRE, timeout=180)

    names = object_names(stack)
    for domain, chains in started.items():
        dcfg = config.domain(domain)
        for c in chains:
            copies = find_backup(context(stack, domain), c["backup_id"])
            assert set(copies) == {"s3", "gcs"}
            for manifest in copies.values():
                assert manifest.verified, f"{c['backup_id']} in {manifest} is not verified"
                assert set(manifest.steps) == set(STEPS)
                assert manifest.domain is domain
            # the backup's object and manifest exist in its own domain's buckets and nowhere else
            holding = {bucket for bucket, keys in names.items()
                       if any(c["backup_id"] in key for key in keys)}
            assert holding == {f"s3://{dcfg.s3_bucket}", f"gs://{dcfg.gcs_bucket}"}
    # and every key in a domain's bucket belongs to that domain
    for domain in Domain:
        dcfg = config.domain(domain)
        for bucket in (f"s3://{dcfg.s3_bucket}", f"gs://{dcfg.gcs_bucket}"):
            for key in names[bucket]:
                if key.startswith("drills/"):  # restore drill reports of the same domain
                    assert key.startswith(f"drills/{domain.value}/")
                    continue
                assert key.startswith(f"{domain.value}/")
                assert BackupRef.parse(key.rsplit("/", 1)[1].split(".rvb")[0].split(
                    ".manifest.json")[0]).domain is domain

    # restore one backup into a fresh database: the rows are exactly the source's
    chosen = started[Domain.AU][0]
    assert stack.postgres is not None
    stack.postgres.create_database("e2e_restore")
    try:
        restore(context(stack, Domain.AU), chosen["backup_id"], stack.postgres.dsn("e2e_restore"))
        source_db = sample.database_name(Domain.AU, chosen["source"])
        expected = sample.fingerprint(stack.postgres.dsn(source_db))
        assert expected and sample.fingerprint(stack.postgres.dsn("e2e_restore")) == expected
    finally:
        stack.postgres.drop_database("e2e_restore")
