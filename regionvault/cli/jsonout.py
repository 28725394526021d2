"""``--json``: the documents the commands print for machines, and the one way they reach stdout.

Every document names its format and version as ``regionvault.documents`` says (the rule and
the schemas are there, shared with ``compliance`` and the events of ``backup --json``).

Under ``--json`` stdout carries JSON only (one document, or one event per line for ``backup
--wait`` and ``watch``); every message goes to stderr. The builders here are pure: they turn
the records the tables are made from into plain dicts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from regionvault.documents import header, seconds, time_text
from regionvault.manifest import Manifest
from regionvault.status import EXIT_CODES, AttemptStatus, SourceStatus, worst

if TYPE_CHECKING:  # the command line imports these lazily: they pull in sources and stores
    from regionvault.drill import DrillReport
    from regionvault.manifest_store import UntrustedManifest

#: the document kinds with a schema in ``regionvault/schemas/`` (compliance has its own
#: builder in ``regionvault.compliance``)
KINDS = ("status", "list", "show", "drills", "check", "event", "compliance")


def document(kind: str, generated_at: datetime, **fields: Any) -> dict[str, Any]:
    """A document of ``kind``: its ``schema`` header, then ``fields``."""
    return {**header(kind), "generated_at": time_text(generated_at), **fields}


def print_document(doc: Mapping[str, Any]) -> None:
    """Write one JSON document to stdout (the only thing a ``--json`` command writes there)."""
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()


def print_event(event: Mapping[str, Any]) -> None:
    """Write one event as one line to stdout, at once (a reader follows it live)."""
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


# --- list and show: the catalogue ------------------------------------------------------------


def manifest_entry(m: Manifest) -> dict[str, Any]:
    """A backup as ``list --json`` shows it: what its table row says, unformatted."""
    erasure = None if m.erasure is None else {
        "erased_at": time_text(m.erasure.erased_at), "by": m.erasure.by,
        "reason": m.erasure.reason}
    return {"backup_id": m.backup_id, "domain": m.domain.value, "source": m.source,
            "data_class": m.data_class.value, "state": m.state(), "legacy": m.legacy,
            "erasure": erasure, "plaintext_size": m.plaintext_size,
            "ciphertext_size": m.ciphertext_size, "created_at": time_text(m.created_at),
            "expires_at": time_text(m.expires_at), "primary_store": m.primary_store,
            "replica_store": m.replica_store}


def untrusted_entry(u: UntrustedManifest) -> dict[str, Any]:
    """A manifest that cannot be trusted: only what its key says, and why."""
    domain, data_class, source = ([*u.key.split("/"), "?", "?", "?"])[:3]
    return {"backup_id": u.backup_id, "domain": domain, "data_class": data_class,
            "source": source, "store": u.store, "key": u.key,
            "state": "forged" if u.forged else "unreadable", "error": str(u.error)}


def shown_manifest(m: Manifest) -> dict[str, Any]:
    """The manifest as ``show`` prints it: whole, but each wrapping only by wrapper and key id
    (the wrapped keys are no secret, but their blobs help nobody reading it)."""
    shown = m.model_dump(mode="json")
    shown["wrappings"] = [{"wrapper": w.wrapper, "key_id": w.key_id} for w in m.wrappings]
    return shown


def copy_entry(store: str, found: Manifest | UntrustedManifest) -> dict[str, Any]:
    """One store's copy of a backup's manifest, for ``show --json``."""
    if isinstance(found, Manifest):
        return {"store": store, "trusted": True, "state": found.state(),
                "legacy": found.legacy, "error": None, "manifest": shown_manifest(found)}
    return {"store": store, "trusted": False,
            "state": "forged" if found.forged else "unreadable", "legacy": False,
            "error": str(found.error), "manifest": None}


# --- drills ----------------------------------------------------------------------------------


def drill_summary(report: DrillReport) -> tuple[float | None, float | None, list[str]]:
    """The drills table's columns: the longest RTO, the oldest RPO (seconds), the sources
    that failed."""
    rtos = [s.rto_seconds for s in report.sources if s.rto_seconds is not None]
    rpos = [s.rpo_seconds for s in report.sources if s.rpo_seconds is not None]
    return (max(rtos) if rtos else None, max(rpos) if rpos else None,
            [s.source for s in report.sources if not s.passed])


def drill_entry(report: DrillReport) -> dict[str, Any]:
    max_rto, max_rpo, failed = drill_summary(report)
    sources = []
    for s in report.sources:
        check = None if s.check is None else {
            "sql": s.check.sql, "expected": s.check.expected, "found": s.check.found,
            "passed": s.check.passed}
        sources.append({
            "source": s.source, "passed": s.passed, "backup_id": s.backup_id,
            "backup_created_at": time_text(s.backup_created_at), "store": s.store,
            "fallback_reason": s.fallback_reason, "rto_seconds": s.rto_seconds,
            "rpo_seconds": s.rpo_seconds, "row_counts_expected": dict(s.row_counts_expected),
            "row_counts_found": dict(s.row_counts_found), "check": check,
            "scratch_database": s.scratch_database, "scratch_dropped": s.scratch_dropped,
            "error": s.error, "warning": s.warning})
    return {"drill_id": report.drill_id, "domain": report.domain,
            "started_at": time_text(report.started_at),
            "finished_at": time_text(report.finished_at), "passed": report.passed,
            "max_rto_seconds": max_rto, "max_rpo_seconds": max_rpo, "failed_sources": failed,
            "sources": sources}


def drills_document(reports: Iterable[DrillReport], generated_at: datetime) -> dict[str, Any]:
    return document("drills", generated_at, drills=[drill_entry(r) for r in reports])


# --- status ----------------------------------------------------------------------------------


def attempt_entry(a: AttemptStatus) -> dict[str, Any]:
    """The newest attempt in flight of a source, as the status table's last column says it."""
    return {"backup_id": a.backup_id, "state": a.state.value,
            "step": a.step.value if a.step is not None else None,
            "step_state": a.step_state.value if a.step_state is not None else None,
            "last_progress_at": time_text(a.last_progress_at), "idle_seconds": seconds(a.idle),
            "stuck": a.stuck, "stuck_since": time_text(a.stuck_since),
            "lease_holder": a.lease_holder, "lease_known": a.lease_known,
            "resumes": a.resumes}


def status_entry(r: SourceStatus) -> dict[str, Any]:
    """One row of ``status``: a source's freshness and why."""
    return {"domain": r.domain, "source": r.source, "freshness": r.state.value,
            "exit_code": EXIT_CODES[r.state], "rpo_seconds": seconds(r.rpo),
            "last_verified_id": r.last_verified_id,
            "last_verified_at": time_text(r.last_verified_at), "age_seconds": seconds(r.age),
            "last_failure_id": r.last_failure_id, "last_failure_step": r.last_failure_step,
            "last_failure_error": r.last_failure_error,
            "last_failure_at": time_text(r.last_failure_at),
            "newest_attempt": attempt_entry(r.newest_attempt)
            if r.newest_attempt is not None else None}


def status_document(rows: Iterable[SourceStatus], generated_at: datetime) -> dict[str, Any]:
    rows = list(rows)
    state = worst([r.state for r in rows])
    return document("status", generated_at, freshness=state.value,
                    exit_code=EXIT_CODES[state], rows=[status_entry(r) for r in rows])


# --- list, show ------------------------------------------------------------------------------


def list_document(manifests: Iterable[Manifest], untrusted: Iterable[UntrustedManifest],
                  generated_at: datetime) -> dict[str, Any]:
    return document("list", generated_at, backups=[manifest_entry(m) for m in manifests],
                    untrusted=[untrusted_entry(u) for u in untrusted])


def show_document(backup_id: str, copies: Mapping[str, Manifest | UntrustedManifest],
                  generated_at: datetime) -> dict[str, Any]:
    return document("show", generated_at, backup_id=backup_id,
                    copies={store: copy_entry(store, found) for store, found in copies.items()})
