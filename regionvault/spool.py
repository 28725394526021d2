"""The domain spool: a directory shared by a domain's workers, where steps hand over files.

Only ciphertext is ever written here. Files appear atomically (written under a ``.partial``
name, fsynced, then renamed), so a worker killed mid-write leaves a ``.partial`` that the next
attempt overwrites, never a file that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

DUMP_FILE = "dump.rvs"  # the pg_dump stream, encrypted with a spool key
DUMP_META = "dump.json"  # the wrapped spool key; its presence marks the dump complete
BACKUP_FILE = "backup.rvb"  # the final encrypted object
MANIFEST_FILE = "manifest.json"  # the draft manifest until the stores hold it


class Spool:
    """The spool directory of one domain."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def dir_for(self, backup_id: str) -> Path:
        # backup ids are validated (BackupRef.parse) before they get here: no separators
        assert "/" not in backup_id and ".." not in backup_id
        return self.root / backup_id

    def path(self, backup_id: str, name: str) -> Path:
        return self.dir_for(backup_id) / name

    def exists(self, backup_id: str, name: str) -> bool:
        return self.path(backup_id, name).is_file()

    @contextlib.contextmanager
    def atomic_write(self, backup_id: str, name: str) -> Iterator[BinaryIO]:
        """Write a spool file so it appears whole or not at all."""
        directory = self.dir_for(backup_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = directory / name
        partial = directory / (name + ".partial")
        try:
            with partial.open("wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)

    def write_bytes(self, backup_id: str, name: str, data: bytes) -> None:
        with self.atomic_write(backup_id, name) as fh:
            fh.write(data)

    def read_bytes(self, backup_id: str, name: str) -> bytes:
        return self.path(backup_id, name).read_bytes()

    def remove(self, backup_id: str, name: str) -> None:
        self.path(backup_id, name).unlink(missing_ok=True)

    def clean(self, backup_id: str) -> None:
        """Remove everything the backup left in the spool."""
        shutil.rmtree(self.dir_for(backup_id), ignore_errors=True)

    def files(self) -> list[Path]:
        if not self.root.exists():
            return []
        return sorted(p for p in self.root.rglob("*") if p.is_file())
