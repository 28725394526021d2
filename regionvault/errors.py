"""The project's own errors.

Every error a person may read is one sentence that names the thing and says what to do.
Vendor exceptions (botocore, google-api-core, psycopg, subprocess) are translated into these
where they enter, so callers and Celery tasks never see vendor types.
"""

from __future__ import annotations

import re


class RegionvaultError(Exception):
    """Base of every error regionvault raises on purpose."""

    #: process exit code used by the CLI for this kind of error
    exit_code: int = 1


class ConfigError(RegionvaultError):
    """The configuration (file, environment, or a CLI argument naming part of it) is wrong."""

    exit_code = 2


class UnknownDomainError(ConfigError):
    """A domain that is not one of the regulatory domains, or is not configured."""


class UnknownSourceError(ConfigError):
    """A source that is not configured in the given domain."""


class SecretError(ConfigError):
    """A secret (DSN, key) could not be read from where the configuration says it lives."""


class ResidencyError(RegionvaultError):
    """Data, a key or a task would leave its domain; refused."""


class StepOrderError(RegionvaultError):
    """A step found that an earlier step's output is missing; the message names that step.

    Built from the message alone too (``rerun_step`` is read back from "run step 'X' again"),
    because Celery rebuilds exceptions from their ``args`` when it reads a task's result.
    """

    def __init__(self, message: str, rerun_step: str | None = None) -> None:
        super().__init__(message)
        if rerun_step is None:
            found = re.search(r"run step '([a-z]+)' again", message)
            rerun_step = found.group(1) if found else ""
        self.rerun_step = rerun_step


class IntegrityError(RegionvaultError):
    """Bytes do not match their checksum, authentication tag or manifest."""


class WrongKeyError(IntegrityError):
    """A key cannot open this data: another domain's key, or not the key it was made with."""


class KeyServiceUnavailable(RegionvaultError):
    """A key service (AWS KMS) could not be reached or failed in a way that may pass; a
    restore tries the next wrapping (the local escrow), a step retries with backoff."""


class BackupErased(RegionvaultError):
    """The backup was crypto-shredded (``regionvault erase``): its data key is destroyed and
    no key the system holds opens what is left of it."""


class KeyInUse(ConfigError):
    """A key cannot be retired: manifests still need it (rewrap them first)."""


class ManifestForged(IntegrityError):
    """A manifest fails its MAC (or carries none, or names a key the domain does not hold, or
    sits under another backup's key): it was changed outside regionvault, so none of its
    fields (created_at, data_class, steps, row_counts, expires_at, ...) may be trusted."""


class UnauthenticatedManifest(IntegrityError):
    """A version-1 manifest, written before manifests carried a MAC. Restore (and the read-back
    of stored bytes) may read it, with a warning; verify and retention never trust it."""


class SourceError(RegionvaultError):
    """Dumping from or restoring into a source database failed, in a way that trying again
    will not fix (wrong password, missing database, bad SQL): the step fails at once."""


class TransientSourceError(SourceError):
    """The source could not be reached or dropped the connection (refused, timed out, server
    restarting): worth trying again with backoff."""


class SpoolFull(RegionvaultError):
    """The spool's filesystem ran out of space (or quota) while a step wrote to it. The message
    names the spool directory, the file and the step; what was half-written is removed."""

    def __init__(self, directory: str, file: str, step: str = "") -> None:
        self.directory = directory
        self.file = file
        self.step = step
        during = f"during the {step} step " if step else ""
        super().__init__(
            f"the spool {directory} is full: no space left on its device {during}while writing "
            f"{file}; free space there or give the spool a larger volume, then retry")

    def during(self, step: str) -> SpoolFull:
        """The same error, naming the step that was writing."""
        return SpoolFull(self.directory, self.file, step)


class LeaseLost(RegionvaultError):
    """This process no longer owns the backup it was working on: another owner holds a newer
    fencing token (or the lease expired and was taken). The process must stop writing."""


class BackupBusy(RegionvaultError):
    """Another live owner or chain is working on this backup (or source); the message names it."""

    exit_code = 3


class StoreError(RegionvaultError):
    """An object store operation failed."""


class NotFound(StoreError):
    """The object or bucket does not exist."""


class TransientStoreError(StoreError):
    """The store failed in a way that may succeed when tried again (throttling, 5xx, connection)."""


class PermanentStoreError(StoreError):
    """The store refused in a way that retrying will not fix (access denied, bad request)."""


class ChecksumMismatch(IntegrityError, PermanentStoreError):
    """What the store holds (or was about to hold) does not match the expected checksum."""


class ObjectLocked(PermanentStoreError):
    """A store refused to delete an object version that is locked (S3 Object Lock, GCS object
    retention) until a date it has not reached; the message names the object and the date.
    Not worth retrying before that date: the expiry sweep reports it and tries again at its
    next run."""
