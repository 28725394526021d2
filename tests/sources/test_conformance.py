"""One conformance suite for every Source: postgres, mysql, bigtable (``conftest.kit``).

The contract in ``regionvault.sources.base`` as tests, each against the kind's real server:
a backup through the real chain (dump, encrypt, upload, replicate, deep verify; stores in
memory, whose own suite is ``tests/stores``) and a restore through ``regionvault.restore``
reproduce every table exactly, by checksums the kit computes on its own; no plaintext rests
in the spool or the stores; bad connection settings give one clear sentence; and no
process's argv ever shows the password.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from regionvault import chain, manifest_store
from regionvault import context as context_module
from regionvault.config import parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.errors import ConfigError, SourceError, TransientSourceError
from regionvault.keyring import Keyring
from regionvault.manifest import BackupRef, parse_manifest
from regionvault.restore import restore
from regionvault.sources import restorer_for
from regionvault.stores.memory import MemoryStore
from tests.sources.kits import SourceKit
from tests.unit import config_data

CANARY = "RV-SOURCE-CANARY-7f3a9c"
SOURCE = "conformance"
DSN_ENV = "RV_TEST_DSN_CONFORMANCE"
KEY_ID = "eu-conformance"
#: a connection that cannot succeed must say so within this long (no minutes of retrying)
UNREACHABLE_WITHIN = 60.0


class S3Role(MemoryStore):
    name = "s3"


class GCSRole(MemoryStore):
    name = "gcs"


class Rig:
    """The real chain for one source of ``kit``'s kind, over in-memory stores."""

    def __init__(self, kit: SourceKit, dsn: str, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        data = config_data("eu")
        data["spool_dir"] = str(tmp_path / "spool")
        data["domains"]["eu"]["sources"] = [
            {"name": SOURCE, "kind": kit.kind, "dsn": {"env": DSN_ENV}, "data_class": "pii"}]
        monkeypatch.setenv(DSN_ENV, dsn)
        monkeypatch.setattr(context_module, "_residency_checked", set())
        config = parse_config(data, origin="test", env={})
        self.s3 = S3Role("rv-eu-primary", "eu-central-1")
        self.gcs = GCSRole("rv-eu-replica", "europe-west4")
        keyring = Keyring.local_only(Domain.EU, {KEY_ID: os.urandom(32)}, current=KEY_ID)
        self.ctx = DomainContext(config, Domain.EU, s3=self.s3, gcs=self.gcs, keyring=keyring)
        self.spool_root = config.spool_for(Domain.EU)

    def backup(self) -> str:
        backup_id = chain.new_backup(self.ctx, SOURCE)
        for step in (chain.dump, chain.encrypt, chain.upload, chain.replicate):
            step(self.ctx, backup_id)
            self.assert_no_plaintext()
        chain.verify(self.ctx, backup_id, deep=True)
        return backup_id

    def row_counts(self, backup_id: str) -> dict[str, int]:
        ref = BackupRef.parse(backup_id)
        _, mkey = manifest_store.keys_of(ref, self.ctx.config.source(ref.domain, ref.source))
        manifest = parse_manifest(self.ctx, self.s3.get_bytes(mkey), mkey, key=mkey)
        assert manifest.verified, manifest.state()
        return dict(manifest.row_counts)

    def assert_no_plaintext(self) -> None:
        needle = CANARY.encode()
        for path in (p for p in self.spool_root.rglob("*") if p.is_file()):
            assert needle not in path.read_bytes(), f"plaintext in spool file {path}"
        for store in (self.s3, self.gcs):
            for key in store.list_keys(""):
                assert needle not in store.get_bytes(key), f"plaintext in {store.name}:{key}"


@pytest.fixture
def seeded(kit: SourceKit) -> str:
    return kit.seeded(CANARY)


def test_backup_verify_restore_reproduce_every_table(
        kit: SourceKit, seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(kit, seeded, tmp_path, monkeypatch)
    before = kit.checksums(seeded)
    assert before, "the kit seeded no tables"
    backup_id = rig.backup()
    # the manifest counts what the kit seeded, table by table
    assert rig.row_counts(backup_id) == kit.expected_rows(seeded)
    for store in ("s3", "gcs"):
        target = kit.empty_target()
        result = restore(rig.ctx, backup_id, target, from_store=store)
        assert result.store == store
        assert kit.checksums(target) == before, f"restored from {store}, the data differs"
        # and the restore side counts the restored copy as the dump counted the source
        assert restorer_for(kit.kind, SOURCE).row_counts(target) == kit.expected_rows(seeded)
    assert kit.checksums(seeded) == before, "the source changed"


def test_restore_refuses_a_target_that_holds_data(
        kit: SourceKit, seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(kit, seeded, tmp_path, monkeypatch)
    backup_id = rig.backup()
    occupied = kit.seeded("another-canary")
    held = kit.checksums(occupied)
    with pytest.raises((SourceError, ConfigError), match="clean") as caught:
        restore(rig.ctx, backup_id, occupied, from_store="gcs")
    assert "\n" not in str(caught.value)
    assert kit.checksums(occupied) == held, "a refused restore changed the target"
    restore(rig.ctx, backup_id, occupied, from_store="gcs", clean=True)
    assert kit.checksums(occupied) == kit.checksums(seeded)


def test_no_plaintext_at_rest(kit: SourceKit, seeded: str, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(kit, seeded, tmp_path, monkeypatch)
    # positive control: the canary is there to be found in the source's own dump
    plain = bytearray()
    kit.open(SOURCE, seeded).dump(plain.extend)
    assert CANARY.encode() in plain, "the kit's canary is not in the dump: the scan is blind"
    rig.backup()  # scans the spool and both stores after every step
    rig.assert_no_plaintext()


def _one_sentence(message: str, kit: SourceKit) -> None:
    assert message and "\n" not in message, f"not one line: {message!r}"
    assert "Traceback" not in message
    assert SOURCE in message, f"the message does not name the source: {message!r}"
    if kit.password:
        assert kit.password not in message


def test_unreachable_server_is_one_transient_sentence(kit: SourceKit) -> None:
    source = kit.open(SOURCE, kit.unreachable_dsn())
    started = time.monotonic()
    with pytest.raises(TransientSourceError) as caught:
        source.dump(lambda chunk: None)
    assert time.monotonic() - started < UNREACHABLE_WITHIN
    _one_sentence(str(caught.value), kit)


def test_wrong_credentials_fail_at_once_in_one_sentence(kit: SourceKit, seeded: str) -> None:
    wrong = kit.wrong_password_dsn(seeded)
    if wrong is None:
        # a kind without a DSN password (bigtable: Google credentials from the environment)
        # must then carry none in its DSN, so that none can leak from it
        assert kit.password is None
        assert urlsplit(seeded).password is None and urlsplit(seeded).username is None
        return
    with pytest.raises(SourceError) as caught:
        kit.open(SOURCE, wrong).dump(lambda chunk: None)
    assert not isinstance(caught.value, TransientSourceError), "a wrong password is retried"
    _one_sentence(str(caught.value), kit)
    assert urlsplit(wrong).password not in str(caught.value)


@contextmanager
def _watching_argv() -> Iterator[dict[int, bytes]]:
    """Every process this test's process starts (its children), with its argv, as seen by
    polling ``/proc`` while the block runs."""
    seen: dict[int, bytes] = {}
    me = os.getpid()
    stop = threading.Event()
    # the kits' own servers (children of this process too) were running before the block
    before = {int(e.name) for e in os.scandir("/proc") if e.name.isdigit()}

    def poll() -> None:
        while not stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit() or int(entry.name) in before:
                    continue
                try:
                    with open(f"/proc/{entry.name}/stat", "rb") as fh:
                        ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
                    if ppid != me:
                        continue
                    with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                        argv = fh.read()
                except (OSError, ValueError, IndexError):
                    continue  # gone already
                if argv:
                    seen[int(entry.name)] = argv
            time.sleep(0.002)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def test_password_is_in_no_process_argv(kit: SourceKit, seeded: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(kit, seeded, tmp_path, monkeypatch)
    with _watching_argv() as seen:
        backup_id = rig.backup()
        restore(rig.ctx, backup_id, kit.empty_target(), from_store="s3")
    programs = {os.path.basename(argv.split(b"\0", 1)[0]).decode() for argv in seen.values()}
    # positive control: the watcher saw the kind's own programs run (for bigtable, a client
    # library, none: then no process ran at all, and no argv could hold a credential)
    assert set(kit.child_programs) <= programs, f"programs seen: {sorted(programs)}"
    if not kit.child_programs:
        assert not seen, f"unexpected child processes: {sorted(programs)}"
    if kit.password:
        for pid, argv in seen.items():
            assert kit.password.encode() not in argv, f"the password is on the argv of {pid}"


def test_manifest_records_the_server_and_tool_versions(
        kit: SourceKit, seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(kit, seeded, tmp_path, monkeypatch)
    backup_id = rig.backup()
    ref = BackupRef.parse(backup_id)
    _, mkey = manifest_store.keys_of(ref, rig.ctx.config.source(ref.domain, ref.source))
    manifest = parse_manifest(rig.ctx, rig.gcs.get_bytes(mkey), mkey, key=mkey)
    assert manifest.source_kind == kit.kind
    assert manifest.server_version and manifest.tool_version
    assert manifest.created_at <= datetime.now(UTC)
