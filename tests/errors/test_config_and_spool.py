"""Error corpus: a configuration file that is not UTF-8, and a spool that fills up."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from regionvault import chain
from regionvault import context as context_module
from regionvault.config import SourceConfig, parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.errors import SpoolFull
from regionvault.keyring import Keyring
from regionvault.sources import DumpInfo
from regionvault.stores.memory import MemoryStore
from tests.unit import config_data

CLI = str(Path(sys.executable).parent / "regionvault")


def test_a_config_that_is_not_utf8_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "regionvault.yaml"
    # Latin-1 "é" in a comment: what an editor set to ISO-8859-1 writes
    path.write_bytes(b"version: 1\n# r\xe9gions\ndomains: {}\n")
    done = subprocess.run([CLI, "check", "--config", str(path)], capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode == 2, done
    assert done.stdout == ""
    assert done.stderr.strip() == (
        f"error: configuration file {path} is not UTF-8 text (byte 0xe9 on line 2); "
        "save it as UTF-8")


@dataclass
class _Endless:
    """A source whose dump never ends on its own: 64 KiB of incompressible bytes at a time."""

    name: str
    kind: str = "postgres"

    def dump(self, write: Callable[[bytes], object]) -> DumpInfo:
        while True:
            write(os.urandom(64 * 1024))

    def check_target(self, target_dsn: str, *, clean: bool = False,
                     dump: DumpInfo | None = None) -> None:
        raise AssertionError("not part of a dump")

    def row_counts(self, target_dsn: str) -> dict[str, int]:
        raise AssertionError("not part of a dump")

    def restore(self, chunks: Iterable[bytes], target_dsn: str, *, clean: bool = False) -> None:
        raise AssertionError("not part of a dump")


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs as the spool: a real filesystem that really runs out of space."""
    mount = tmp_path / "spool"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True, check=False)
    # no skip: this machine kind runs tests as root, and a missing mount must be seen
    assert done.returncode == 0, f"cannot mount a tmpfs for the full-spool case: {done.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_spool_names_the_spool_the_step_and_the_file(
        small_spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = config_data("eu")
    data["spool_dir"] = str(small_spool)
    config = parse_config(data, origin="test", env={})
    monkeypatch.setattr(context_module, "_residency_checked", set())
    keyring = Keyring.local_only(Domain.EU, {"eu-k": os.urandom(32)}, current="eu-k")
    ctx = DomainContext(config, Domain.EU, s3=MemoryStore("p", "eu-central-1"),
                        gcs=MemoryStore("r", "europe-west4"), keyring=keyring)

    def open_source(domain: Domain, src: SourceConfig) -> _Endless:
        return _Endless(src.name)

    monkeypatch.setattr(chain, "open_source", open_source)
    backup_id = chain.new_backup(ctx, "accounts")
    with pytest.raises(SpoolFull) as caught:
        chain.dump(ctx, backup_id)
    spool = small_spool / "eu"
    assert str(caught.value) == (
        f"the spool {spool} is full: no space left on its device during the dump step while "
        f"writing {backup_id}/backup.rvb; free space there or give the spool a larger volume, "
        "then retry")
    # what was half-written is gone: the next attempt has the whole volume again
    assert [p.name for p in spool.rglob("*") if p.is_file() and p.suffix == ".partial"] == []
