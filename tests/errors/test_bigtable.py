"""Error corpus: a bigtable source configured with a table its instance does not have.

The dump step must fail at once (not as a transient error to retry) with one sentence naming
the source, the table and the instance, and write nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from regionvault import chain
from regionvault import context as context_module
from regionvault.config import parse_config
from regionvault.context import DomainContext
from regionvault.devstack.bigtable import BigtableService, start_bigtable
from regionvault.domains import Domain
from regionvault.errors import SourceError, TransientSourceError
from regionvault.keyring import Keyring
from regionvault.sources import open_source
from regionvault.stores.memory import MemoryStore
from tests.sources.kit_bigtable import plain_client
from tests.unit import config_data

DSN_ENV = "RV_TEST_DSN_JOURNEYS"
CAUSE = "source 'journeys': Bigtable table 'events' does not exist in instance 'proj/inst'"


class S3Role(MemoryStore):
    name = "s3"


class GCSRole(MemoryStore):
    name = "gcs"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigtableService]:
    service = start_bigtable(Path(tmp_path_factory.mktemp("bigtable")))
    try:
        with plain_client(service, project="proj") as client:
            # the instance exists and has a table, only not the configured one
            client.instance("inst").table("profiles").create(column_families={"f": None})
        yield service
    finally:
        service.stop()


def test_a_configured_table_that_does_not_exist(emulator: BigtableService, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = config_data("eu")
    data["spool_dir"] = str(tmp_path / "spool")
    data["domains"]["eu"]["sources"] = [{
        "name": "journeys", "kind": "bigtable", "dsn": {"env": DSN_ENV}, "data_class": "pii",
        "tables": ["profiles", "events"]}]
    monkeypatch.setenv(DSN_ENV, emulator.dsn("proj", "inst"))
    monkeypatch.setattr(context_module, "_residency_checked", set())
    config = parse_config(data, origin="test", env={})

    # the source itself, as a worker opens it
    written: list[bytes] = []
    with pytest.raises(SourceError) as caught:
        open_source(Domain.EU, config.source(Domain.EU, "journeys")).dump(written.append)
    assert str(caught.value) == CAUSE
    assert not isinstance(caught.value, TransientSourceError)
    assert written == []

    # and the dump step of a real backup chain, which must not turn it into a retry
    keyring = Keyring.local_only(Domain.EU, {"eu-k": os.urandom(32)}, current="eu-k")
    ctx = DomainContext(config, Domain.EU, s3=S3Role("rv-eu-primary", "eu-central-1"),
                        gcs=GCSRole("rv-eu-replica", "europe-west4"), keyring=keyring)
    backup_id = chain.new_backup(ctx, "journeys")
    with pytest.raises(SourceError) as in_chain:
        chain.dump(ctx, backup_id)
    assert str(in_chain.value) == CAUSE
    assert not isinstance(in_chain.value, TransientSourceError)
