"""The domain spool: a directory shared by a domain's workers, where steps hand over files.

Only ciphertext is ever written here. Files appear atomically (written under a ``.partial``
name, fsynced, then renamed), so a worker killed mid-write leaves a ``.partial`` that the next
attempt overwrites, never a file that looks complete.

Writes are fenced: each backup directory keeps the highest fencing token (see
``regionvault.lease``) that has committed a file there, in ``.fence``. A commit with an older
token is refused with ``LeaseLost``, checked and recorded under an ``flock`` so that two
owners cannot interleave check and rename. Partial files carry the writer's token and pid, so
two writers never write into the same file. The spool must therefore be a filesystem with
working ``flock`` (local disks, a ReadWriteMany volume with a lock manager).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from regionvault.errors import LeaseLost, SpoolFull

#: "no space left" and "quota exceeded": the spool cannot take more, whatever is retried
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

BACKUP_FILE = "backup.rvb"  # the object: the dump compressed and encrypted by ``dump``
DUMP_META = "dump.json"  # wrapped data key, digests, row counts; marks the dump complete
MANIFEST_FILE = "manifest.json"  # the draft manifest until the stores hold it
FENCE_FILE = ".fence"  # the highest fencing token that committed here
_LOCK_FILE = ".lock"


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

    def has_dump(self, backup_id: str) -> bool:
        """Whether ``dump`` finished: its object and, written after it, ``dump.json``. A
        ``dump.json`` alone (left by a version that spooled the dump in another file) is not
        a dump."""
        return self.exists(backup_id, DUMP_META) and self.exists(backup_id, BACKUP_FILE)

    def fence(self, backup_id: str) -> int:
        """The highest fencing token that committed into this backup's directory (0: none)."""
        try:
            return int(self.path(backup_id, FENCE_FILE).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    @contextlib.contextmanager
    def _fenced(self, backup_id: str, token: int) -> Iterator[None]:
        """Hold the directory's lock, refuse an older token, record this one."""
        directory = self.dir_for(backup_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (directory / _LOCK_FILE).open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                seen = self.fence(backup_id)
                if token < seen:
                    raise LeaseLost(
                        f"spool write for backup {backup_id} refused: token {token} is older "
                        f"than token {seen}, which another owner already used")
                if token > seen:
                    tmp = directory / f"{FENCE_FILE}.{os.getpid()}"
                    tmp.write_text(str(token))
                    os.replace(tmp, directory / FENCE_FILE)
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def advance_fence(self, backup_id: str, token: int) -> None:
        """Record ``token`` as the newest owner's before it writes anything: from now on an
        older owner's commit is refused, even one that lands before the new owner's first."""
        with self._fenced(backup_id, token):
            pass

    @contextlib.contextmanager
    def atomic_write(self, backup_id: str, name: str, token: int = 0) -> Iterator[BinaryIO]:
        """Write a spool file so it appears whole or not at all, as the owner of ``token``."""
        directory = self.dir_for(backup_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = directory / name
        partial = directory / f"{name}.{token}.{os.getpid()}.partial"
        try:
            with partial.open("wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            with self._fenced(backup_id, token):
                os.replace(partial, final)
        except OSError as exc:
            if exc.errno in _FULL:
                raise SpoolFull(str(self.root), f"{backup_id}/{name}") from None
            raise
        finally:
            partial.unlink(missing_ok=True)

    def drop_stale_partials(self, backup_id: str, token: int) -> int:
        """Remove partial files that owners older than ``token`` left (a worker killed while
        writing): the dump that starts over must not need room for two copies. A fenced-out
        owner still writing keeps an unlinked file, which it can no longer commit."""
        directory = self.dir_for(backup_id)
        if not directory.exists():
            return 0
        removed = 0
        for path in directory.glob("*.partial"):
            parts = path.name.split(".")  # <name>.<token>.<pid>.partial
            if len(parts) >= 4 and parts[-3].isdigit() and int(parts[-3]) < token:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def write_bytes(self, backup_id: str, name: str, data: bytes, token: int = 0) -> None:
        with self.atomic_write(backup_id, name, token) as fh:
            fh.write(data)

    def remove_fenced(self, backup_id: str, name: str, token: int) -> None:
        """Remove one file as the owner of ``token`` (refused for an older token)."""
        if not self.dir_for(backup_id).exists():
            return
        with self._fenced(backup_id, token):
            self.remove(backup_id, name)

    def read_bytes(self, backup_id: str, name: str) -> bytes:
        return self.path(backup_id, name).read_bytes()

    def remove(self, backup_id: str, name: str) -> None:
        self.path(backup_id, name).unlink(missing_ok=True)

    def clean(self, backup_id: str) -> None:
        """Remove everything the backup left in the spool."""
        shutil.rmtree(self.dir_for(backup_id), ignore_errors=True)

    def backup_ids(self) -> list[str]:
        """The backups that have a directory here (the reconciler's view of the spool)."""
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def files(self) -> list[Path]:
        if not self.root.exists():
            return []
        return sorted(p for p in self.root.rglob("*") if p.is_file())
